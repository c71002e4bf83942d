"""What the TUI shows of batches: the running batch's requests (Live) and a batch edit's requests
(History), read from SQLite like the rest of services.dashboard."""

from __future__ import annotations

import math
from dataclasses import dataclass

import sqlite_utils

from store.batches import BatchRequestRow, batch_requests
from store.reads import batch_jobs, edit_mean_loss_curve, last_step, mean_loss_curve
from store.records import JobRow


@dataclass(frozen=True)
class BatchLiveRow:
    """One request of a running (or the last) batch."""

    job_id: int
    prompt: str
    target: str
    state: str
    step: int | None
    p_target: float | None
    converged: bool


@dataclass(frozen=True)
class BatchLiveView:
    token: str
    rows: tuple[BatchLiveRow, ...]
    curve: tuple[tuple[int, float], ...]  # (step, mean loss over the requests still optimising)
    threshold: float
    max_steps: int

    @property
    def converged(self) -> int:
        return sum(r.converged for r in self.rows)


def batch_live_view(db: sqlite_utils.Database, job: JobRow | None) -> BatchLiveView | None:
    """The batch ``job`` (the Live screen's job) belongs to, or None for a sequential job."""
    token = getattr(job, "batch_token", None) if job is not None else None
    if not token:
        return None
    jobs = batch_jobs(db, token)
    if not jobs:
        return None
    hp = jobs[0].hparams
    rows = []
    for j in jobs:
        last = last_step(db, j.id, max(j.attempts, 1))
        step = last.step if last else None
        p = None if last is None or math.isnan(last.p_target) else last.p_target
        rows.append(BatchLiveRow(j.id, j.request.prompt, j.request.target, j.state, step, p,
                                 p is not None and p > hp.prob_threshold))
    curve = mean_loss_curve(db, [(j.id, max(j.attempts, 1)) for j in jobs])
    return BatchLiveView(token, tuple(rows), curve, hp.prob_threshold, hp.max_steps)


@dataclass(frozen=True)
class BatchDetailView:
    """A batch edit's requests and its aggregate loss curve (History detail)."""

    requests: tuple[BatchRequestRow, ...]
    curve: tuple[tuple[int, float], ...]


def batch_detail_view(db: sqlite_utils.Database, edit_id: int) -> BatchDetailView | None:
    """None for an edit that is not a batch."""
    reqs = batch_requests(db, edit_id)
    if not reqs:
        return None
    return BatchDetailView(tuple(reqs), edit_mean_loss_curve(db, edit_id))
