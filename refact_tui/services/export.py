"""Exporting edited models: a full save_pretrained folder, or the delta files plus a manifest, and
applying such a manifest to a fresh copy of the base model (with every hash checked)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from engine.errors import DeltaIntegrityError, EngineError
from engine.export.adapter import ExportFormat
from engine.export.loading import Layout, snippets
from engine.files import file_sha256
from refact_tui.services.export_out import ExportResult, check_out, staged_folder

MANIFEST_FORMAT = "refact-deltas/2"  # /2 adds before_hash per edit; /1 still applies
PROVENANCE_FILE = "refact_export.json"


def weights_hashes(model) -> dict[str, str]:
    """Encoder hash of every slot of a loaded model (one entry for SD1/SD2 and plain encoders)."""
    fn = getattr(model, "weights_hashes", None)
    return dict(fn()) if callable(fn) else {"text_encoder": model.encoder_hash()}


def combined_weights_hash(model) -> str:
    """The history's weights hash: every slot (``encoder_hash()`` for a single-encoder model), plus the
    UNet matrices TIME / UCE deltas applied with ``apply_delta`` changed."""
    from refact_tui.services.working_model import model_weights_hash

    return model_weights_hash(model)


def save_model(model, out: Path) -> str:
    """save_pretrained the (edited) model into `out`; returns "pipeline" or "text-encoder"."""
    if model.pipeline is not None:
        # save_pretrained writes every component, so every edited encoder slot must be the pipeline's own
        slots = getattr(model, "slots", None) or []
        pairs = [(s.name, s.text_encoder) for s in slots] or [("text_encoder", model.text_encoder)]
        for name, encoder in pairs:
            if getattr(model.pipeline, name, None) is not encoder:
                raise EngineError(f"the pipeline does not hold the edited {name}; this is a bug in refact-tui")
        model.pipeline.save_pretrained(str(out), safe_serialization=True)
        return "pipeline"
    model.text_encoder.save_pretrained(str(out), safe_serialization=True)
    model.tokenizer.save_pretrained(str(out))
    return "text-encoder"


def _edit_entry(e, file: str, sha: str, before_hash: str | None = None) -> dict[str, Any]:
    entry = {
        # a TIME / UCE edit has no encoder layer (recorded as -1): null in the manifest
        "seq": e.seq, "file": file, "sha256": sha, "layer": e.layer if e.layer is not None and e.layer >= 0 else None,
        "module": e.module,
        "request": e.request.to_dict(), "hparams": e.hparams.to_dict(),
        # the weights before and after this delta: apply-deltas checks both at every step
        "before_hash": before_hash, "weights_hash": e.weights_hash,
        "p_target": e.p_target,
    }
    per_component = getattr(e, "weights_hashes", None)
    if isinstance(per_component, dict) and per_component:
        entry["weights_hashes"] = dict(per_component)
    return entry


def export_history(ws, out: Path, fmt: ExportFormat | str = ExportFormat.MERGED, *, per_edit: bool = False,
                   history: int | str | None = None) -> ExportResult:
    """``refact export``: the history's head as ``fmt`` (merged folder, deltas + manifest, or adapters)."""
    fmt = fmt if isinstance(fmt, ExportFormat) else ExportFormat.parse(fmt)
    if per_edit and not fmt.is_adapter:
        raise EngineError(f"--per-edit applies to the adapter formats (lora, kohya, peft), not --format {fmt.value}")
    check_out(out)  # before any model is loaded
    if fmt.is_adapter:
        from refact_tui.services.export_adapters import export_adapters

        return export_adapters(ws, out, fmt, per_edit=per_edit, history=history)
    return export_pipeline(ws, out, deltas_only=fmt is ExportFormat.DELTAS, history=history)


