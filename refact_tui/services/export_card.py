"""Gathering what the model card of an export says about its edits (store rows -> engine.export.card)."""

from __future__ import annotations

from pathlib import Path

from engine.export.card import CardEdit, ModelCard, Snippet, render
from engine.files import file_sha256

CARD_FILE = "README.md"


def card_edits(ws, edits) -> list[CardEdit]:
    """One CardEdit per applied edit row: request, method, slots, layer, hparams and latest metrics."""
    from store.edit_slots import edit_slots
    from store.metrics import latest_metrics

    found = []
    for e in edits:
        method = e.method
        slots = edit_slots(ws.db, e.id)
        if slots:
            slot_text = ", ".join(s.slot for s in slots)
            layer = ", ".join(f"{s.slot}:{s.layer}" for s in slots) if len(slots) > 1 else str(slots[0].layer)
        else:
            slot_text = "unet" if method != "refact" else "text_encoder"
            layer = str(e.layer) if e.layer is not None and e.layer >= 0 else "-"
        hparams = e.method_hparams if e.method_hparams is not None else e.hparams.to_dict()
        metrics = {f"{m.space}.{m.name}": m.value for m in latest_metrics(ws.db, e.id)}
        requests = 1
        if getattr(e, "kind", "edit") == "batch":
            from store.batches import batch_requests

            requests = max(1, len(batch_requests(ws.db, e.id)))
        found.append(CardEdit(e.seq, e.request.prompt, e.request.source, e.request.target, method, slot_text,
                              layer, hparams, metrics, requests))
    return found


def write_card(ws, folder: Path, *, title: str, export_format: str, base, history: str, edits,
               manifest: Path, weights_hash: str, snippets: list[Snippet], notes: list[str] = ()) -> Path:
    """Write ``folder/README.md`` (the manifest must already be in ``folder``)."""
    card = ModelCard(title=title, export_format=export_format, base_source=base.source, base_hash=base.encoder_hash,
                     history=history, manifest_file=manifest.name, manifest_hash=file_sha256(manifest),
                     weights_hash=weights_hash, edits=card_edits(ws, edits), snippets=snippets, notes=list(notes))
    path = Path(folder) / CARD_FILE
    path.write_text(render(card), encoding="utf-8")
    return path
