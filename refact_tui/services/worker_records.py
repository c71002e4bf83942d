"""What the worker records with an edit: the per-slot rows, the delta metadata, and the earlier
requests each slot protects under --preserve (split out of services/worker.py)."""

from __future__ import annotations

from store.edits import applied_edits


def earlier_requests(db, model, hparams, history_id: int, head: int) -> dict[str, list]:
    """For --preserve: per slot the edit touches, the requests of the edits applied at the model's
    head that edited that slot at the layer this edit uses there (edit_slots; an edit without
    slot rows counts as an edit of the first slot at its ``layer``)."""
    if hparams.preserve <= 0:
        return {}

    from engine.methods.refact.model_edit import plan_slots, slot_list
    from store.batches import requests_of_edits  # a batch edit protects every one of its requests

    first = getattr(slot_list(model)[0], "name", "text_encoder")
    applied = applied_edits(db, history_id, head)
    touched = touched_slots(db, applied, first)
    return {getattr(slot, "name", first): requests_of_edits(
                db, [e for e in applied if (getattr(slot, "name", first), layer) in touched[e.id]])
            for slot, layer in plan_slots(model, hparams)}


def touched_slots(db, edits, first: str) -> dict[int, set[tuple[str, int]]]:
    """(slot, layer) pairs each edit changed, from edit_slots; an edit without slot rows (made before
    slots, a batch, TIME/UCE) counts as an edit of the first slot ``first`` at its ``layer``."""
    from store.edit_slots import edit_slots

    return {e.id: {(r.slot, r.layer) for r in edit_slots(db, e.id)} or {(first, e.layer)} for e in edits}


def slot_rows(edit_id: int, outcome) -> list:
    """The edit_slots rows of an EditOutcome's slots (weights hashes as inserted)."""
    from store.edit_slots import EditSlotRow

    return [
        EditSlotRow(edit_id=edit_id, slot=r.slot, idx=i, layer=r.layer, module=r.module, readout=r.readout,
                    p_target=float(r.p_target), steps_run=int(r.steps_run), early_stopped=bool(r.early_stopped),
                    division_factor=r.division_factor, delta_norm=r.delta_norm, verify_error=r.verify_error,
                    weights_hash=r.weights_hash or None)
        for i, r in enumerate(outcome.slots)
    ]


def delta_meta(model, job, base_hash: str) -> dict[str, str]:
    import json

    return {
        "base_encoder_hash": base_hash,
        "encoder_family": str(model.adapter.family),
        "layer": str(job.hparams.layer),
        "request": json.dumps(job.request.to_dict(), sort_keys=True),
        "hparams": json.dumps(job.hparams.to_dict(), sort_keys=True),
        "job_id": str(job.id),
        "history_id": str(job.history_id),
    }
