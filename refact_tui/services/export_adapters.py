"""``refact export --format lora|kohya|peft``: a history's deltas as adapters that diffusers, ComfyUI /
A1111 and transformers load, with ``refact_adapter.json`` (what each file holds, its sha256, the base it
is for) so ``refact import-adapter`` can read the exact deltas back."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import EngineError
from engine.export import kohya, lora, peft
from engine.export.adapter import Adapter, AdapterMatrix, ExportFormat, adapters_for, diffusers_reaches
from engine.export.loading import SCRIPT, Layout, script, snippets
from engine.files import file_sha256
from refact_tui.services.export_out import ExportResult, staged_folder

SIDECAR = "refact_adapter.json"
SIDECAR_FORMAT = "refact-adapter/1"


class FormatRefusedError(EngineError):
    """The chosen format cannot hold an edit of the history."""


@dataclass(frozen=True)
class PipelineInfo:
    """What the base pipeline's loaders can reach: diffusers' LoRA-loadable components and the text
    encoders (in order), read from model_index.json without loading anything."""

    pipeline_class: str | None
    loadable: tuple[str, ...]
    text_components: tuple[str, ...]
    classes: dict[str, str]  # text component -> its transformers class


def pipeline_info(base_path: str | Path) -> PipelineInfo:
    index_file = Path(base_path) / "model_index.json"
    if not index_file.is_file():  # a bare text encoder: no diffusers loader, PEFT only
        return PipelineInfo(None, (), ("text_encoder",), {})
    index = json.loads(index_file.read_text(encoding="utf-8"))
    name = index.get("_class_name")
    import diffusers  # heavy; only to read the pipeline class's LoRA-loadable components

    loadable = tuple(getattr(getattr(diffusers, str(name), None), "_lora_loadable_modules", ()) or ())
    texts = tuple(k for k, v in index.items() if k.startswith("text_encoder") and isinstance(v, list) and v[0])
    return PipelineInfo(str(name), loadable, texts, {k: str(index[k][1]) for k in texts})


@dataclass
class Plan:
    """Which matrices go to which writer: (file or folder relative to OUT, format, adapter, matrices)."""

    parts: list[tuple[str, str, Adapter, str | None]]  # (relative path, "lora"|"kohya"|"peft", adapter, component)
    notes: list[str]


def _where(m: AdapterMatrix) -> str:
    seqs = sorted({c.seq for c in m.columns})
    return f"edit {', '.join(map(str, seqs))} ({m.component} {m.module})"


def plan(fmt: ExportFormat, adapters: list[Adapter], info: PipelineInfo, stacked: bool) -> Plan:
    """Assign every matrix to a file of ``fmt``; FormatRefusedError (one line) if one cannot be held."""
    parts: list[tuple[str, str, Adapter, str | None]] = []
    notes: list[str] = []
    to_peft: list[Adapter] = []
    for a in adapters:
        if fmt is ExportFormat.KOHYA:
            bad = [m for m in a.matrices if not kohya.reachable(m)]
            if bad:
                raise FormatRefusedError(f"--format kohya cannot hold {_where(bad[0])}; "
                                         "use --format lora (CLIP as LoRA, the rest as PEFT folders) or --format peft")
            parts.append((kohya.file_name(a, stacked), "kohya", a, None))
            continue
        if fmt is ExportFormat.PEFT:
            bad = [m for m in a.matrices if not m.component.startswith("text_encoder")]
            if bad:
                raise FormatRefusedError(f"--format peft holds text-encoder edits only, not {_where(bad[0])}; "
                                         "use --format lora (UNet keys go into the diffusers file)")
            to_peft.append(a)
            continue
        reach = a.only(lambda m: diffusers_reaches(m, info.loadable))
        rest = a.only(lambda m: not diffusers_reaches(m, info.loadable))
        bad = [m for m in rest.matrices if not m.component.startswith("text_encoder")]
        if bad:
            raise FormatRefusedError(f"no adapter format here can hold {_where(bad[0])}; "
                                     "export it with --format merged or deltas")
        if reach.matrices:
            parts.append((lora.file_name(a, stacked), "lora", reach, None))
        if rest.matrices:
            to_peft.append(rest)
    for a in to_peft:
        for component in a.components:
            parts.append((peft.folder_name(component, a, stacked), "peft",
                          a.only(lambda m, c=component: m.component == c), component))
    if fmt is ExportFormat.LORA:
        peft_components = sorted({c for _, kind, _, c in parts if kind == "peft" and c})
        if peft_components:
            notes.append(f"diffusers' LoRA loader cannot reach {', '.join(peft_components)}: those edits are PEFT "
                         f"folders under {peft.ROOT}/ (transformers load_adapter); {SCRIPT} loads everything")
    return Plan(parts, notes)


def write_parts(folder: Path, the_plan: Plan, meta: dict[str, str], info: PipelineInfo, base: str) -> list[dict]:
    """Write every planned file into ``folder``; the sidecar's matrix entries."""
    entries = []
    for rel, kind, adapter, component in the_plan.parts:
        target = folder / rel
        m_meta = {**meta, "refact.adapter": adapter.name}
        if kind == "lora":
            lora.write(target, adapter, m_meta)
        elif kind == "kohya":
            kohya.write(target, adapter, m_meta, info.text_components)
        else:
            peft.write(target, adapter.matrices, base, m_meta)
        for m in adapter.matrices:
            entries.append({"path": rel, "format": kind, "adapter": adapter.name, "component": m.component,
                            "module": m.module, "layer": m.layer, "rank": m.rank,
                            "columns": [[c.seq, c.start, c.stop] for c in m.columns]})
    return entries


