"""The job queue: edit requests waiting for, held by, or finished by the worker.

Order is ``position`` ascending (REAL, so a move only rewrites the moved row). States:
queued -> running -> done | failed | cancelled; failed/cancelled can be retried (back to queued).

Attempt accounting: ``attempts`` counts claims (step rows are keyed by it); ``crashes`` counts only
the attempts whose worker died while the job was ``optimizing`` or ``committing`` (its ``phase``), as
found when the next worker recovers it. A graceful stop, a bad device, a model that fails to load or a
worker killed while loading never charge the job. A worker passes its lease ``Fence`` (and its id) to
every write on a running job, so a worker that lost its lease can neither claim nor finish anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlite_utils

from engine.methods.refact.hparams import ReFACTHParams
from engine.request import EditRequest
from store.db import NotFoundError, StoreError, fetch_all, fetch_one, fetch_required, now, transaction
from store.leases import Fence, LeaseLostError, check_lease
from store.records import JobRow, dump_json, dump_method_hparams
from store.states import JobPhase, JobState

STATES = tuple(JobState)
FINAL_STATES = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
PHASES = tuple(JobPhase)
CHARGED_PHASES = (JobPhase.OPTIMIZING, JobPhase.COMMITTING)  # a worker that died here counts against the job


def _next_position(db: sqlite_utils.Database) -> float:
    row = fetch_one(db, "SELECT MAX(position) AS p FROM jobs")
    return float(row["p"] if row and row["p"] is not None else 0.0) + 1.0


def enqueue(
    db: sqlite_utils.Database, history_id: int, request: EditRequest, hparams: ReFACTHParams, kind: str = "edit",
    method: str = "refact", method_hparams: dict | None = None,
) -> JobRow:
    """Append a job at the end of the queue (``method_hparams``: a non-ReFACT method's own hyperparameters)."""
    with transaction(db):
        if not fetch_one(db, "SELECT 1 FROM histories WHERE id = ?", [history_id]):
            raise NotFoundError(f"no history with id {history_id}")
        cur = db.execute(
            "INSERT INTO jobs (history_id, kind, position, request_json, hparams_json, created_at, method, "
            "method_hparams_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [history_id, kind, _next_position(db), dump_json(request.to_dict()),
             dump_json(hparams.to_dict()), now(), method, dump_method_hparams(method_hparams)],
        )
        return get_job(db, cur.lastrowid)


def get_job(db: sqlite_utils.Database, job_id: int) -> JobRow:
    """A job by id (NotFoundError if none)."""
    missing = f"no job {job_id}; `refact queue ls` shows the queue"
    row = fetch_required(db, "SELECT * FROM jobs WHERE id = ?", [job_id], missing)
    return JobRow.from_row(row)


def list_jobs(
    db: sqlite_utils.Database, history_id: int | None = None, states: list[str] | tuple[str, ...] | None = None
) -> list[JobRow]:
    """Jobs in queue order, optionally filtered by history and states."""
    sql, params = "SELECT * FROM jobs WHERE 1 = 1", []
    if history_id is not None:
        sql += " AND history_id = ?"
        params.append(history_id)
    if states:
        bad = [s for s in states if s not in STATES]
        if bad:
            raise StoreError(f"unknown job state(s) {bad}; use one of {'/'.join(STATES)}")
        sql += f" AND state IN ({', '.join('?' for _ in states)})"
        params.extend(states)
    return [JobRow.from_row(r) for r in fetch_all(db, sql + " ORDER BY position, id", params)]


def _require_state(job: JobRow, allowed: tuple[str, ...], action: str, hint: str = "") -> None:
    if job.state not in allowed:
        extra = f"; {hint}" if hint else ""
        raise StoreError(f"job {job.id} is {job.state}; only {'/'.join(allowed)} jobs can be {action}{extra}")


def remove_job(db: sqlite_utils.Database, job_id: int) -> JobRow:
    """Delete a queued, failed or cancelled job (and its step rows); returns the removed row."""
    with transaction(db):
        job = get_job(db, job_id)
        _require_state(job, (JobState.QUEUED, JobState.FAILED, JobState.CANCELLED), "removed",
                       "cancel a running job first" if job.state == JobState.RUNNING else "")
        if fetch_one(db, "SELECT 1 FROM edits WHERE job_id = ?", [job_id]):
            raise StoreError(f"job {job_id} produced an edit that is part of a history; it cannot be removed")
        db.execute("DELETE FROM steps WHERE job_id = ?", [job_id])
        db.execute("DELETE FROM jobs WHERE id = ?", [job_id])
    return job


