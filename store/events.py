"""The event log: short lines from the worker, evaluation, CLI and TUI (the console tail)."""

from __future__ import annotations

import sqlite_utils

from store.db import StoreError, fetch_all, now, transaction
from store.records import EventRow

LEVELS = ("debug", "info", "warning", "error")


def log_event(
    db: sqlite_utils.Database, source: str, message: str, level: str = "info", job_id: int | None = None
) -> int:
    """Append an event; returns its id."""
    if level not in LEVELS:
        raise StoreError(f"event level must be one of {LEVELS}, got {level!r}")
    with transaction(db):
        cur = db.execute(
            "INSERT INTO events (ts, level, source, job_id, message) VALUES (?, ?, ?, ?, ?)",
            [now(), level, source, job_id, message],
        )
        return int(cur.lastrowid)


def tail_events(db: sqlite_utils.Database, limit: int = 50, since_id: int = 0) -> list[EventRow]:
    """The newest ``limit`` events with id > since_id, oldest first."""
    rows = fetch_all(
        db, "SELECT * FROM events WHERE id > ? ORDER BY id DESC LIMIT ?", [since_id, limit]
    )
    return [EventRow.from_row(r) for r in reversed(rows)]
