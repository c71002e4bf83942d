"""Batches: N queued jobs claimed together and committed as ONE edit row of kind ``batch``.

``claim_batch`` takes up to N queued jobs of one history with the same hyperparameters, in queue
order, in one transaction (they share a ``batch_token``). The worker commits them with
``record_batch_requests`` + ``finish_job`` for each inside the transaction that records the
edit, so a kill anywhere leaves every job either done with the batch's edit or requeued.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Sequence

import sqlite_utils

from engine.request import EditRequest
from store.db import StoreError, fetch_all, fetch_one, now, transaction
from store.jobs import get_job, runs_alone
from store.leases import Fence, check_lease
from store.records import JobRow, dump_json


class BatchMixError(StoreError):
    """Jobs of different base models (or histories) cannot form one batch."""


@dataclass(frozen=True)
class BatchRequestRow:
    """One request of a batch edit and its result."""

    edit_id: int
    idx: int
    job_id: int | None
    request: EditRequest
    p_target: float | None
    steps_run: int
    early_stopped: bool
    residual: float | None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchOutcome:
    """What the worker records for one request (same order as the batch's jobs)."""

    job_id: int | None
    request: EditRequest
    p_target: float
    steps_run: int
    early_stopped: bool
    residual: float


# Only ReFACT jobs share a batch (TIME / UCE jobs run alone).
_REFACT_JOB = "method = 'refact'"


def claim_batch(
    db: sqlite_utils.Database, worker_id: str, limit: int, fence: Fence | None = None
) -> list[JobRow]:
    """Atomically claim up to ``limit`` queued jobs: the first queued job and the queued jobs after it
    of the same history with identical hyperparameters. [] when the queue is empty.

    The batch ends before a job that must run alone (``store.jobs.runs_alone``: a worker died on it,
    or its last batch was refused or died) and before a request whose subject ends on the same word
    as one already in the batch (nearly the same key: summed in one batch, both would miss). That job
    waits for the next claim, so queue order decides as it would sequentially. A first job that must
    run alone is claimed alone."""
    if limit < 1:
        raise StoreError(f"a batch needs at least 1 job, got {limit}; pass --batch N with N >= 1")
    with transaction(db):
        if fence is not None:
            check_lease(db, fence)
        first = fetch_one(db, "SELECT id, history_id, hparams_json FROM jobs WHERE state = 'queued' "
                              f"AND kind = 'edit' AND {_REFACT_JOB} ORDER BY position, id LIMIT 1")
        if first is None:
            return []
        rows = fetch_all(
            db,
            "SELECT * FROM jobs WHERE state = 'queued' AND kind = 'edit' AND history_id = ? AND hparams_json = ? "
            f"AND {_REFACT_JOB} ORDER BY position, id LIMIT ?",
            [first["history_id"], first["hparams_json"], limit],
        )
        chosen: list[JobRow] = []
        subjects: set[str] = set()
        for job in (JobRow.from_row(r) for r in rows):
            word = subject_word(job.request)
            if chosen and (runs_alone(job) or word in subjects):
                break
            chosen.append(job)
            subjects.add(word)
            if runs_alone(job):
                break
        token = uuid.uuid4().hex[:12]
        t = now()
        for job in chosen:
            db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_id = ?, started_at = ?, "
                "heartbeat_at = ?, finished_at = NULL, error = NULL, cancel_requested = 0, phase = 'claimed', "
                "lease_generation = ?, batch_token = ? WHERE id = ? AND state = 'queued'",
                [worker_id, t, t, None if fence is None else fence.generation, token, job.id],
            )
        return [get_job(db, job.id) for job in chosen]


def subject_word(request: EditRequest) -> str:
    """The last word of the request's subject, case-folded: the token whose key the edit writes."""
    words = re.findall(r"\w+", request.subject_text.casefold())
    return words[-1] if words else request.subject_text.casefold()


def check_same_base(db: sqlite_utils.Database, jobs: Sequence[JobRow]) -> None:
    """BatchMixError (one line) unless every job belongs to one history of one base model."""
    ids = sorted({j.history_id for j in jobs})
    if not ids:
        return
    marks = ",".join("?" for _ in ids)
    bases = {r["base_model_id"] for r in fetch_all(db, f"SELECT base_model_id FROM histories WHERE id IN ({marks})", ids)}
    if len(bases) > 1:
        raise BatchMixError(
            f"the jobs mix {len(bases)} base models (histories {ids}); a batch edits one model - queue them per history"
        )
    if len(ids) > 1:
        raise BatchMixError(f"the jobs belong to histories {ids}; a batch edits one history - run them per history")


