"""Per-slot results of an edit (one row per edited encoder slot; see schema migration "edit slots")."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import sqlite_utils

from store.db import fetch_all, transaction


@dataclass(frozen=True)
class EditSlotRow:
    """One encoder slot's sub-edit of an edit."""

    edit_id: int
    slot: str
    idx: int
    layer: int
    module: str
    readout: str
    p_target: float | None
    steps_run: int
    early_stopped: bool
    division_factor: float | None
    delta_norm: float | None
    verify_error: float | None
    weights_hash: str | None


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def record_edit_slots(db: sqlite_utils.Database, edit_id: int, rows: Sequence[EditSlotRow]) -> None:
    """Insert the slot rows of ``edit_id`` (call inside the transaction that records the edit)."""
    with transaction(db):
        for r in rows:
            db.execute(
                "INSERT INTO edit_slots (edit_id, slot, idx, layer, module, readout, p_target, steps_run, "
                "early_stopped, division_factor, delta_norm, verify_error, weights_hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [edit_id, r.slot, r.idx, r.layer, r.module, r.readout, _finite(r.p_target), int(r.steps_run),
                 int(bool(r.early_stopped)), _finite(r.division_factor), _finite(r.delta_norm),
                 _finite(r.verify_error), r.weights_hash],
            )


def edit_slots(db: sqlite_utils.Database, edit_id: int) -> list[EditSlotRow]:
    """The slot rows of one edit in slot order (empty for edits recorded before slots existed)."""
    rows = fetch_all(db, "SELECT * FROM edit_slots WHERE edit_id = ? ORDER BY idx", [edit_id])
    return [EditSlotRow(**{**dict(r), "early_stopped": bool(r["early_stopped"])}) for r in rows]


def copy_edit_slots(db: sqlite_utils.Database, src_edit_id: int, dst_edit_id: int, keep_hashes: bool = True) -> None:
    """Give a copied edit (fork / replay) the slot rows of its source; the per-slot weights hashes
    only when the copy sits on the same weights (``keep_hashes``)."""
    from dataclasses import replace

    rows = [replace(r, edit_id=dst_edit_id, weights_hash=r.weights_hash if keep_hashes else None)
            for r in edit_slots(db, src_edit_id)]
    if rows:
        record_edit_slots(db, dst_edit_id, rows)
