"""Evaluation runs and their append-only metric rows (progress = newest row per metric)."""

from __future__ import annotations

import math
from typing import Any

import sqlite_utils

from store.db import StoreError, fetch_all, fetch_one, fetch_required, now, transaction
from store.records import EvalRunRow, MetricRow, dump_json

SPACES = ("text", "image")


def start_eval_run(
    db: sqlite_utils.Database, history_id: int, at_seq: int, space: str, config: dict[str, Any]
) -> EvalRunRow:
    """Open an evaluation of the history's model state at ``at_seq``."""
    if space not in SPACES:
        raise StoreError(f"evaluation space must be one of {SPACES}, got {space!r}")
    with transaction(db):
        cur = db.execute(
            "INSERT INTO eval_runs (history_id, at_seq, space, config_json, started_at) VALUES (?, ?, ?, ?, ?)",
            [history_id, at_seq, space, dump_json(config), now()],
        )
        return get_eval_run(db, cur.lastrowid)


def get_eval_run(db: sqlite_utils.Database, id: int) -> EvalRunRow:
    """An evaluation run by id (NotFoundError if none)."""
    row = fetch_required(db, "SELECT * FROM eval_runs WHERE id = ?", [id], f"no evaluation run {id}")
    return EvalRunRow.from_row(row)


def list_eval_runs(db: sqlite_utils.Database, history_id: int | None = None) -> list[EvalRunRow]:
    """Evaluation runs, newest first."""
    if history_id is None:
        rows = fetch_all(db, "SELECT * FROM eval_runs ORDER BY id DESC")
    else:
        rows = fetch_all(db, "SELECT * FROM eval_runs WHERE history_id = ? ORDER BY id DESC", [history_id])
    return [EvalRunRow.from_row(r) for r in rows]


def finish_eval_run(db: sqlite_utils.Database, id: int, state: str, error: str | None = None) -> EvalRunRow:
    """Close an evaluation run as done or failed."""
    if state not in ("done", "failed"):
        raise StoreError(f"an evaluation run finishes as done or failed, not {state!r}")
    with transaction(db):
        db.execute(
            "UPDATE eval_runs SET state = ?, error = ?, finished_at = ? WHERE id = ?", [state, error, now(), id]
        )
        return get_eval_run(db, id)


def record_metric(
    db: sqlite_utils.Database,
    *,
    eval_run_id: int | None,
    edit_id: int | None,
    space: str,
    name: str,
    value: float,
    std: float | None = None,
    n: int,
    total: int,
    final: bool,
    slot: str = "",
) -> MetricRow:
    """Append a metric value (partial while ``final`` is False); the panels read the newest one.
    ``slot`` '' is the whole edit's value, an encoder slot's name that slot's alone."""
    if space not in SPACES:
        raise StoreError(f"metric space must be one of {SPACES}, got {space!r}")
    if value is None or math.isnan(float(value)):
        raise StoreError(f"metric {name!r} is NaN; nothing was scored (check the evaluation inputs)")
    if std is not None and math.isnan(float(std)):
        std = None
    with transaction(db):
        cur = db.execute(
            "INSERT INTO metrics (eval_run_id, edit_id, space, name, value, std, n, total, final, created_at, slot) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [eval_run_id, edit_id, space, name, float(value), std, int(n), int(total), int(bool(final)), now(),
             str(slot)],
        )
        row = fetch_one(db, "SELECT * FROM metrics WHERE id = ?", [cur.lastrowid])
    return MetricRow.from_row(row)


def latest_metrics(db: sqlite_utils.Database, edit_id: int | None = None, slot: str | None = "") -> list[MetricRow]:
    """Newest row per (edit, space, name) of ``slot`` ('' = the whole edit's values, None = every
    slot's rows too); only one edit's when ``edit_id`` is given."""
    where, params = ("1", []) if slot is None else ("slot = ?", [slot])
    if edit_id is None:
        rows = fetch_all(db, f"SELECT * FROM latest_metrics WHERE {where} ORDER BY edit_id, space, name, slot", params)
    else:
        rows = fetch_all(db, f"SELECT * FROM latest_metrics WHERE edit_id = ? AND {where} ORDER BY space, name, slot",
                         [edit_id, *params])
    return [MetricRow.from_row(r) for r in rows]


def slot_metrics(db: sqlite_utils.Database, edit_id: int) -> dict[str, list[MetricRow]]:
    """An edit's per-slot metric values (slot -> newest row per space and name); {} for a one-slot edit."""
    from store.steps import slot_rank

    out: dict[str, list[MetricRow]] = {}
    for r in fetch_all(db, "SELECT * FROM latest_metrics WHERE edit_id = ? AND slot != '' ORDER BY space, name",
                       [edit_id]):
        out.setdefault(r["slot"], []).append(MetricRow.from_row(r))
    return {k: out[k] for k in sorted(out, key=lambda s: (slot_rank(s), s))}


def metrics_for_run(db: sqlite_utils.Database, eval_run_id: int) -> list[MetricRow]:
    """Every row an evaluation run wrote, oldest first."""
    rows = fetch_all(db, "SELECT * FROM metrics WHERE eval_run_id = ? ORDER BY id", [eval_run_id])
    return [MetricRow.from_row(r) for r in rows]


def metric_series(db: sqlite_utils.Database, history_id: int, space: str, name: str) -> list[tuple[int, float]]:
    """(seq, value) over a history: per-edit rows at their edit's seq, whole-history rows (edit_id
    NULL) at their run's ``at_seq``; the newest row wins for each seq."""
    rows = fetch_all(
        db,
        """
        SELECT COALESCE(e.seq, r.at_seq) AS seq, m.value AS value, m.id AS id
        FROM metrics m
        LEFT JOIN edits e ON e.id = m.edit_id
        LEFT JOIN eval_runs r ON r.id = m.eval_run_id
        WHERE m.space = ? AND m.name = ? AND m.slot = ''
          AND ((m.edit_id IS NOT NULL AND e.history_id = ?)
               OR (m.edit_id IS NULL AND r.history_id = ?))
        ORDER BY m.id
        """,
        [space, name, history_id, history_id],
    )
    newest: dict[int, float] = {}
    for r in rows:
        if r["seq"] is not None:
            newest[int(r["seq"])] = float(r["value"])
    return sorted(newest.items())
