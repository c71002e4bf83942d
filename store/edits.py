"""The edit log: one row per edit attempt that reached the model, never deleted.

``status``: applied (part of the model up to the history head), rolled_back, failed.
"""

from __future__ import annotations

import math
from typing import Any

import sqlite_utils

from engine.methods.refact.hparams import ReFACTHParams
from engine.request import EditRequest
from store.db import NotFoundError, StoreError, fetch_all, fetch_one, fetch_required, now, transaction
from store.records import EditRow, dump_json, dump_method_hparams
from store.states import EditKind, EditStatus

EDIT_STATUSES = tuple(EditStatus)


def next_seq(db: sqlite_utils.Database, history_id: int) -> int:
    """The seq the next edit of this history gets (1 for the first; rolled-back seqs are not reused)."""
    row = fetch_one(db, "SELECT COALESCE(MAX(seq), 0) AS s FROM edits WHERE history_id = ?", [history_id])
    return int(row["s"]) + 1


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def record_edit(
    db: sqlite_utils.Database,
    *,
    history_id: int,
    job_id: int | None,
    request: EditRequest,
    hparams: ReFACTHParams,
    status: EditStatus | str,
    layer: int,
    module: str,
    delta_path: str | None,
    delta_sha256: str | None,
    weights_hash: str | None,
    steps_run: int,
    early_stopped: bool,
    p_target: float | None,
    delta_norm: float | None,
    division_factor: float | None,
    timings: dict[str, float],
    device: str,
    error: str | None = None,
    source_edit_id: int | None = None,
    kind: EditKind | str = EditKind.EDIT,
    lease_generation: int | None = None,
    method: str = "refact",
    method_hparams: dict[str, Any] | None = None,
) -> EditRow:
    """Append an edit at ``next_seq``; an applied edit also moves the history head to it.

    ``kind`` batch: one delta holding N requests (see store.batches). ``lease_generation``: the worker
    lease generation committing it (the fencing token). ``method`` / ``method_hparams``: the edit method
    and its own hyperparameters (None for ReFACT, whose are ``hparams``). Call inside the caller's transaction together
    with finish_job and attach_steps, so the edit, the job state and the step rows commit (or roll
    back) together.
    """
    if status not in EDIT_STATUSES:
        raise StoreError(f"edit status must be one of {'/'.join(EDIT_STATUSES)}, got {status!r}")
    if kind not in tuple(EditKind):
        raise StoreError(f"edit kind must be one of {'/'.join(EditKind)}, got {kind!r}")
    with transaction(db):
        seq = next_seq(db, history_id)
        cur = db.execute(
            "INSERT INTO edits (history_id, seq, job_id, source_edit_id, request_json, hparams_json, status, "
            "layer, module, delta_path, delta_sha256, weights_hash, steps_run, early_stopped, p_target, "
            "delta_norm, division_factor, timings_json, device, error, created_at, kind, lease_generation, method, "
            "method_hparams_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [history_id, seq, job_id, source_edit_id, dump_json(request.to_dict()), dump_json(hparams.to_dict()),
             EditStatus(status), layer, module, delta_path, delta_sha256, weights_hash, steps_run, int(early_stopped),
             _finite(p_target), _finite(delta_norm), _finite(division_factor),
             dump_json({k: float(v) for k, v in timings.items()}), device, error, now(), EditKind(kind),
             lease_generation, method, dump_method_hparams(method_hparams)],
        )
        if status == EditStatus.APPLIED:
            db.execute("UPDATE histories SET head_seq = ? WHERE id = ?", [seq, history_id])
        return get_edit(db, cur.lastrowid)


def get_edit(db: sqlite_utils.Database, id: int) -> EditRow:
    """An edit by id (NotFoundError if none)."""
    row = fetch_required(db, "SELECT * FROM edits WHERE id = ?", [id],
                         f"no edit {id}; `refact history` lists the edits")
    return EditRow.from_row(row)


def get_edit_by_seq(db: sqlite_utils.Database, history_id: int, seq: int) -> EditRow:
    """The edit at ``seq`` of a history (NotFoundError if none)."""
    sql = "SELECT * FROM edits WHERE history_id = ? AND seq = ?"
    row = fetch_required(db, sql, [history_id, seq], f"history {history_id} has no edit with seq {seq}")
    return EditRow.from_row(row)


def list_edits(db: sqlite_utils.Database, history_id: int, include_rolled_back: bool = True) -> list[EditRow]:
    """The edits of a history in seq order."""
    sql = "SELECT * FROM edits WHERE history_id = ?"
    if not include_rolled_back:
        sql += f" AND status != '{EditStatus.ROLLED_BACK}'"
    return [EditRow.from_row(r) for r in fetch_all(db, sql + " ORDER BY seq", [history_id])]


def applied_edits(db: sqlite_utils.Database, history_id: int, upto_seq: int | None = None) -> list[EditRow]:
    """Applied edits with seq <= upto_seq (default: the history head), in the order to apply them."""
    if upto_seq is None:
        head = fetch_one(db, "SELECT head_seq FROM histories WHERE id = ?", [history_id])
        if head is None:
            raise NotFoundError(f"no history with id {history_id}")
        upto_seq = int(head["head_seq"])
    rows = fetch_all(
        db,
        "SELECT * FROM edits WHERE history_id = ? AND status = ? AND seq <= ? ORDER BY seq",
        [history_id, EditStatus.APPLIED, upto_seq],
    )
    return [EditRow.from_row(r) for r in rows]


def mark_rolled_back_after(db: sqlite_utils.Database, history_id: int, seq: int) -> int:
    """Mark applied edits with seq > ``seq`` rolled back and set the head to ``seq``; returns how many."""
    if seq < 0:
        raise StoreError(f"rollback target must be >= 0, got {seq}")
    with transaction(db):
        n = db.execute(
            "UPDATE edits SET status = ?, rolled_back_at = ? WHERE history_id = ? AND seq > ? AND status = ?",
            [EditStatus.ROLLED_BACK, now(), history_id, seq, EditStatus.APPLIED],
        ).rowcount
        db.execute("UPDATE histories SET head_seq = ? WHERE id = ?", [seq, history_id])
        return n


def mark_rolled_forward(db: sqlite_utils.Database, history_id: int, head: int, seq: int) -> int:
    """Re-apply the rolled-back edits with head < seq' <= ``seq`` and set the head to ``seq``; returns
    how many (the caller verifies the weights first)."""
    if seq <= head:
        raise StoreError(f"rollforward target {seq} must be after the head {head}")
    with transaction(db):
        n = db.execute(
            "UPDATE edits SET status = ?, rolled_back_at = NULL "
            "WHERE history_id = ? AND seq > ? AND seq <= ? AND status = ?",
            [EditStatus.APPLIED, history_id, head, seq, EditStatus.ROLLED_BACK],
        ).rowcount
        db.execute("UPDATE histories SET head_seq = ? WHERE id = ?", [seq, history_id])
        return n