def export_pipeline(ws, out: Path, deltas_only: bool = False, history: int | str | None = None) -> ExportResult:
    """Export the current history's model at its head: a full model folder (save_pretrained, reloads
    with diffusers/transformers) or, with deltas_only, the delta files plus manifest.json; either with
    a model card (README.md). Written into a staging folder that becomes ``out`` only when complete."""
    from refact_tui.services.export_card import write_card
    from refact_tui.services.export_record import record_export as add_artifact  # never fails an export
    from refact_tui.services.working_model import delta_file, load_deltas, load_history_model, resolve_history
    from store.base_models import get_base_model
    from store.edits import applied_edits

    hist = resolve_history(ws, history)
    base = get_base_model(ws.db, hist.base_model_id)
    if deltas_only:
        edits = applied_edits(ws.db, hist.id, hist.head_seq)
        load_deltas(ws, edits)  # checks each file against its recorded sha256 before copying
        final_hash = edits[-1].weights_hash if edits else base.encoder_hash
        with staged_folder(out) as (stage, out):
            (stage / "deltas").mkdir()
            entries = []
            before = base.encoder_hash
            for e in edits:
                rel = f"deltas/{e.seq:04d}.safetensors"
                shutil.copyfile(delta_file(ws, e), stage / rel)
                sha = file_sha256(stage / rel)
                if sha != e.delta_sha256:
                    raise DeltaIntegrityError(f"copy of the delta of edit {e.seq} does not match its sha256; disk problem?")
                entries.append(_edit_entry(e, rel, sha, before))
                before = e.weights_hash
            manifest = {
                "format": MANIFEST_FORMAT,
                "created_at": time.time(),
                "history": hist.name,
                "base": {"source": base.source, "kind": base.kind, "encoder_family": base.encoder_family,
                         "encoder_hash": base.encoder_hash},
                "final_weights_hash": final_hash,
                "edits": entries,
            }
            mpath = stage / "manifest.json"
            mpath.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            manifest_sha, manifest_bytes = file_sha256(mpath), mpath.stat().st_size
            write_card(ws, stage, title=f"refact-tui deltas: history {hist.name}", export_format="deltas",
                       base=base, history=hist.name, edits=edits, manifest=mpath, weights_hash=final_hash,
                       snippets=snippets(Layout(ExportFormat.DELTAS, str(out), base.source)))
        mpath = out / "manifest.json"
        add_artifact(ws.db, "history", hist.id, "manifest", str(mpath), sha256=manifest_sha,
                     bytes=manifest_bytes, meta={"head_seq": hist.head_seq})
        return ExportResult(out, "deltas", len(edits), base.encoder_hash, final_hash, mpath,
                            [out / f"deltas/{e.seq:04d}.safetensors" for e in edits] + [mpath])

    check_out(out)
    state = load_history_model(ws, hist.id, "cpu", with_pipeline=True)
    with staged_folder(out) as (stage, out):
        kind = save_model(state.model, stage)
        provenance = {
            "format": "refact-export/1",
            "history": hist.name,
            "head_seq": state.head_seq,
            "base": {"source": base.source, "encoder_hash": base.encoder_hash},
            "weights_hash": state.weights_hash,
            "weights_hashes": weights_hashes(state.model),
            "edits": [{"seq": e.seq, "prompt": e.request.prompt, "source": e.request.source,
                       "target": e.request.target, "delta_sha256": e.delta_sha256} for e in state.edits],
        }
        ppath = stage / PROVENANCE_FILE
        ppath.write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        write_card(ws, stage, title=f"refact-tui merged export: history {hist.name}", export_format="merged",
                   base=base, history=hist.name, edits=state.edits, manifest=ppath, weights_hash=state.weights_hash,
                   snippets=snippets(Layout(ExportFormat.MERGED, str(out), base.source)))
    add_artifact(ws.db, "history", hist.id, "export", str(out), meta={"head_seq": state.head_seq, "kind": kind})
    return ExportResult(out, kind, len(state.edits), state.base_encoder_hash, state.weights_hash,
                        files=sorted(p for p in out.rglob("*") if p.is_file()),
                        weights_hashes=provenance["weights_hashes"])


def read_manifest(manifest: Path) -> dict[str, Any]:
    """Parse and schema-check a deltas manifest (ManifestError naming the bad field); the raw JSON."""
    from refact_tui.services.manifest import load_manifest

    return load_manifest(manifest).raw


def apply_deltas_manifest(manifest: Path, model: str | Path, out: Path, force: bool = False, *,
                          legacy: bool = False) -> ExportResult:
    """Apply an exported delta set to `model` and save the edited model to `out`.

    Refuses (DeltaIntegrityError) a model whose text encoder differs from the manifest's base (unless
    force), and any delta file whose sha256 differs from the manifest; the result must reproduce the
    manifest's final weights hash.
    """
    from engine.delta import EditDelta
    from engine.models import load_model
    from refact_tui.services.manifest import load_manifest, verify_step

    manifest = Path(manifest).expanduser().absolute()
    checked = load_manifest(manifest, legacy=legacy)  # schema, paths inside its folder, the hash chain
    data = checked.raw
    deltas = [EditDelta.load(entry.path, expected_sha256=entry.sha256) for entry in checked.entries]
    loaded = load_model(model, device="cpu", with_pipeline=True)
    base_hash = combined_weights_hash(loaded)
    want_base = data["base"]["encoder_hash"]
    if base_hash != want_base and not force:
        raise DeltaIntegrityError(
            f"{model} is not the base these deltas were made for (encoder hash {base_hash[:12]}, manifest "
            f"{want_base[:12]}); pass the original base model"
        )
    from refact_tui.services.working_model import apply_delta

    for entry, d in zip(checked.entries, deltas):
        apply_delta(loaded, d)  # each update goes to the component (encoder slot, UNet) it names
        if not force:  # every step must give the weights recorded when that edit was made
            verify_step(checked, entry, combined_weights_hash(loaded), weights_hashes(loaded))
    final = combined_weights_hash(loaded)
    want_final = data.get("final_weights_hash")
    if not force and want_final and final != want_final:
        raise DeltaIntegrityError("applying the deltas did not reproduce the exported weights hash; "
                                  "the base model or a delta differs")
    with staged_folder(out) as (stage, out):
        kind = save_model(loaded, stage)
    return ExportResult(out, kind, len(deltas), base_hash, final, manifest,
                        files=sorted(p for p in out.rglob("*") if p.is_file()), weights_hashes=weights_hashes(loaded))