def record_batch_requests(db: sqlite_utils.Database, edit_id: int, outcomes: Sequence[BatchOutcome]) -> None:
    """One batch_requests row per request (call inside the transaction that records the edit)."""
    with transaction(db):
        for i, o in enumerate(outcomes):
            db.execute(
                "INSERT INTO batch_requests (edit_id, idx, job_id, request_json, p_target, steps_run, early_stopped, "
                "residual) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [edit_id, i, o.job_id, dump_json(o.request.to_dict()), _real(o.p_target), int(o.steps_run),
                 int(o.early_stopped), _real(o.residual)],
            )


def set_request_metrics(db: sqlite_utils.Database, edit_id: int, idx: int, metrics: dict[str, float]) -> None:
    """Store one request's text metrics (name -> value)."""
    with transaction(db):
        db.execute("UPDATE batch_requests SET metrics_json = ? WHERE edit_id = ? AND idx = ?",
                   [dump_json({k: float(v) for k, v in metrics.items()}), edit_id, idx])


def batch_requests(db: sqlite_utils.Database, edit_id: int) -> list[BatchRequestRow]:
    """The requests of a batch edit in batch order ([] for a single edit)."""
    rows = fetch_all(db, "SELECT * FROM batch_requests WHERE edit_id = ? ORDER BY idx", [edit_id])
    return [
        BatchRequestRow(
            edit_id=r["edit_id"], idx=r["idx"], job_id=r["job_id"], request=EditRequest.from_dict(json.loads(r["request_json"])),
            p_target=r["p_target"], steps_run=int(r["steps_run"]), early_stopped=bool(r["early_stopped"]),
            residual=r["residual"], metrics=json.loads(r["metrics_json"] or "{}"),
        )
        for r in rows
    ]


def batch_jobs(db: sqlite_utils.Database, token: str) -> list[JobRow]:
    """The jobs claimed together under ``token``."""
    return [get_job(db, r["id"]) for r in fetch_all(db, "SELECT id FROM jobs WHERE batch_token = ? ORDER BY position, id", [token])]


def _real(x: float | None) -> float | None:
    import math

    return None if x is None or not math.isfinite(float(x)) else float(x)


def _step_writer_class():
    from store.steps import StepWriter
    from store.steps import _real as real

    class BatchStepWriter(StepWriter):
        """One StepWriter (one thread, one connection) for the step rows of every job of a batch."""

        def add_for(self, job_id: int, attempt: int, event) -> None:
            row = (job_id, attempt, self.slot, int(event.step), real(event.loss), real(event.nll), real(event.wd),
                   real(event.p_target), real(event.delta_norm), float(event.elapsed))
            self._queue(row)

    return BatchStepWriter


def batch_step_writer(db_path, first_job_id: int, slot: str = "text_encoder"):
    """A step writer for a batch (``add_for(job_id, attempt, event)``) whose rows are encoder ``slot``'s."""
    return _step_writer_class()(db_path, first_job_id, 0, flush_every=200, slot=slot)


def copy_batch(db: sqlite_utils.Database, from_edit: int, to_edit: int) -> None:
    """Make ``to_edit`` (a copy of a batch edit, by fork or replay) a batch with the same request rows."""
    with transaction(db):
        db.execute("UPDATE edits SET kind = 'batch' WHERE id = ?", [to_edit])
        db.execute(
            "INSERT INTO batch_requests (edit_id, idx, job_id, request_json, p_target, steps_run, early_stopped, "
            "residual, metrics_json) SELECT ?, idx, job_id, request_json, p_target, steps_run, early_stopped, residual, "
            "metrics_json FROM batch_requests WHERE edit_id = ?",
            [to_edit, from_edit],
        )


def requests_of_edits(db: sqlite_utils.Database, edits: Sequence) -> list[EditRequest]:
    """The requests these edits applied, in order: a single edit's own, every request of a batch edit."""
    out: list[EditRequest] = []
    for e in edits:
        if getattr(e, "kind", "edit") == "batch":
            out.extend(r.request for r in batch_requests(db, e.id))
        else:
            out.append(e.request)
    return out