def move_job(db: sqlite_utils.Database, job_id: int, index: int) -> JobRow:
    """Move a queued job to ``index`` (0-based, clamped) among the queued jobs."""
    with transaction(db):
        job = get_job(db, job_id)
        _require_state(job, (JobState.QUEUED,), "moved")
        others = [
            r["position"]
            for r in fetch_all(
                db, "SELECT position FROM jobs WHERE state = 'queued' AND id != ? ORDER BY position, id", [job_id]
            )
        ]
        index = max(0, min(index, len(others)))
        if not others:
            return job
        if index == 0:
            position = others[0] - 1.0
        elif index == len(others):
            position = others[-1] + 1.0
        else:
            lo, hi = others[index - 1], others[index]
            position = (lo + hi) / 2.0
            if not lo < position < hi:  # float gap exhausted: renumber the queued jobs first
                _renumber_queued(db)
                return move_job(db, job_id, index)
        db.execute("UPDATE jobs SET position = ? WHERE id = ?", [position, job_id])
        return get_job(db, job_id)


def _renumber_queued(db: sqlite_utils.Database) -> None:
    rows = fetch_all(db, "SELECT id, position FROM jobs WHERE state = 'queued' ORDER BY position, id")
    if not rows:
        return
    start = float(int(rows[0]["position"]))
    db.conn.executemany(
        "UPDATE jobs SET position = ? WHERE id = ?", [(start + i, r["id"]) for i, r in enumerate(rows)]
    )


def clear_queue(db: sqlite_utils.Database, history_id: int | None = None) -> int:
    """Delete every queued job (of one history, or all); returns how many."""
    with transaction(db):
        sql, params = "FROM jobs WHERE state = 'queued'", []
        if history_id is not None:
            sql += " AND history_id = ?"
            params.append(history_id)
        db.execute(f"DELETE FROM steps WHERE job_id IN (SELECT id {sql})", params)
        return db.execute(f"DELETE {sql}", params).rowcount


def cancel_job(db: sqlite_utils.Database, job_id: int) -> JobRow:
    """Cancel a queued job now; for a running job set ``cancel_requested`` (the worker stops it)."""
    with transaction(db):
        job = get_job(db, job_id)
        _require_state(job, (JobState.QUEUED, JobState.RUNNING), "cancelled")
        if job.state == JobState.QUEUED:
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ?", [now(), job_id]
            )
        else:
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", [job_id])
        return get_job(db, job_id)


def is_cancel_requested(db: sqlite_utils.Database, job_id: int) -> bool:
    """Whether someone asked to cancel this (running) job; cheap enough to poll between steps."""
    row = fetch_one(db, "SELECT cancel_requested, state FROM jobs WHERE id = ?", [job_id])
    return bool(row and (row["cancel_requested"] or row["state"] == JobState.CANCELLED))


def failed_job_ids(db: sqlite_utils.Database, reason: str | None = None) -> list[int]:
    """Failed jobs in queue order; with ``reason``, those whose error contains it (case-insensitive)."""
    rows = fetch_all(db, "SELECT id, error FROM jobs WHERE state = 'failed' ORDER BY position, id")
    want = (reason or "").casefold()
    return [r["id"] for r in rows if want in (r["error"] or "").casefold()]


def retry_job(db: sqlite_utils.Database, job_id: int) -> JobRow:
    """Put a failed or cancelled job back at the end of the queue."""
    with transaction(db):
        job = get_job(db, job_id)
        _require_state(job, (JobState.FAILED, JobState.CANCELLED), "retried")
        db.execute(
            "UPDATE jobs SET state = 'queued', position = ?, error = NULL, worker_id = NULL, "
            "heartbeat_at = NULL, started_at = NULL, finished_at = NULL, cancel_requested = 0, "
            "edit_id = NULL, crashes = 0, phase = NULL WHERE id = ?",
            [_next_position(db), job_id],
        )
        return get_job(db, job_id)


def peek_next(db: sqlite_utils.Database, history_id: int | None = None) -> JobRow | None:
    """The job claim_next would take now (nothing is changed)."""
    sql, params = "SELECT * FROM jobs WHERE state = 'queued'", []
    if history_id is not None:
        sql += " AND history_id = ?"
        params.append(history_id)
    row = fetch_one(db, sql + " ORDER BY position, id LIMIT 1", params)
    return JobRow.from_row(row) if row else None


