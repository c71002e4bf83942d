"""What every TUI read-model shares: the short read transaction, the current history, the worker
lease and the event log, read from the workspace database (nothing here writes)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

from store.db import read_snapshot
from store.events import tail_events
from store.leases import get_lease
from store.reads import current_or_first_history, find_history
from store.records import EventRow, HistoryRow

__all__ = [
    "WORKER_STALE_S", "WorkerInfo", "history_row", "newest_events", "read_snapshot",
    "recent_events", "worker_info",
]

# A worker lease whose heartbeat is older than this is shown as stale.
WORKER_STALE_S = 30.0


@dataclass(frozen=True)
class WorkerInfo:
    """The worker lease as seen by a reader."""

    holder: str
    pid: int
    host: str
    heartbeat_age: float  # seconds since the last heartbeat, at ``now``
    alive: bool


def history_row(db: sqlite_utils.Database, history_id: int | None) -> HistoryRow | None:
    """History ``history_id`` (None: the current one, else the first), or None when it does not exist."""
    return current_or_first_history(db) if history_id is None else find_history(db, history_id)


def worker_info(db: sqlite_utils.Database, now: float) -> WorkerInfo | None:
    """The worker lease at ``now``, or None when no worker ever ran."""
    lease = get_lease(db, "worker")
    if lease is None:
        return None
    age = max(0.0, now - lease.heartbeat_at)
    return WorkerInfo(lease.holder, lease.pid, lease.host, age, age <= WORKER_STALE_S)


def newest_events(db: sqlite_utils.Database, limit: int, since_id: int = 0) -> tuple[EventRow, ...]:
    """Up to ``limit`` newest events after ``since_id``, oldest first (inside the caller's snapshot)."""
    return tuple(tail_events(db, limit, since_id))


def recent_events(db: sqlite_utils.Database, *, limit: int = 50, since_id: int = 0) -> tuple[EventRow, ...]:
    """The newest events after ``since_id`` (oldest first)."""
    with read_snapshot(db):
        return newest_events(db, limit, since_id)
