"""The queue worker: claims units of work (a single job, or a batch of jobs under ``--batch``) from
the workspace database, computes each as one edit, and records it.

Crash safety rests on one ordering: the delta file is written (atomically) before the single
transaction that records the edit, finishes the unit's jobs, attaches their step rows and moves the
history head. A worker killed anywhere before that commit leaves `running` jobs that the next
worker requeues (after recovering the stale lease), so every job yields exactly one applied edit.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from engine.covariance import SecondMomentStore
from engine.errors import EditCancelled, EngineError
from engine.events import StepEvent, StopCheck
from engine.methods.base import EditContext
from engine.methods.refact.hparams import HParamsError
from engine.request import RequestError
from refact_tui.services.batch_worker import claim_batch_unit
from refact_tui.services.methods import compute_outcome
from refact_tui.services.work_unit import SingleJob, WorkUnit
from refact_tui.services.worker_lease import LEASE_NAME, LeaseKeeper, remove_orphan_deltas  # noqa: F401
from refact_tui.services.worker_records import delta_meta, earlier_requests, slot_rows  # noqa: F401 (re-exported)
from refact_tui.services.worker_types import (  # noqa: F401  (re-exported: the worker's public types)
    AfterEdit,
    EventCallback,
    JobFailed,
    JobFinished,
    JobStarted,
    ModelLoader,
    SlotStep,
    WorkerConfig,
    WorkerEvent,
    WorkerNotice,
    WorkerSummary,
)
from store.artifacts import add_artifact
from store.db import open_db, transaction
from store.edits import record_edit
from store.errors import StoreError
from store.events import log_event
from store.histories import get_history
from store.jobs import claim_next, finish_job, is_cancel_requested, peek_next, recover_orphans, requeue_job, set_phase
from store.leases import LeaseLostError
from store.steps import StepWriter, attach_steps

# errors of an edit's own making: the unit is refused (a single job fails), the worker goes on
EDIT_ERRORS = (EngineError, RequestError, HParamsError, ValueError, RuntimeError)


class DeltaWriteError(StoreError):
    """A delta file could not be written (full disk, read-only folder); the jobs stay queued."""


def save_delta(delta, path: Path) -> str:
    """``delta.save(path)`` (atomic; its sha256), or DeltaWriteError in one line: a full disk surfaces
    from safetensors as its own error type, not only as OSError."""
    try:
        return delta.save(path)
    except Exception as exc:
        if isinstance(exc, (EngineError, StoreError)):
            raise
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise DeltaWriteError(f"cannot write the delta file {path} ({detail}); free disk space or make "
                              f"{path.parent} writable, then run again (the jobs were requeued)") from None


class _HeadMoved(Exception):
    """The history head changed (rollback) while the edit was computed on the old state."""


class Worker:
    """Runs queued edit jobs one unit after another on one in-memory working model.

    ``batch`` (services.batch_worker.BatchSettings): claim up to N ReFACT jobs as one batch edit.
    """

    def __init__(
        self,
        config: WorkerConfig,
        load_model: ModelLoader,
        *,
        on_event: EventCallback | None = None,
        should_stop: StopCheck | None = None,
        after_edit: AfterEdit | None = None,
        batch=None,
    ) -> None:
        if batch is not None:
            batch.validate()
        self.config = config
        self.batch = batch
        self.after_edit_hook = after_edit
        self._load_model = load_model
        self._emit = on_event or (lambda ev: None)
        self._should_stop = should_stop or (lambda: False)
        self._model = None
        self._model_key: tuple[int, int] | None = None  # (history_id, head_seq) of self._model
        self._base_hash = ""
        self._stats = None
        self._db = None
        self._running: list[int] = []  # ids of the jobs of the unit being run (heartbeats)
        self.lease = LeaseKeeper(config.db_path, config.worker_id, stale_after=config.lease_stale_after,
                                 interval=config.heartbeat_interval, running_ids=lambda: list(self._running))

    def emit(self, event: WorkerEvent) -> None:
        self._emit(event)

    # ------------------------------------------------------------------ main loop

    def run(self) -> WorkerSummary:
        """Take the lease, recover orphans, process units until the queue is empty / --max / stop."""
        from engine.models import resolve_device

        cfg = self.config
        summary = WorkerSummary()
        resolve_device(cfg.device)  # a bad --device fails here, before any lease or job is touched
        self._db = db = open_db(cfg.db_path)
        try:
            self.lease.acquire(db)
        except BaseException:
            db.close()
            self._db = None
            raise
        try:
            self._recover(summary)
            self.lease.start()
            processed = 0
            while cfg.max_jobs is None or processed < cfg.max_jobs:
                if self._should_stop():
                    summary.stopped = True
                    break
                try:
                    unit = self._claim(None if cfg.max_jobs is None else cfg.max_jobs - processed)
                except LeaseLostError as exc:
                    self._lost(summary, exc, [])
                    break
                if unit is None:
                    if cfg.watch:
                        time.sleep(cfg.poll_interval)
                        continue
                    break
                processed += len(unit.ids)  # --max counts jobs, a batch's one by one
                try:
                    self._run_unit(unit, summary)
                except LeaseLostError as exc:
                    self._lost(summary, exc, unit.ids)
                if summary.stopped:
                    break
        finally:
            try:
                self.lease.release(db)
            finally:
                db.close()
                self._db = None
        return summary

    def _recover(self, summary: WorkerSummary) -> None:
        """Requeue (or charge and fail) the jobs a dead worker left running; remove its orphan deltas."""
        cfg, db = self.config, self._db
        recovery = recover_orphans(db, max_crashes=cfg.max_attempts)
        summary.recovered_jobs = list(recovery.requeued)
        notices = []
        if summary.recovered_jobs:
            notices.append(f"requeued interrupted job(s) {summary.recovered_jobs} left by a stopped worker")
        if recovery.batch_charged:
            notices.append(f"the worker died while batch job(s) {recovery.batch_charged} ran: the batch is charged, "
                           "not its jobs; each runs alone next")
        for msg in notices:
            log_event(db, "worker", msg, level="warning")
            self._emit(WorkerNotice(msg))
        remove_orphan_deltas(db, cfg.root, cfg.deltas_dir, recovery.requeued + recovery.failed)
        for job_id in recovery.failed:
            msg = f"job {job_id} failed: the worker died during its optimization or commit {cfg.max_attempts} times"
            log_event(db, "worker", msg, level="error", job_id=job_id)
            summary.failed += 1
            summary.failures[job_id] = msg
            self._emit(JobFailed(job_id, msg))

    def _claim(self, limit: int | None) -> WorkUnit | None:
        """The next unit, claimed under the lease fence (LeaseLostError when it was taken over). The
        model is loaded first, so a model that cannot load charges nothing. ``limit``: the most jobs
        this claim may take (what --max leaves)."""
        nxt = peek_next(self._db)
        if nxt is None:
            return None
        self.lease.check(self._db)
        model = self._model_for(nxt.history_id)
        if self.batch is not None:
            unit = claim_batch_unit(self, model, nxt, limit)
            if unit is not False:  # False: the next job runs alone
                return unit
        job = claim_next(self._db, self.config.worker_id, fence=self.lease.fence)
        return None if job is None else SingleJob(job)

    def _lost(self, summary: WorkerSummary, exc: LeaseLostError, job_ids: list[int]) -> None:
        """This worker's lease was taken over: stop, writing nothing (the taker redoes the jobs)."""
        summary.lease_lost = str(exc)
        summary.stopped = True
        self._emit(WorkerNotice(f"stopped: {exc}"))
        for job_id in job_ids:
            self._emit(JobFailed(job_id, "lease lost; the worker that took over redoes this job", requeued=True))

    # ------------------------------------------------------------------ one unit: the outcome ladder

    def _run_unit(self, unit: WorkUnit, summary: WorkerSummary) -> None:
        """done / failed (refused) / cancelled / requeued (stop, head moved, crash in this process) /
        lease lost (LeaseLostError out of here: nothing written)."""
        db = self._db
        self._running = list(unit.ids)
        started = time.perf_counter()
        try:
            self._emit(unit.started())
            try:
                if self._model_key is None or self._model_key[0] != unit.history_id:
                    self._set_phase(unit, "loading")
                model = self._model_for(unit.history_id)
            except LeaseLostError:
                raise
            except BaseException:
                self._requeue(unit)  # never charged: the edit did not run
                raise
            self._set_phase(unit, "optimizing")
            try:
                result = unit.compute(self, model)
            except EditCancelled:
                self.lease.check(db)  # lease lost: raises, writing nothing
                self._stopped_or_cancelled(unit, summary)
                return
            except LeaseLostError:
                raise
            except EDIT_ERRORS as exc:
                unit.refuse(self, str(exc) or type(exc).__name__, summary, exc)
                return
            except BaseException:
                self._requeue(unit)
                raise
            try:
                edit = self._commit(model, unit, result)
            except _HeadMoved:
                self._requeue(unit)
                summary.requeued += len(unit.ids)
                for job_id in unit.ids:
                    self._emit(JobFailed(job_id, "history head moved while editing; requeued", requeued=True))
                return
            except LeaseLostError:
                raise
            except EngineError as exc:  # InsertionRefusedError: the insertion check failed
                unit.refuse(self, str(exc), summary, exc)
                return
            except BaseException:
                self._requeue(unit)
                raise
            summary.done += len(unit.ids)
            summary.edit_ids.append(edit.id)
            self._emit(unit.finished(edit, result, time.perf_counter() - started))
            try:
                unit.after_edit(self, model, edit)
            except Exception as exc:  # metrics are a bonus; the edit itself is committed
                log_event(db, "worker", f"text metrics for edit {edit.id} failed: {exc}", level="warning",
                          job_id=unit.ids[0])
        finally:
            self._running = []

    def _set_phase(self, unit: WorkUnit, phase: str) -> None:
        for job_id in unit.ids:
            set_phase(self._db, job_id, phase, **self.lease.owner)

    def _requeue(self, unit: WorkUnit, reason: str | None = None) -> None:
        for job_id in unit.ids:
            requeue_job(self._db, job_id, reason=reason, **self.lease.owner)

    def _stopped_or_cancelled(self, unit: WorkUnit, summary: WorkerSummary) -> None:
        """A worker stop requeues every job uncharged; a cancel from the queue cancels the jobs it names
        and requeues the others."""
        db = self._db
        cancelled = [] if self._should_stop() else [j for j in unit.ids if is_cancel_requested(db, j)]
        alone = len(unit.ids) == 1
        for job_id in unit.ids:
            if job_id in cancelled:
                finish_job(db, job_id, "cancelled", error="cancelled while running" if alone else
                           "cancelled while its batch ran", **self.lease.owner)
                summary.failures[job_id] = "cancelled"
                self._emit(JobFailed(job_id, "cancelled"))
            else:
                requeue_job(db, job_id, **self.lease.owner)  # a graceful stop is never charged
                summary.requeued += 1
                self._emit(JobFailed(job_id, "stopped; requeued" if alone else "batch stopped; requeued",
                                     requeued=True))
        if not cancelled:
            summary.stopped = True
        what = f"job {unit.ids[0]}" if alone else f"batch of jobs {unit.ids}"
        log_event(db, "worker", f"{what} stopped between steps" + ("; requeued" if not cancelled else ""),
                  job_id=unit.ids[0])

    def fail_job(self, job, reason: str, summary: WorkerSummary, exc: BaseException | None = None) -> None:
        """End a job as failed with a one-line reason (a traceback goes to the debug log for a bug)."""
        reason = " ".join(reason.split())
        finish_job(self._db, job.id, "failed", error=reason, **self.lease.owner)
        log_event(self._db, "worker", f"job {job.id} failed: {reason}", level="error", job_id=job.id)
        if exc is not None and not isinstance(exc, (EngineError, RequestError, HParamsError)):
            tb = "".join(traceback.format_exception(exc)).strip()
            log_event(self._db, "worker", tb[-4000:], level="debug", job_id=job.id)
        summary.failed += 1
        summary.failures[job.id] = reason
        self._emit(JobFailed(job.id, reason))

    def requeue_refused(self, unit: WorkUnit, reason: str, summary: WorkerSummary) -> None:
        """A refusal that is not the jobs' own (a batch's): back to the queue with the reason kept."""
        self._requeue(unit, reason)
        summary.requeued += len(unit.ids)
        for job_id in unit.ids:
            self._emit(JobFailed(job_id, reason, requeued=True))
        log_event(self._db, "worker", f"jobs {unit.ids} requeued: {reason}", level="warning", job_id=unit.ids[0])

    # ------------------------------------------------------------------ the working model

    def _model_for(self, history_id: int):
        """The in-memory model at the history's current head (rebuilt when the head moved)."""
        head = get_history(self._db, history_id).head_seq
        if self._model is None or self._model_key != (history_id, head):
            self._model = None
            state = self._load_model(history_id)
            self._model, self._model_key = state.model, (history_id, int(state.head_seq))
            self._base_hash = str(state.base_encoder_hash)
            self._emit(WorkerNotice(f"working model loaded: history {history_id} at edit {state.head_seq}"))
        return self._model

    @property
    def db(self):
        return self._db

    @property
    def model_key(self) -> tuple[int, int] | None:
        return self._model_key

    def moment_store(self):
        if self._stats is None:  # one store per run: C stays in memory across jobs
            self._stats = SecondMomentStore(self.config.stats_dir)
        return self._stats

    def stop_check(self, job_ids: list[int]) -> StopCheck:
        """Stop between steps on a worker stop, a lost lease, or a cancel of any of these jobs (the
        queue is polled twice a second)."""
        last, hit = [0.0], [False]

        def check() -> bool:
            if self._should_stop() or self.lease.lost.is_set():
                return True
            t = time.monotonic()
            if not hit[0] and t - last[0] >= 0.5:
                last[0] = t
                try:
                    hit[0] = any(is_cancel_requested(self._db, j) for j in job_ids)
                except Exception:  # busy database: ask again at the next step
                    pass
            return hit[0]

        return check

    # ------------------------------------------------------------------ computing a single job's edit

    def compute_single(self, model, job):
        """A single job's EditOutcome through its method's contract, with batched step rows (never
        modifies weights)."""
        writer = StepWriter(self.config.db_path, job.id, job.attempts)
        try:
            return compute_outcome(model, [job.request], job.hparams, self._edit_context(model, job, writer),
                                   method=job.method, method_hparams=job.method_hparams)
        finally:
            writer.close()

    def _edit_context(self, model, job, writer) -> EditContext:
        """Second moments, progress, steps (every slot's are step rows; the first edited slot's are
        emitted, each slot's too when the model has several), the stop check and the --preserve requests."""
        slots = getattr(model, "slots", None) or ()
        lead: list[str] = []  # the first slot that reports steps (slots run one after another)

        def on_step(slot: str, _request: int, ev: StepEvent) -> None:
            writer.add(ev, slot)
            lead[:] = lead or [slot]
            if slot == lead[0]:
                self._emit(ev)
            if len(slots) > 1:
                self._emit(SlotStep(slot, ev))

        return EditContext(second_moments=self.moment_store(), corpus=self.config.stats_corpus,
                           n_samples=self.config.stats_samples, progress=self._emit, on_step=on_step,
                           should_stop=self.stop_check([job.id]),
                           preserve=earlier_requests(self._db, model, job.hparams, *self._model_key))

    # ------------------------------------------------------------------ the one fenced commit

    def _commit(self, model, unit: WorkUnit, result):
        """Save the delta, insert it, then record everything in one transaction under the lease fence,
        keeping memory == database (the insertion is undone when anything fails)."""
        from refact_tui.services.working_model import model_weights_hash  # text encoders + edited UNet matrices

        cfg, db = self.config, self._db
        history_id, built_head = self._model_key
        delta = result.delta
        delta.meta = unit.delta_meta(model, self._base_hash, dict(delta.meta or {}))
        self._set_phase(unit, "committing")
        path = cfg.deltas_dir / unit.delta_name(history_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        sha = save_delta(delta, path)
        rel = path.relative_to(cfg.root).as_posix() if path.is_relative_to(cfg.root) else str(path)
        try:
            undo = unit.insert(model, result)
        except BaseException:
            _discard(path)
            raise
        try:
            fields = unit.edit_fields(model, result)
            first = unit.jobs[0]
            with transaction(db):
                self.lease.verify(db)  # the fence: this worker still holds the lease that claimed the jobs
                if get_history(db, history_id).head_seq != built_head:
                    raise _HeadMoved()
                edit = record_edit(  # takes the next seq and moves the head to it
                    db, history_id=history_id, job_id=first.id, status="applied", delta_path=rel,
                    delta_sha256=sha, weights_hash=model_weights_hash(model), device=str(model.device),
                    kind=unit.kind, lease_generation=self.lease.fence.generation,
                    method=first.method, method_hparams=first.method_hparams, **fields,
                )
                for job in unit.jobs:
                    finish_job(db, job.id, "done", edit_id=edit.id, **self.lease.owner)
                    attach_steps(db, job.id, job.attempts, edit.id)
                unit.record_rows(db, edit, result)
                add_artifact(db, "edit", edit.id, "delta", rel, sha256=sha, bytes=path.stat().st_size)
                log_event(db, "worker", unit.summary_line(edit, result), job_id=first.id)
        except BaseException:
            undo()
            _discard(path)
            raise
        self._model_key = (history_id, edit.seq)
        return edit


def _discard(path: Path) -> None:
    """Remove a delta file no edit refers to (the commit did not happen)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:  # left for `refact doctor` to list, and for the next worker under the lease
        pass
