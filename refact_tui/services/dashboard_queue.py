"""The Queue screen's read-model: the jobs still in play, in queue order, and the worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import sqlite_utils

from refact_tui.services.dashboard_snapshot import WorkerInfo, history_row, read_snapshot, worker_info
from store.reads import job_state_counts, queue_jobs
from store.records import HistoryRow, JobRow
from store.states import JobState

QUEUE_STATES: tuple[JobState, ...] = (JobState.RUNNING, JobState.QUEUED, JobState.FAILED, JobState.CANCELLED)


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
        jobs = queue_jobs(db, history.id, states)
        return QueueView(history, jobs, dict(job_state_counts(db, history.id)), worker_info(db, now))