def _own_running(db: sqlite_utils.Database, job_id: int, worker_id: str | None, fence: Fence | None) -> JobRow:
    """The job, after checking (inside the caller's transaction) that this worker still runs it."""
    if fence is not None:
        check_lease(db, fence)
    job = get_job(db, job_id)
    if worker_id is not None and (job.state != JobState.RUNNING or job.worker_id != worker_id):
        raise LeaseLostError(
            f"job {job_id} is no longer run by this worker (it is {job.state}"
            f"{'' if job.worker_id is None else ' under ' + job.worker_id}); this worker stopped without "
            "writing its result"
        )
    return job


def claim_next(db: sqlite_utils.Database, worker_id: str, history_id: int | None = None,
               fence: Fence | None = None) -> JobRow | None:
    """Atomically take the first queued job (running, attempts + 1, phase claimed); None when the queue
    is empty. With ``fence``, LeaseLostError (nothing claimed) when the lease was taken over."""
    with transaction(db):  # BEGIN IMMEDIATE: no other writer can claim between SELECT and UPDATE
        if fence is not None:
            check_lease(db, fence)
        sql, params = "SELECT id FROM jobs WHERE state = 'queued'", []
        if history_id is not None:
            sql += " AND history_id = ?"
            params.append(history_id)
        row = fetch_one(db, sql + " ORDER BY position, id LIMIT 1", params)
        if row is None:
            return None
        t = now()
        db.execute(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, worker_id = ?, started_at = ?, "
            "heartbeat_at = ?, finished_at = NULL, error = NULL, cancel_requested = 0, phase = 'claimed', "
            "lease_generation = ?, batch_token = NULL WHERE id = ? AND state = 'queued'",
            [worker_id, t, t, None if fence is None else fence.generation, row["id"]],
        )
        return get_job(db, row["id"])


def set_phase(db: sqlite_utils.Database, job_id: int, phase: str, worker_id: str | None = None,
              fence: Fence | None = None) -> None:
    """Record what a running job is doing (see CHARGED_PHASES); LeaseLostError if it is not ours."""
    if phase not in PHASES:
        raise StoreError(f"job phase must be one of {'/'.join(PHASES)}, not {phase!r}")
    with transaction(db):
        _own_running(db, job_id, worker_id, fence)
        db.execute("UPDATE jobs SET phase = ?, heartbeat_at = ? WHERE id = ?", [phase, now(), job_id])


def heartbeat_job(db: sqlite_utils.Database, job_id: int, worker_id: str | None = None) -> None:
    """Refresh a running job's heartbeat (only while ``worker_id``, when given, runs it)."""
    sql, params = "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND state = 'running'", [now(), job_id]
    if worker_id is not None:
        sql += " AND worker_id = ?"
        params.append(worker_id)
    with transaction(db):
        db.execute(sql, params)


def finish_job(
    db: sqlite_utils.Database, job_id: int, state: str, error: str | None = None, edit_id: int | None = None,
    *, worker_id: str | None = None, fence: Fence | None = None,
) -> JobRow:
    """End a running job as done, failed or cancelled (call inside the transaction that records the edit).

    With ``worker_id`` / ``fence``: LeaseLostError, nothing written, when this worker no longer runs it."""
    if state not in FINAL_STATES:
        raise StoreError(f"a job can only finish as {'/'.join(FINAL_STATES)}, not {state!r}")
    return _leave_running(db, job_id, worker_id, fence, "finished",
                          "state = ?, error = ?, edit_id = ?, finished_at = ?, heartbeat_at = ?, phase = NULL",
                          [state, error, edit_id, now(), now()])


def requeue_job(db: sqlite_utils.Database, job_id: int, *, worker_id: str | None = None,
                fence: Fence | None = None, reason: str | None = None) -> JobRow:
    """Give a running job back to the queue at its old position (e.g. the worker was stopped), without
    charging it. With ``worker_id`` / ``fence``: LeaseLostError, nothing written, if it is not ours.

    ``reason`` (e.g. why its batch was refused) is kept in ``error`` while it waits; a queued job with a
    reason runs alone at its next claim (see ``runs_alone``)."""
    return _leave_running(db, job_id, worker_id, fence, "requeued",
                          "state = 'queued', worker_id = NULL, heartbeat_at = NULL, started_at = NULL, "
                          "cancel_requested = 0, phase = NULL, error = ?", [reason])