def export_adapters(ws, out: Path, fmt: ExportFormat, per_edit: bool = False, history: int | str | None = None):
    """Write the history's applied edits (head) as ``fmt`` adapters into the new folder ``out``."""
    from refact_tui.services.export_card import write_card
    from refact_tui.services.export_record import record_export
    from refact_tui.services.working_model import load_deltas, resolve_history
    from store.base_models import get_base_model
    from store.edits import applied_edits

    hist = resolve_history(ws, history)
    base = get_base_model(ws.db, hist.base_model_id)
    edits = applied_edits(ws.db, hist.id, hist.head_seq) if hist.head_seq > 0 else []
    if not edits:
        raise EngineError(f"history {hist.name!r} has no applied edits; there is nothing to export as an adapter")
    deltas = load_deltas(ws, edits)  # each checked against its recorded sha256
    info = pipeline_info(base.path)
    adapters = adapters_for([(e.seq, d) for e, d in zip(edits, deltas)], per_edit)
    the_plan = plan(fmt, adapters, info, stacked=not per_edit)  # refuses before anything is written
    final_hash = edits[-1].weights_hash or base.encoder_hash
    meta = {"refact.format": SIDECAR_FORMAT, "refact.base_hash": base.encoder_hash,
            "refact.weights_hash": final_hash, "refact.history": hist.name}
    with staged_folder(out) as (stage, final):
        matrices = write_parts(stage, the_plan, meta, info, base.source)
        files = sorted(p for p in stage.rglob("*") if p.is_file())
        sidecar = {
            "format": SIDECAR_FORMAT, "export_format": fmt.value, "per_edit": per_edit, "created_at": time.time(),
            "history": hist.name,
            "base": {"source": base.source, "kind": base.kind, "encoder_family": base.encoder_family,
                     "encoder_hash": base.encoder_hash, "pipeline_class": info.pipeline_class},
            "text_components": list(info.text_components),
            "final_weights_hash": final_hash,
            "files": [{"path": p.relative_to(stage).as_posix(), "sha256": file_sha256(p)} for p in files],
            "matrices": matrices,
            "edits": [{"seq": e.seq, "kind": str(getattr(e, "kind", "edit")), "method": e.method,
                       "request": e.request.to_dict(), "hparams": e.hparams.to_dict(), "layer": e.layer,
                       "module": e.module, "delta_sha256": e.delta_sha256, "weights_hash": e.weights_hash}
                      for e in edits],
        }
        manifest = stage / SIDECAR
        manifest.write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        layout = Layout(fmt, str(final), base.source,
                        lora_files=[(a.name, rel) for rel, kind, a, _ in the_plan.parts if kind in ("lora", "kohya")],
                        peft_folders=[(c, a.name, rel) for rel, kind, a, c in the_plan.parts if kind == "peft"],
                        classes=info.classes)
        (stage / SCRIPT).write_text(script(layout), encoding="utf-8")
        write_card(ws, stage, title=f"refact-tui {fmt.value} adapter: history {hist.name}", export_format=fmt.value,
                   base=base, history=hist.name, edits=edits, manifest=manifest, weights_hash=final_hash,
                   snippets=snippets(layout), notes=the_plan.notes)
    record_export(ws.db, "history", hist.id, f"adapter-{fmt.value}", str(final),
                  meta={"head_seq": hist.head_seq, "per_edit": per_edit})
    return ExportResult(final, fmt.value, len(edits), base.encoder_hash, final_hash, final / SIDECAR,
                        files=sorted(p for p in final.rglob("*") if p.is_file()), notes=the_plan.notes)
