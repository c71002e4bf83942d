"""``refact import-adapter``: read an adapter export (``refact export --format lora|kohya|peft``) back
into the workspace as a new history of the same edits.

Everything is checked before anything is written: every file against the sha256 in
``refact_adapter.json``, the base hash against the workspace's base, and the rebuilt weights against
the hash recorded for each edit. The deltas read back are the exported ones bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import DeltaIntegrityError, EngineError
from engine.export import kohya, lora, peft
from engine.export.adapter import Adapter, AdapterMatrix, EditColumns, deltas_of
from engine.files import file_sha256
from engine.request import EditRequest
from refact_tui.services.export_adapters import SIDECAR, SIDECAR_FORMAT


@dataclass
class ImportResult:
    history: str
    n_edits: int
    weights_hash: str


def _sidecar(path: Path) -> tuple[Path, dict]:
    folder = Path(path).expanduser().absolute()
    folder = folder.parent if folder.is_file() else folder
    file = folder / SIDECAR
    if not file.is_file():
        raise EngineError(f"{folder} has no {SIDECAR}; only folders written by `refact export --format "
                          "lora|kohya|peft` can be imported")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError:
        raise DeltaIntegrityError(f"{file} is not valid JSON; the adapter was changed or damaged") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise DeltaIntegrityError(f"{file} is not a {SIDECAR_FORMAT} record")
    return folder, data


def _verify_files(folder: Path, data: dict) -> None:
    for entry in data.get("files", []):
        rel = str(entry.get("path", ""))
        target = (folder / rel).resolve()
        if not target.is_relative_to(folder.resolve()) or not target.is_file():
            raise DeltaIntegrityError(f"adapter file {rel} is missing from {folder}")
        if file_sha256(target) != entry.get("sha256"):
            raise DeltaIntegrityError(f"adapter file {rel} does not match its recorded sha256; "
                                      "it was changed or damaged, re-export it")


def _adapters(folder: Path, data: dict) -> list[Adapter]:
    """The exported matrices with their factors read from the files (keys from the recorded names)."""
    groups: dict[tuple[str, str, str], list[AdapterMatrix]] = {}  # (path, format, adapter) -> matrices
    for e in data.get("matrices", []):
        columns = [EditColumns(int(s), int(a), int(b)) for s, a, b in e["columns"]]
        empty = torch.zeros(0, 0)
        groups.setdefault((e["path"], e["format"], e["adapter"]), []).append(
            AdapterMatrix(e["component"], e["module"], empty, empty, e.get("layer"), columns))
    texts = data.get("text_components", [])
    by_name: dict[str, list[AdapterMatrix]] = {}
    for (rel, fmt, name), wanted in groups.items():
        target = folder / rel
        if fmt == "lora":
            found = lora.read(target, wanted)
        elif fmt == "kohya":
            found = kohya.read(target, wanted, texts)
        elif fmt == "peft":
            found = peft.read(target, wanted)
        else:
            raise DeltaIntegrityError(f"{SIDECAR} names an unknown adapter format {fmt!r}")
        for m in wanted:
            m.up, m.down = found[(m.component, m.module)]
            if m.up.shape[1] < max((c.stop for c in m.columns), default=0):
                raise DeltaIntegrityError(f"{rel}: {m.component}.{m.module} has fewer columns than its edits")
            by_name.setdefault(name, []).append(m)
    return [Adapter(name, ms) for name, ms in by_name.items()]


def import_adapter(ws, path: Path, name: str | None = None) -> ImportResult:
    """A new current history holding the adapter's edits, on the workspace's base (refused, nothing
    written, when the adapter is damaged or was made for another base)."""
    from engine.methods.refact.hparams import ReFACTHParams
    from engine.models import load_model
    from refact_tui.services.history import _unique_name
    from refact_tui.services.working_model import (
        apply_delta,
        hash_dtype,
        model_weights_hash,
        needs_pipeline,
        recorded_hash_matches,
        resolve_history,
    )
    from store.base_models import get_base_model
    from store.db import transaction
    from store.edits import record_edit
    from store.histories import create_history, set_current_history

    folder, data = _sidecar(path)
    _verify_files(folder, data)
    hist = resolve_history(ws)
    base = get_base_model(ws.db, hist.base_model_id)
    want = (data.get("base") or {}).get("encoder_hash")
    if want != base.encoder_hash:
        raise DeltaIntegrityError(f"this adapter was made for base {str(want)[:12]}, but the workspace's base is "
                                  f"{base.encoder_hash[:12]}; import it into a workspace of that base model")
    edits = sorted(data.get("edits", []), key=lambda e: e["seq"])
    if not edits:
        raise DeltaIntegrityError(f"{folder / SIDECAR} lists no edits")
    deltas = deltas_of(_adapters(folder, data), [e["seq"] for e in edits])
    # rebuilt in the dtype the base's hash was taken in, so the hashes compare (services/working_model.py)
    model = load_model(base.path, device="cpu", with_pipeline=needs_pipeline(deltas.values()),
                       dtype=hash_dtype(base.encoder_hash))
    if model_weights_hash(model) != base.encoder_hash:
        raise DeltaIntegrityError(f"the base model at {base.path} changed since it was registered")
    hashes = []
    for e in edits:
        apply_delta(model, deltas[e["seq"]])
        got = model_weights_hash(model)
        comparable = hash_dtype(e.get("weights_hash")) == model.dtype  # else the files' sha256 vouch
        if e.get("weights_hash") and comparable and not recorded_hash_matches(model, e["weights_hash"], got):
            raise DeltaIntegrityError(f"edit {e['seq']} read back from the adapter does not give the weights "
                                      "recorded when it was made; the adapter does not match its record")
        hashes.append(got)
    new_name = _unique_name(ws, name, "imported")
    written: list[Path] = []
    try:
        with transaction(ws.db):
            new = create_history(ws.db, base.id, new_name)
            for e, weights in zip(edits, hashes):
                path_ = ws.deltas_dir / f"h{new.id:04d}-import-{e['seq']:04d}.safetensors"
                d = deltas[e["seq"]]
                d.meta.update({"imported_from": str(folder), "method": str(e.get("method", ""))})
                sha = d.save(path_)
                written.append(path_)
                first = d.updates[0]
                record_edit(ws.db, history_id=new.id, job_id=None, request=EditRequest.from_dict(e["request"]),
                            hparams=ReFACTHParams.from_dict(e.get("hparams") or {}), status="applied",
                            layer=int(e.get("layer") if e.get("layer") is not None else -1),
                            module=str(e.get("module") or first.module),
                            delta_path=path_.relative_to(ws.root).as_posix(), delta_sha256=sha, weights_hash=weights,
                            steps_run=0, early_stopped=False, p_target=None, delta_norm=None,
                            division_factor=None, timings={}, device="import",
                            method=str(e.get("method") or "refact"))
            set_current_history(ws.db, new.id)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return ImportResult(new_name, len(edits), hashes[-1])
