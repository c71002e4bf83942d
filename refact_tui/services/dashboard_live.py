"""The Live screen's read-model: the job being optimized (or the last one that ran) and its steps."""

from __future__ import annotations

from dataclasses import dataclass

import sqlite_utils

from refact_tui.services.dashboard_snapshot import WorkerInfo, history_row, newest_events, read_snapshot, worker_info
from store.reads import find_job, live_job, slot_lasts
from store.records import EventRow, HistoryRow, JobRow, StepRow
from store.states import JobState
from store.steps import steps_for_job


@dataclass(frozen=True)
class LiveView:
    """The edit being optimized now (or the last one that ran) and its steps since ``since_step``.

    ``reset`` is True when the job or attempt differs from the one the caller holds: ``steps`` then
    holds every step of the attempt, not only the new ones. A multi-encoder edit optimises its slots
    one after another: ``steps`` are those of ``slot`` (the one optimised now, or last), and
    ``slots`` holds every slot's latest row in slot order.
    """

    history: HistoryRow | None
    job: JobRow | None
    attempt: int
    running: bool
    reset: bool
    steps: tuple[StepRow, ...]
    last: StepRow | None
    threshold: float | None
    max_steps: int
    opt_elapsed: float | None  # optimization seconds, from the step rows
    wall_elapsed: float | None  # since the job started (at ``now`` while it runs)
    eta: float | None  # upper bound: the remaining steps at the mean step time so far
    events: tuple[EventRow, ...]
    worker: WorkerInfo | None
    slot: str = ""
    slots: tuple[StepRow, ...] = ()


def live_view(db: sqlite_utils.Database, *, now: float, since_step: int = -1,
              known_job: int | None = None, known_attempt: int | None = None, known_slot: str | None = None,
              job_id: int | None = None, event_limit: int = 12) -> LiveView:
    """The running job (else the latest finished one) with its step rows after ``since_step``.

    Pass the job and attempt whose steps the caller already holds as ``known_job`` /
    ``known_attempt`` (and ``known_slot``); when they no longer match, every step of the current
    attempt's current slot is returned.
    """
    with read_snapshot(db):
        history = history_row(db, None)
        if job_id is not None:
            job = find_job(db, job_id)
        else:
            job = live_job(db, history.id if history else None)
        events = newest_events(db, event_limit)
        worker = worker_info(db, now)
        if job is None:
            return LiveView(history, None, 0, False, known_job is not None, (), None, None, 0,
                            None, None, None, events, worker)
        attempt = max(job.attempts, 1)
        slots = slot_lasts(db, job.id, attempt)
        slot = slots[-1].slot if slots else (known_slot or "")
        reset = (job.id, attempt) != (known_job, known_attempt) or (known_slot is not None and slot != known_slot)
        since = -1 if reset else since_step
        steps = tuple(steps_for_job(db, job.id, since, attempt=attempt, slot=slot))
        last = steps[-1] if steps else None
        if last is None and not reset:
            last = slots[-1] if slots else None
    running = job.state == JobState.RUNNING
    hp = job.hparams
    eta = None
    if running and last is not None:
        per_step = last.elapsed / (last.step + 1)
        eta = max(0, hp.max_steps - 1 - last.step) * per_step
    if job.started_at is None:
        wall = None
    elif running:
        wall = max(0.0, now - job.started_at)
    else:
        wall = (job.finished_at or job.started_at) - job.started_at
    return LiveView(
        history=history, job=job, attempt=attempt, running=running, reset=reset, steps=steps,
        last=last, threshold=hp.prob_threshold, max_steps=hp.max_steps,
        opt_elapsed=last.elapsed if last else None, wall_elapsed=wall, eta=eta, events=events,
        worker=worker, slot=slot, slots=slots,
    )
