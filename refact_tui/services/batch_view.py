"""What the TUI shows of batches: the running batch's requests (Live) and a batch edit's requests
(History), read from SQLite like the rest of services.dashboard."""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

from store.batches import BatchRequestRow, batch_requests
from store.db import fetch_all
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


def _curve(db: sqlite_utils.Database, pairs: list[tuple[int, int]]) -> tuple[tuple[int, float], ...]:
    if not pairs:
        return ()
    cond = " OR ".join("(job_id = ? AND attempt = ?)" for _ in pairs)
    params = [x for p in pairs for x in p]
    rows = fetch_all(db, f"SELECT step, AVG(loss) AS loss FROM steps WHERE ({cond}) AND loss IS NOT NULL "
                         "GROUP BY step ORDER BY step", params)
    return tuple((int(r["step"]), float(r["loss"])) for r in rows)


def batch_live_view(db: sqlite_utils.Database, job: JobRow | None) -> BatchLiveView | None:
    """The batch ``job`` (the Live screen's job) belongs to, or None for a sequential job."""
    token = getattr(job, "batch_token", None) if job is not None else None
    if not token:
        return None
    jobs = [JobRow.from_row(r) for r in fetch_all(db, "SELECT * FROM jobs WHERE batch_token = ? ORDER BY position, id", [token])]
    if not jobs:
        return None
    hp = jobs[0].hparams
    rows = []
    for j in jobs:
        last = fetch_all(db, "SELECT step, p_target FROM steps WHERE job_id = ? AND attempt = ? ORDER BY step DESC LIMIT 1",
                         [j.id, max(j.attempts, 1)])
        step = int(last[0]["step"]) if last else None
        p = last[0]["p_target"] if last else None
        rows.append(BatchLiveRow(j.id, j.request.prompt, j.request.target, j.state, step, p,
                                 p is not None and p > hp.prob_threshold))
    curve = _curve(db, [(j.id, max(j.attempts, 1)) for j in jobs])
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
    rows = fetch_all(db, "SELECT step, AVG(loss) AS loss FROM steps WHERE edit_id = ? AND loss IS NOT NULL "
                         "GROUP BY step ORDER BY step", [edit_id])
    return BatchDetailView(tuple(reqs), tuple((int(r["step"]), float(r["loss"])) for r in rows))
