"""The Queue screen's read-model: the jobs still in play, in queue order, and the worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import sqlite_utils

from refact_tui.services.dashboard_snapshot import WorkerInfo, history_row, read_snapshot, worker_info
from store.db import fetch_all
from store.records import HistoryRow, JobRow

QUEUE_STATES: tuple[str, ...] = ("running", "queued", "failed", "cancelled")


@dataclass(frozen=True)
class QueueView:
    """Jobs still in play (running, queued, failed, cancelled) in queue order."""

    history: HistoryRow | None
    jobs: tuple[JobRow, ...]
    counts: dict[str, int] = field(default_factory=dict)  # per state, all jobs of the history
    worker: WorkerInfo | None = None

    def job(self, job_id: int) -> JobRow | None:
        return next((j for j in self.jobs if j.id == job_id), None)


def queue_view(db: sqlite_utils.Database, *, now: float, history_id: int | None = None,
               states: Sequence[str] = QUEUE_STATES) -> QueueView:
    """The queue of the given (default: current) history; running first, then by position."""
    with read_snapshot(db):
        history = history_row(db, history_id)
        if history is None:
            return QueueView(None, (), {}, worker_info(db, now))
        marks = ",".join("?" for _ in states)
        rows = fetch_all(
            db,
            f"SELECT * FROM jobs WHERE history_id = ? AND kind = 'edit' AND state IN ({marks}) "
            "ORDER BY CASE state WHEN 'running' THEN 0 ELSE 1 END, position, id",
            [history.id, *states],
        )
        counts = {
            r["state"]: r["n"]
            for r in fetch_all(
                db, "SELECT state, COUNT(*) AS n FROM jobs WHERE history_id = ? GROUP BY state",
                [history.id],
            )
        }
        return QueueView(history, tuple(JobRow.from_row(r) for r in rows), counts, worker_info(db, now))
