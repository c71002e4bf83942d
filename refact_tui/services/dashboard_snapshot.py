"""What every TUI read-model shares: the short read transaction, the current history, the worker
lease and the event log, read from the workspace database (nothing here writes)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import sqlite_utils

from store.db import fetch_all, fetch_one
from store.records import EventRow, HistoryRow, LeaseRow

# A worker lease whose heartbeat is older than this is shown as stale.
WORKER_STALE_S = 30.0


@contextmanager
def read_snapshot(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """A short deferred read transaction: all queries inside see the same committed state."""
    conn = db.conn
    if conn.in_transaction:
        yield db
        return
    conn.execute("BEGIN")
    try:
        yield db
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


@dataclass(frozen=True)
class WorkerInfo:
    """The worker lease as seen by a reader."""

    holder: str
    pid: int
    host: str
    heartbeat_age: float  # seconds since the last heartbeat, at ``now``
    alive: bool


def current_history_row(db: sqlite_utils.Database) -> HistoryRow | None:
    """The current history (the first one when none is marked current), or None."""
    row = fetch_one(
        db,
        "SELECT h.* FROM histories h JOIN meta m ON m.key = 'current_history_id' "
        "AND CAST(m.value AS INTEGER) = h.id",
    )
    if row is None:
        row = fetch_one(db, "SELECT * FROM histories ORDER BY id LIMIT 1")
    return HistoryRow.from_row(row) if row else None


def history_row(db: sqlite_utils.Database, history_id: int | None) -> HistoryRow | None:
    """History ``history_id`` (None: the current one), or None when it does not exist."""
    if history_id is None:
        return current_history_row(db)
    row = fetch_one(db, "SELECT * FROM histories WHERE id = ?", [history_id])
    return HistoryRow.from_row(row) if row else None


def worker_info(db: sqlite_utils.Database, now: float) -> WorkerInfo | None:
    """The worker lease at ``now``, or None when no worker ever ran."""
    row = fetch_one(db, "SELECT * FROM leases WHERE name = 'worker'")
    if row is None:
        return None
    lease = LeaseRow.from_row(row)
    age = max(0.0, now - lease.heartbeat_at)
    return WorkerInfo(lease.holder, lease.pid, lease.host, age, age <= WORKER_STALE_S)


def newest_events(db: sqlite_utils.Database, limit: int, since_id: int = 0) -> tuple[EventRow, ...]:
    """Up to ``limit`` newest events after ``since_id``, oldest first (inside the caller's snapshot)."""
    rows = fetch_all(
        db, "SELECT * FROM events WHERE id > ? ORDER BY id DESC LIMIT ?", [since_id, limit]
    )
    return tuple(EventRow.from_row(r) for r in reversed(rows))


def recent_events(db: sqlite_utils.Database, *, limit: int = 50, since_id: int = 0) -> tuple[EventRow, ...]:
    """The newest events after ``since_id`` (oldest first)."""
    with read_snapshot(db):
        return newest_events(db, limit, since_id)
