"""The queue worker: claims edit jobs from the workspace database, runs them, records the results.

Crash safety rests on one ordering: the delta file is written (atomically) before the single
transaction that records the edit, finishes the job, attaches its step rows and moves the history
head. A worker killed anywhere before that commit leaves a `running` job that the next worker
requeues (after recovering the stale lease), so every job yields exactly one applied edit.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
import traceback
import uuid
from pathlib import Path

from engine.errors import EditCancelled, EngineError, InsertionRefusedError
from engine.events import StepEvent, StopCheck
from engine.hparams import HParamsError
from engine.request import RequestError
from engine.covariance import SecondMomentStore
from engine.slot_edit import compute_model_edit
from store.artifacts import add_artifact
from store.edit_slots import record_edit_slots
from store.db import open_db, transaction
from store.edits import record_edit
from store.events import log_event
from store.histories import get_history
from store.jobs import finish_job, recover_orphans, requeue_job, set_phase
from store.leases import Fence, LeaseLostError, acquire_fence, check_lease, release_lease
from store.steps import StepWriter, attach_steps

from refact_tui.services.worker_lease import LEASE_NAME, LeaseKeeping
from refact_tui.services.worker_records import delta_meta, earlier_requests, slot_rows  # noqa: F401 (re-exported)

_delta_meta = delta_meta  # the name services.batch_worker imports


def compute_edit(slot, request, hparams, **kwargs):
    """One encoder slot's edit: ``engine.refact.compute_edit``, looked up when called (the worker's
    single seam for the per-slot computation; compute_model_edit runs it once per slot)."""
    import engine.refact

    return engine.refact.compute_edit(slot, request, hparams, **kwargs)


from refact_tui.services.worker_types import (  # noqa: E402,F401  (re-exported: the worker's public types)
    AfterEdit, EventCallback, JobFailed, JobFinished, JobStarted, ModelLoader, SlotStep, WorkerConfig, WorkerEvent,
    WorkerNotice, WorkerSummary,
)


class _HeadMoved(Exception):
    """The history head changed (rollback) while the edit was computed on the old state."""


class Worker(LeaseKeeping):
    """Runs queued edit jobs one after another on one in-memory working model."""

    def __init__(
        self,
        config: WorkerConfig,
        load_model: ModelLoader,
        *,
        on_event: EventCallback | None = None,
        should_stop: StopCheck | None = None,
        after_edit: AfterEdit | None = None,
    ) -> None:
        self.config = config
        self._load_model = load_model
        self._emit = on_event or (lambda ev: None)
        self._should_stop = should_stop or (lambda: False)
        self._after_edit = after_edit
        self._model = None
        self._model_key: tuple[int, int] | None = None  # (history_id, head_seq) of self._model
        self._base_hash = ""
        self._cancelled = False  # the running job was cancelled from the queue (not a worker stop)
        self._current_job: int | None = None
        self._stats = None
        self._db = None
        self._fence: Fence | None = None
        self._lease_lost = threading.Event()  # set by the heartbeat when the lease was taken over
        self._pending_delta: Path | None = None  # written but not yet committed

    # ------------------------------------------------------------------ main loop

    def run(self) -> WorkerSummary:
        """Take the lease, recover orphans, process jobs until the queue is empty / max / stop."""

        cfg = self.config
        summary = WorkerSummary()
        from engine.models import resolve_device

        resolve_device(cfg.device)  # a bad --device fails here, before any lease or job is touched
        self._db = db = open_db(cfg.db_path)
        host = socket.gethostname()
        try:
            self._fence = acquire_fence(db, LEASE_NAME, cfg.worker_id, os.getpid(), host,
                                        stale_after=cfg.lease_stale_after)
        except BaseException:
            db.close()
            self._db = None
            raise
        stop_beat = threading.Event()
        beat = threading.Thread(target=self._heartbeat_loop, args=(stop_beat,), daemon=True, name="refact-heartbeat")
        try:
            recovery = recover_orphans(db, max_crashes=cfg.max_attempts)
            summary.recovered_jobs = list(recovery.requeued)
            if summary.recovered_jobs:
                msg = f"requeued interrupted job(s) {summary.recovered_jobs} left by a stopped worker"
                log_event(db, "worker", msg, level="warning")
                self._emit(WorkerNotice(msg))
            self._remove_orphan_deltas(recovery.requeued + recovery.failed)
            for job_id in recovery.failed:
                msg = f"job {job_id} failed: the worker died during its optimization or commit {cfg.max_attempts} times"
                log_event(db, "worker", msg, level="error", job_id=job_id)
                summary.failed += 1
                summary.failures[job_id] = msg
                self._emit(JobFailed(job_id, msg))
            beat.start()
            processed = 0
            while cfg.max_jobs is None or processed < cfg.max_jobs:
                if self._should_stop():
                    summary.stopped = True
                    break
                try:
                    job = self._claim()
                except LeaseLostError as exc:
                    self._lost(summary, exc, None)
                    break
                if job is None:
                    if cfg.watch:
                        time.sleep(cfg.poll_interval)
                        continue
                    break
                processed += 1
                try:
                    self._run_job(job, summary)
                except LeaseLostError as exc:
                    self._lost(summary, exc, job.id)
                if summary.stopped:
                    break
        finally:
            stop_beat.set()
            if beat.is_alive():
                beat.join(timeout=5)
            try:
                release_lease(db, LEASE_NAME, cfg.worker_id)
            finally:
                db.close()
                self._db = None
        return summary

    # ------------------------------------------------------------------ one job

    def _run_job(self, job, summary: WorkerSummary) -> None:

        db = self._db
        cfg = self.config
        attempt = job.attempts
        self._current_job = job.id
        self._cancelled = False
        started = time.perf_counter()
        try:
            self._emit(JobStarted(job.id, job.history_id, attempt, job.request.prompt, job.request.source,
                                  job.request.target, job.hparams.max_steps, job.hparams.layer))
            own = dict(worker_id=cfg.worker_id, fence=self._fence)
            try:
                if self._model_key is None or self._model_key[0] != job.history_id:
                    set_phase(db, job.id, "loading", **own)
                model = self._model_for(job.history_id)
            except LeaseLostError:
                raise
            except BaseException:
                requeue_job(db, job.id, **own)  # never charged: the job did not run
                raise
            set_phase(db, job.id, "optimizing", **own)
            try:
                result = self._compute(model, job, attempt)
            except EditCancelled:
                if self._lease_lost.is_set():
                    check_lease(db, self._fence)  # raises LeaseLostError: write nothing, stop
                if self._cancelled:
                    finish_job(db, job.id, "cancelled", error="cancelled while running", **own)
                    log_event(db, "worker", f"job {job.id} cancelled between steps", job_id=job.id)
                    summary.failures[job.id] = "cancelled"
                    self._emit(JobFailed(job.id, "cancelled"))
                    return
                requeue_job(db, job.id, **own)  # a graceful stop is never charged
                log_event(db, "worker", f"job {job.id} stopped between steps and requeued", job_id=job.id)
                summary.requeued += 1
                summary.stopped = True
                self._emit(JobFailed(job.id, "stopped; requeued", requeued=True))
                return
            except (EngineError, RequestError, HParamsError, ValueError, RuntimeError) as exc:
                self._fail(job, str(exc) or type(exc).__name__, summary, exc)
                return
            except LeaseLostError:
                raise
            except BaseException:
                requeue_job(db, job.id, **own)
                raise
            try:
                edit = self._commit(model, job, attempt, result)
            except _HeadMoved:
                requeue_job(db, job.id, **own)
                summary.requeued += 1
                self._emit(JobFailed(job.id, "history head moved while editing; requeued", requeued=True))
                return
            except LeaseLostError:
                raise
            except (InsertionRefusedError, EngineError) as exc:
                self._fail(job, str(exc), summary, exc)
                return
            except BaseException:
                requeue_job(db, job.id, **own)
                raise
            summary.done += 1
            summary.edit_ids.append(edit.id)
            self._emit(JobFinished(job.id, edit.id, edit.seq, float(result.p_target), int(result.steps_run),
                                   bool(result.early_stopped), time.perf_counter() - started))
            if self._after_edit is not None:
                try:
                    self._after_edit(model, edit)
                except Exception as exc:  # metrics are a bonus; the edit itself is committed
                    log_event(db, "worker", f"text metrics for edit {edit.id} failed: {exc}", level="warning",
                              job_id=job.id)
        finally:
            self._current_job = None

    def _fail(self, job, reason: str, summary: WorkerSummary, exc: BaseException | None = None) -> None:

        reason = " ".join(reason.split())
        finish_job(self._db, job.id, "failed", error=reason, worker_id=self.config.worker_id, fence=self._fence)
        level = "error"
        log_event(self._db, "worker", f"job {job.id} failed: {reason}", level=level, job_id=job.id)
        if exc is not None and not isinstance(exc, (EngineError, RequestError, HParamsError)):
            tb = "".join(traceback.format_exception(exc)).strip()
            log_event(self._db, "worker", tb[-4000:], level="debug", job_id=job.id)
        summary.failed += 1
        summary.failures[job.id] = reason
        self._emit(JobFailed(job.id, reason))

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

    def _stats_store(self):

        if self._stats is None:  # one store per run: C stays in memory across jobs
            self._stats = SecondMomentStore(self.config.stats_dir)
        return self._stats

    def _compute(self, model, job, attempt: int):
        """Run the apply-less edit with batched step rows (never modifies weights)."""

        request, hparams = job.request, job.hparams  # compute_edit validates both before any work
        from refact_tui.services.methods import compute_method_edit, method_of

        if method_of(request) != "refact":  # TIME / UCE: closed form, no steps
            return compute_method_edit(model, request)
        writer = StepWriter(self.config.db_path, job.id, attempt)

        many = len(getattr(model, "slots", None) or ()) > 1

        def on_slot_step(slot: str, ev: StepEvent) -> None:
            writer.add(ev, slot)  # every slot's steps are step rows
            if many:
                self._emit(SlotStep(slot, ev))

        try:
            # one sub-edit per encoder slot (SD1: the one slot); the first slot's steps are also emitted
            result = compute_model_edit(model, request, hparams, stats=self._stats_store(),
                                        corpus=self.config.stats_corpus, n_samples=self.config.stats_samples,
                                        on_step=self._emit, on_slot_step=on_slot_step,
                                        should_stop=self._stop_check(job.id),
                                        preserve_requests=self._earlier_requests(model, hparams),
                                        compute=compute_edit, progress=self._emit)
        finally:
            writer.close()
        delta = result.delta
        if not delta.is_finite():
            raise InsertionRefusedError("the edit produced non-finite values (NaN/inf); model left untouched; "
                                        "try a smaller --lr or a larger --ridge")
        if not math.isfinite(float(result.p_target)):
            raise InsertionRefusedError("P(target) is not finite; model left untouched; try a smaller --lr")
        return result

    def _delta_path(self, job, attempt: int) -> Path:
        return self.config.deltas_dir / f"h{job.history_id:04d}-job{job.id:05d}-a{attempt}-{uuid.uuid4().hex[:6]}.safetensors"

    def _earlier_requests(self, model, hparams) -> dict[str, list]:
        """For --preserve: per slot, the requests of the earlier edits it protects (worker_records)."""
        return earlier_requests(self._db, model, hparams, *self._model_key)

    def _commit(self, model, job, attempt: int, result):
        """Save the delta, then record everything in one transaction, keeping memory == database."""

        cfg = self.config
        delta = result.delta
        history_id, built_head = self._model_key
        delta.meta = {**(delta.meta or {}), **delta_meta(model, job, self._base_hash)}
        set_phase(self._db, job.id, "committing", worker_id=cfg.worker_id, fence=self._fence)
        path = self._delta_path(job, attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._pending_delta = path
        sha = delta.save(path)
        rel = path.relative_to(cfg.root).as_posix() if path.is_relative_to(cfg.root) else str(path)


        from refact_tui.services.methods import edit_location, insert_result

        layer, module = edit_location(result)
        # applies the delta (ReFACT: checks W k_e == v*, restores W and raises InsertionRefusedError if not)
        try:
            undo = insert_result(model, result)
        except BaseException:
            self._drop_pending_delta()
            raise
        try:
            from refact_tui.services.state import model_weights_hash  # text encoders + edited UNet matrices

            weights_hash = model_weights_hash(model)
            t = result.timings
            timings = {k: float(getattr(t, k)) for k in ("stats_s", "key_s", "optimize_s", "insert_s", "total_s")
                       if hasattr(t, k)}
            with transaction(self._db):
                # the fence: this worker still holds the lease generation that claimed the job
                check_lease(self._db, self._fence)
                if get_history(self._db, history_id).head_seq != built_head:
                    raise _HeadMoved()
                # record_edit takes the next seq and moves the head to it
                edit = record_edit(
                    self._db, history_id=history_id, job_id=job.id, request=job.request, hparams=job.hparams,
                    status="applied", layer=layer, module=module, delta_path=rel, delta_sha256=sha,
                    weights_hash=weights_hash, steps_run=int(result.steps_run),
                    early_stopped=bool(result.early_stopped), p_target=float(result.p_target),
                    delta_norm=float(result.delta_norm), division_factor=float(result.division_factor),
                    timings=timings, device=str(model.device),
                )
                finish_job(self._db, job.id, "done", edit_id=edit.id, worker_id=cfg.worker_id, fence=self._fence)
                self._db.execute("UPDATE edits SET lease_generation = ? WHERE id = ?",
                                 [self._fence.generation, edit.id])
                attach_steps(self._db, job.id, attempt, edit.id)
                if hasattr(result, "edits"):  # per-slot results (engine.slot_edit.ModelEditResult)
                    record_edit_slots(self._db, edit.id, slot_rows(edit.id, result))
                add_artifact(self._db, "edit", edit.id, "delta", rel, sha256=sha, bytes=path.stat().st_size)
                log_event(self._db, "worker",
                          f"edit {edit.seq} applied (job {job.id}, P(target) {float(result.p_target):.3f}, "
                          f"{int(result.steps_run)} steps)", job_id=job.id)
        except BaseException:
            undo()
            self._drop_pending_delta()  # nothing refers to it: the edit did not commit
            raise
        self._pending_delta = None
        self._model_key = (history_id, edit.seq)
        return edit