def _leave_running(db: sqlite_utils.Database, job_id: int, worker_id: str | None, fence: Fence | None,
                   verb: str, assignments: str, params: list) -> JobRow:
    """The one transition out of ``running``: check the job is ours and running, then set ``assignments``."""
    with transaction(db):
        job = _own_running(db, job_id, worker_id, fence)
        _require_state(job, (JobState.RUNNING,), verb)
        db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*params, job_id])
        return get_job(db, job_id)


def runs_alone(job: JobRow) -> bool:
    """A queued job that must not share a batch: a worker died running it (``crashes``), or it came back
    from a batch that was refused or died (a reason in ``error``), so a poison job is found by itself."""
    return job.crashes > 0 or bool(job.error)


@dataclass
class Recovery:
    """What recover_orphans did with the jobs a dead worker left running."""

    requeued: list[int] = field(default_factory=list)
    charged: list[int] = field(default_factory=list)     # died while optimizing/committing: crashes + 1
    failed: list[int] = field(default_factory=list)      # reached max_crashes
    cancelled: list[int] = field(default_factory=list)
    batch_charged: list[int] = field(default_factory=list)  # died in a batch: requeued uncharged, to run alone


def crash_limit_message(job_id: int, crashes: int) -> str:
    """Why a job was failed by the poison-job rule, and how to requeue it."""
    return (f"the worker died during this job's optimization or commit {crashes} times (a crash it causes, "
            f"or kills from outside); `refact queue retry {job_id}` requeues it")


def recover_orphans(db: sqlite_utils.Database, max_crashes: int | None = None) -> Recovery:
    """Requeue every running job (cancel those with a pending cancel); call right after acquiring the
    worker lease, when no one else can be running jobs. A job whose worker died while it optimized or
    committed is charged one crash; with ``max_crashes`` it fails once it has that many."""
    out = Recovery()
    with transaction(db):
        rows = fetch_all(db, "SELECT id, cancel_requested, phase, crashes, batch_token FROM jobs "
                             "WHERE state = 'running' ORDER BY position, id")
        size: dict[str, int] = {}
        for r in rows:
            if r["batch_token"]:
                size[r["batch_token"]] = size.get(r["batch_token"], 0) + 1
        t = now()
        for r in rows:
            if r["cancel_requested"]:
                db.execute("UPDATE jobs SET state = 'cancelled', finished_at = ?, phase = NULL, "
                           "error = 'cancelled while its worker was gone' WHERE id = ?", [t, r["id"]])
                out.cancelled.append(r["id"])
                continue
            mates = size.get(r["batch_token"] or "", 1)
            if mates > 1 and r["phase"] in CHARGED_PHASES:
                # a death during a batch is the batch's: no member is charged, and each runs alone next
                # (runs_alone), where a poison job crashes by itself and is charged there
                db.execute("UPDATE jobs SET state = 'queued', worker_id = NULL, heartbeat_at = NULL, "
                           "started_at = NULL, phase = NULL, error = ? WHERE id = ?",
                           [f"the worker died while its batch of {mates} ran; it runs alone next", r["id"]])
                out.requeued.append(r["id"])
                out.batch_charged.append(r["id"])
                continue
            crashes = int(r["crashes"]) + (1 if r["phase"] in CHARGED_PHASES else 0)
            if crashes > int(r["crashes"]):
                out.charged.append(r["id"])
            if max_crashes is not None and crashes >= max_crashes:
                db.execute("UPDATE jobs SET state = 'failed', crashes = ?, finished_at = ?, phase = NULL, "
                           "worker_id = NULL, error = ? WHERE id = ?",
                           [crashes, t, crash_limit_message(r["id"], crashes), r["id"]])
                out.failed.append(r["id"])
                continue
            db.execute("UPDATE jobs SET state = 'queued', worker_id = NULL, heartbeat_at = NULL, started_at = NULL, "
                       "phase = NULL, crashes = ? WHERE id = ?", [crashes, r["id"]])
            out.requeued.append(r["id"])
    return out


def requeue_orphans(db: sqlite_utils.Database, max_crashes: int | None = None) -> list[int]:
    """recover_orphans, returning the requeued ids."""
    return recover_orphans(db, max_crashes).requeued
