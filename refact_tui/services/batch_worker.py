"""The batch worker: up to N queued jobs of the current history edited together as ONE edit.

Same crash contract as the sequential worker (services.worker): the N jobs are claimed in one
transaction, the delta file is written atomically before the single transaction that records the
batch edit, finishes all N jobs, attaches their step rows and per-request results and moves the
head. A kill before that commit leaves N running jobs that the next worker requeues; after it,
N done jobs and one applied edit. Nothing in between exists.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field

import torch

from engine.batch_insert import DEFAULT_LAMBDA, MODES, BatchInsertConfig, compute_batch
from engine.errors import EditCancelled, EngineError
from engine.events import StepEvent
from engine.hparams import HParamsError
from engine.request import RequestError
from refact_tui.services.methods import method_of
from refact_tui.services.state import model_weights_hash
from refact_tui.services.worker import JobFailed, Worker, WorkerNotice, WorkerSummary, _delta_meta, _HeadMoved
from store.artifacts import add_artifact
from store.batches import BatchOutcome, batch_requests, batch_step_writer, check_same_base, claim_batch, \
    record_batch_requests, requests_of_edits, set_request_metrics
from store.db import transaction
from store.edits import applied_edits, record_edit
from store.events import log_event
from store.histories import get_history
from store.jobs import finish_job, is_cancel_requested, peek_next, requeue_job, set_phase
from store.leases import LeaseLostError, check_lease
from store.steps import attach_steps


@dataclass(frozen=True)
class BatchSettings:
    """`refact run --batch N [--insert MODE] [--layers ...] [--lambda X] [--null-space]`."""

    size: int
    insert: str = "rank-one"
    layers: tuple[int, ...] = ()
    lam: float = DEFAULT_LAMBDA
    null_space: bool = False
    chunk: int | None = None  # requests per padded batch (memory cap); None = all N at once

    def validate(self) -> None:
        if self.size < 1:
            raise HParamsError(f"--batch must be >= 1, got {self.size}; pass the number of jobs to edit together")
        if self.insert not in MODES:
            raise HParamsError(f"--insert must be one of {', '.join(MODES)}, got {self.insert!r}")
        if self.layers and self.insert != "spread":
            raise HParamsError("--layers applies to --insert spread only; other modes edit the jobs' own layer")
        if self.chunk is not None and self.chunk < 1:
            raise HParamsError(f"the batch chunk must be >= 1, got {self.chunk}")

    def insert_config(self) -> BatchInsertConfig:
        return BatchInsertConfig(mode=self.insert, layers=tuple(self.layers), lam=self.lam, null_space=self.null_space)


@dataclass(frozen=True)
class BatchStarted:
    """A batch of jobs was claimed; its v* optimisation starts."""

    token: str
    job_ids: tuple[int, ...]
    prompts: tuple[str, ...]
    targets: tuple[str, ...]
    max_steps: int
    mode: str
    layers: tuple[int, ...]
    threshold: float = 0.99  # P(target) above which a request has converged


@dataclass(frozen=True)
class BatchStep:
    """One evaluated step of one request of the running batch."""

    job_id: int
    index: int
    event: StepEvent


@dataclass(frozen=True)
class BatchFinished:
    """The batch is recorded as one edit and applied."""

    edit_id: int
    seq: int
    job_ids: tuple[int, ...]
    p_targets: tuple[float, ...]
    residuals: tuple[float, ...]
    seconds: float


def edits_first_slot_only(model, hparams) -> bool:
    """True when ``hparams`` plan an edit of the model's first encoder slot alone, at ``hparams.layer``
    (what a batch changes); a one-slot model always qualifies."""
    from engine.slot_edit import plan_slots

    slots = getattr(model, "slots", None) or []
    if len(slots) <= 1:
        return True
    try:
        plan = plan_slots(model, hparams)
    except Exception:  # a bad selection: the single-job path reports it as that job's failure
        return False
    return [(s.name, layer) for s, layer in plan] == [(slots[0].name, hparams.layer)]


@dataclass
class _Claimed:
    jobs: list
    token: str = ""
    ids: list[int] = field(default_factory=list)

    @property
    def id(self) -> int:  # Worker.run reports a lost lease with the job's id
        return self.jobs[0].id


class BatchWorker(Worker):
    """A Worker whose unit of work is a batch of up to ``settings.size`` jobs."""

    def __init__(self, config, load_model, settings: BatchSettings, **kwargs) -> None:
        settings.validate()
        super().__init__(config, load_model, **kwargs)
        self.settings = settings
        self._batch_ids: list[int] = []

    def running_job_ids(self) -> list[int]:
        return list(self._batch_ids) or super().running_job_ids()

    def _claim(self):
        nxt = peek_next(self._db)
        if nxt is None:
            return None
        if method_of(nxt.request) != "refact":
            # closed-form methods (TIME, UCE) take seconds each and have no shared v*: one at a time
            return super()._claim()
        if self._lease_lost.is_set():
            check_lease(self._db, self._fence)
        model = self._model_for(nxt.history_id)
        if not edits_first_slot_only(model, nxt.hparams):
            # a batch edits one encoder slot (the first); a request for more slots (or another one)
            # runs alone, so that every slot it asks for is edited
            first = model.slots[0].name
            log_event(self._db, "worker", f"job {nxt.id} edits more than {first} at layer {nxt.hparams.layer}: "
                                          "it runs alone (a batch edits that slot only)")
            return super()._claim()
        if self.settings.layers:
            BatchInsertConfig(mode="spread", layers=self.settings.layers).validate(model.adapter.num_layers)
        jobs = claim_batch(self._db, self.config.worker_id, self.settings.size, fence=self._fence)
        if not jobs:
            return None
        return _Claimed(jobs=jobs, token=jobs[0].batch_token or "", ids=[j.id for j in jobs])

    # ------------------------------------------------------------------ one batch

    def _requeue_all(self, batch: _Claimed) -> None:
        for job_id in batch.ids:
            requeue_job(self._db, job_id, worker_id=self.config.worker_id, fence=self._fence)

    def _fail_all(self, batch: _Claimed, reason: str, summary: WorkerSummary, exc: BaseException) -> None:
        for job in batch.jobs:
            self._fail(job, reason, summary, exc)

    def _run_job(self, batch: _Claimed, summary: WorkerSummary) -> None:  # type: ignore[override]
        if not isinstance(batch, _Claimed):  # a single non-ReFACT job claimed by Worker._claim
            self._batch_ids = []
            return super()._run_job(batch, summary)
        db, cfg = self._db, self.config
        own = dict(worker_id=cfg.worker_id, fence=self._fence)
        jobs = batch.jobs
        self._batch_ids = list(batch.ids)
        self._current_job = jobs[0].id
        self._cancelled = False
        started = time.perf_counter()
        config = self.settings.insert_config()
        hp = jobs[0].hparams
        layers = config.edit_layers(hp)
        try:
            self._emit(BatchStarted(batch.token, tuple(batch.ids), tuple(j.request.prompt for j in jobs),
                                    tuple(j.request.target for j in jobs), hp.max_steps, config.mode, layers,
                                    hp.prob_threshold))
            try:
                check_same_base(db, jobs)
                model = self._model_for(jobs[0].history_id)
            except LeaseLostError:
                raise
            except BaseException:
                self._requeue_all(batch)
                raise
            for job in jobs:
                set_phase(db, job.id, "optimizing", **own)
            try:
                result = self._compute_batch(model, batch, config)
            except EditCancelled:
                if self._lease_lost.is_set():
                    check_lease(db, self._fence)
                self._end_cancelled(batch, summary)
                return
            except LeaseLostError:
                raise
            except (EngineError, RequestError, HParamsError, ValueError, RuntimeError) as exc:
                self._fail_all(batch, str(exc) or type(exc).__name__, summary, exc)
                return
            except BaseException:
                self._requeue_all(batch)
                raise
            try:
                edit = self._commit_batch(model, batch, result)
            except _HeadMoved:
                self._requeue_all(batch)
                summary.requeued += len(jobs)
                for job_id in batch.ids:
                    self._emit(JobFailed(job_id, "history head moved while editing; requeued", requeued=True))
                return
            except LeaseLostError:
                raise
            except EngineError as exc:
                self._fail_all(batch, str(exc), summary, exc)
                return
            except BaseException:
                self._requeue_all(batch)
                raise
            summary.done += len(jobs)
            summary.edit_ids.append(edit.id)
            self._emit(BatchFinished(edit.id, edit.seq, tuple(batch.ids), tuple(o.p_target for o in result.outcomes),
                                     tuple(o.residual for o in result.outcomes), time.perf_counter() - started))
            if self._after_edit is not None:
                try:
                    record_batch_text_metrics(db, model, edit)
                except Exception as exc:  # metrics are a bonus; the batch itself is committed
                    log_event(db, "worker", f"text metrics for batch edit {edit.id} failed: {exc}", level="warning")
        finally:
            self._current_job = None
            self._batch_ids = []

    def _end_cancelled(self, batch: _Claimed, summary: WorkerSummary) -> None:
        """A stop requeues every job; a cancel of some jobs cancels those and requeues the rest."""
        own = dict(worker_id=self.config.worker_id, fence=self._fence)
        cancelled = [j for j in batch.ids if is_cancel_requested(self._db, j)] if not self._should_stop() else []
        for job_id in batch.ids:
            if job_id in cancelled:
                finish_job(self._db, job_id, "cancelled", error="cancelled while its batch ran", **own)
                summary.failures[job_id] = "cancelled"
                self._emit(JobFailed(job_id, "cancelled"))
            else:
                requeue_job(self._db, job_id, **own)
                summary.requeued += 1
                self._emit(JobFailed(job_id, "batch stopped; requeued", requeued=True))
        if not cancelled:
            summary.stopped = True
        log_event(self._db, "worker", f"batch {batch.token} stopped between steps; jobs requeued")

    def _compute_batch(self, model, batch: _Claimed, config: BatchInsertConfig):
        jobs = batch.jobs
        slots = getattr(model, "slots", None)  # a batch edits the first slot
        writer = batch_step_writer(self.config.db_path, jobs[0].id, slots[0].name if slots else "text_encoder")

        def on_step(index: int, ev: StepEvent) -> None:
            writer.add_for(jobs[index].id, jobs[index].attempts, ev)
            self._emit(BatchStep(jobs[index].id, index, ev))

        hp = jobs[0].hparams
        preserve = self._earlier_batch_requests(hp, config)
        stop_checks = [self._stop_check(j.id) for j in jobs[:1]]
        cancel_poll = _any_cancelled(self._db, batch.ids)
        try:
            return compute_batch(
                model, [j.request for j in jobs], hp, config, stats=self._stats_store(), preserve_requests=preserve,
                corpus=self.config.stats_corpus, n_samples=self.config.stats_samples, on_step=on_step,
                should_stop=lambda: stop_checks[0]() or cancel_poll(), batch=self.settings.chunk,
            )
        finally:
            writer.close()

    def _earlier_batch_requests(self, hp, config: BatchInsertConfig) -> list:
        """Requests of the applied edits at the head (a batch counts with all its requests) on the
        edited layers, for protection (``preserve`` > 0 or the null-space projection)."""
        if hp.preserve <= 0 and not config.null_space:
            return []
        from refact_tui.services.worker_records import touched_slots

        history_id, head = self._model_key
        slots = getattr(self._model, "slots", None)  # a batch edits the first slot
        first = slots[0].name if slots else "text_encoder"
        wanted = {(first, layer) for layer in config.edit_layers(hp)}
        applied = applied_edits(self._db, history_id, head)
        touched = touched_slots(self._db, applied, first)
        return requests_of_edits(self._db, [e for e in applied if touched[e.id] & wanted])

    def _commit_batch(self, model, batch: _Claimed, result):
        cfg = self.config
        jobs = batch.jobs
        own = dict(worker_id=cfg.worker_id, fence=self._fence)
        history_id, built_head = self._model_key
        delta = result.delta
        delta.meta = {**delta.meta, **_delta_meta(model, jobs[0], self._base_hash),
                      "job_ids": json.dumps(batch.ids), "batch_token": batch.token}
        delta.meta.pop("request", None)
        for job in jobs:
            set_phase(self._db, job.id, "committing", **own)
        path = cfg.deltas_dir / f"h{history_id:04d}-batch-{batch.token}-job{jobs[0].id:05d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._pending_delta = path
        sha = delta.save(path)
        rel = path.relative_to(cfg.root).as_posix() if path.is_relative_to(cfg.root) else str(path)
        linears = {u.module: model.adapter.model.get_submodule(u.module) for u in delta.updates}
        backup = {name: lin.weight.detach().clone() for name, lin in linears.items()}
        try:
            delta.apply(model)
        except BaseException:
            self._drop_pending_delta()
            raise
        outcomes = [BatchOutcome(j.id, j.request, o.p_target, o.steps_run, o.early_stopped, o.residual)
                    for j, o in zip(jobs, result.outcomes)]
        n = len(jobs)
        top = result.layers[-1]
        label = dataclasses.replace(jobs[0].request, name=f"batch of {n} ({result.mode})")
        try:
            weights_hash = model_weights_hash(model)
            t = result.values.timings
            timings = {"stats_s": t.stats_s, "key_s": t.key_s, "optimize_s": t.optimize_s,
                       "insert_s": result.solve_s, "total_s": t.total_s + result.solve_s}
            with transaction(self._db):
                check_lease(self._db, self._fence)
                if get_history(self._db, history_id).head_seq != built_head:
                    raise _HeadMoved()
                edit = record_edit(
                    self._db, history_id=history_id, job_id=jobs[0].id, request=label,
                    hparams=jobs[0].hparams.with_overrides(layer=top), status="applied", layer=top,
                    module=model.adapter.fc2_name(top), delta_path=rel, delta_sha256=sha, weights_hash=weights_hash,
                    steps_run=max(o.steps_run for o in outcomes), early_stopped=all(o.early_stopped for o in outcomes),
                    p_target=sum(o.p_target for o in outcomes) / n, delta_norm=None, division_factor=None,
                    timings=timings, device=str(model.device),
                )
                self._db.execute("UPDATE edits SET kind = 'batch', lease_generation = ? WHERE id = ?",
                                 [self._fence.generation, edit.id])
                for job in jobs:
                    finish_job(self._db, job.id, "done", edit_id=edit.id, **own)
                    attach_steps(self._db, job.id, job.attempts, edit.id)
                record_batch_requests(self._db, edit.id, outcomes)
                add_artifact(self._db, "edit", edit.id, "delta", rel, sha256=sha, bytes=path.stat().st_size)
                worst = max((o.residual for o in outcomes), default=0.0)
                log_event(self._db, "worker",
                          f"batch edit {edit.seq} applied ({n} jobs, {result.mode}, mean P(target) "
                          f"{edit.p_target:.3f}, worst residual {worst:.2e})", job_id=jobs[0].id)
        except BaseException:
            with torch.no_grad():
                for name, lin in linears.items():
                    lin.weight.copy_(backup[name])
            self._drop_pending_delta()
            raise
        self._pending_delta = None
        self._model_key = (history_id, edit.seq)
        from store.edits import get_edit

        return get_edit(self._db, edit.id)


def _any_cancelled(db, job_ids: list[int]):
    """Poll (twice a second) whether any job of the batch was cancelled from the queue."""
    last, hit = [0.0], [False]

    def check() -> bool:
        t = time.monotonic()
        if not hit[0] and t - last[0] >= 0.5:
            last[0] = t
            try:
                hit[0] = any(is_cancel_requested(db, j) for j in job_ids)
            except Exception:
                pass
        return hit[0]

    return check


def record_batch_text_metrics(db, model, edit) -> dict[str, float]:
    """Text metrics of every request of a batch edit at its head (kept per request) and their means
    as the edit's metrics; returns the means."""
    from engine.evaluation.text_metrics import text_metrics
    from refact_tui.services.evaluation import frozen_features
    from store.metrics import finish_eval_run, record_metric, start_eval_run

    rows = batch_requests(db, edit.id)
    run = start_eval_run(db, edit.history_id, edit.seq, "text", {"trigger": "after_edit", "edit_id": edit.id,
                                                                  "batch": len(rows)})
    frozen = frozen_features(model)
    slots = list(getattr(model, "slots", None) or [])
    sums: dict[str, list[float]] = {}
    for r in rows:
        tm = text_metrics(model, frozen, r.request, similarity=edit.hparams.similarity,
                          temperature=edit.hparams.temperature)
        values = tm.values()
        set_request_metrics(db, edit.id, r.idx, values)
        for k, v in values.items():
            sums.setdefault(k, []).append(float(v))
    means = {}
    for name, vals in sums.items():
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
        record_metric(db, eval_run_id=run.id, edit_id=edit.id, space="text", name=name, value=mean, std=std,
                      n=len(vals), total=len(rows), final=True)
        if len(slots) > 1:  # a batch edits the first slot: its per-slot row (as single edits store)
            record_metric(db, eval_run_id=run.id, edit_id=edit.id, space="text", name=name, value=mean, std=std,
                          n=len(vals), total=len(rows), final=True, slot=slots[0].name)
        means[name] = mean
    finish_eval_run(db, run.id, "done")
    return means


__all__ = ["BatchSettings", "BatchWorker", "BatchStarted", "BatchStep", "BatchFinished", "WorkerNotice",
           "record_batch_text_metrics"]
