"""`refact run --batch N`: up to N queued ReFACT jobs of one history edited together as ONE edit.

The batch is a unit of work of the worker (services.worker), with the same outcome ladder and the same
fenced commit as a single job, so the same crash contract: the N jobs are claimed in one transaction,
the delta file is written atomically before the single transaction that records the batch edit,
finishes all N jobs, attaches their step rows and per-request results and moves the head. A kill
before that commit leaves N running jobs that the next worker requeues (the death is charged to the
batch, and each job then runs alone); after it, N done jobs and one applied edit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from engine.events import StepEvent
from engine.methods.base import EditContext
from engine.methods.refact.batch import BatchInsertConfig
from engine.slots import check_slot_layer
from refact_tui.services.methods import compute_outcome, insert_outcome
from refact_tui.services.worker_records import delta_meta, touched_slots
from refact_tui.services.worker_types import BatchSettings
from store.batches import (
    BatchOutcome,
    batch_requests,
    batch_step_writer,
    check_same_base,
    claim_batch,
    record_batch_requests,
    requests_of_edits,
    set_request_metrics,
)
from store.edits import applied_edits
from store.events import log_event
from store.states import EditKind


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
    from engine.methods.refact.model_edit import plan_slots

    slots = getattr(model, "slots", None) or []
    if len(slots) <= 1:
        return True
    try:
        plan = plan_slots(model, hparams)
    except Exception:  # a bad selection: the single-job path reports it as that job's failure
        return False
    return [(s.name, layer) for s, layer in plan] == [(slots[0].name, hparams.layer)]


@dataclass
class JobBatch:
    """Up to N ReFACT jobs of one history, claimed together and committed as ONE edit (kind batch)."""

    jobs: list
    settings: BatchSettings
    token: str = ""
    kind: EditKind = EditKind.BATCH

    @property
    def ids(self) -> list[int]:
        return [j.id for j in self.jobs]

    @property
    def history_id(self) -> int:
        return self.jobs[0].history_id

    @property
    def config(self) -> BatchInsertConfig:
        return self.settings.insert_config()

    def started(self) -> BatchStarted:
        jobs, hp = self.jobs, self.jobs[0].hparams
        return BatchStarted(self.token, tuple(self.ids), tuple(j.request.prompt for j in jobs),
                            tuple(j.request.target for j in jobs), hp.max_steps, self.config.mode,
                            self.config.edit_layers(hp), hp.prob_threshold)

    def compute(self, worker, model):
        """Every request's v* (vectorised) and the batch's delta; weights unchanged."""
        jobs, config = self.jobs, self.config
        check_same_base(worker.db, jobs)
        writer = batch_step_writer(worker.config.db_path, jobs[0].id, _first_slot(model))

        def on_step(_slot: str, index: int, ev: StepEvent) -> None:
            writer.add_for(jobs[index].id, jobs[index].attempts, ev)
            worker.emit(BatchStep(jobs[index].id, index, ev))

        hp = jobs[0].hparams
        context = EditContext(
            second_moments=worker.moment_store(), corpus=worker.config.stats_corpus,
            n_samples=worker.config.stats_samples, on_step=on_step, should_stop=worker.stop_check(self.ids),
            preserve=self._earlier_requests(worker, model, hp, config), insertion=config,
            batch_size=self.settings.chunk,
        )
        try:
            return compute_outcome(model, [j.request for j in jobs], hp, context)
        finally:
            writer.close()

    def _earlier_requests(self, worker, model, hp, config: BatchInsertConfig) -> list:
        """Requests of the applied edits at the head (a batch counts with all its requests) on the
        edited layers, for protection (``preserve`` > 0 or the null-space projection)."""
        if hp.preserve <= 0 and not config.null_space:
            return []
        history_id, head = worker.model_key
        first = _first_slot(model)
        wanted = {(first, layer) for layer in config.edit_layers(hp)}
        applied = applied_edits(worker.db, history_id, head)
        touched = touched_slots(worker.db, applied, first)
        return requests_of_edits(worker.db, [e for e in applied if touched[e.id] & wanted])

    def insert(self, model, result):
        return insert_outcome(model, result)

    def delta_name(self, history_id: int) -> str:
        return f"h{history_id:04d}-batch-{self.token}-job{self.jobs[0].id:05d}.safetensors"

    def delta_meta(self, model, base_hash: str, meta: dict) -> dict[str, str]:
        out = {**meta, **delta_meta(model, self.jobs[0], base_hash), "job_ids": json.dumps(self.ids),
               "batch_token": self.token}
        out.pop("request", None)  # N requests: they are the batch_requests rows
        return out

    def _outcomes(self, result) -> list[BatchOutcome]:
        return [BatchOutcome(j.id, j.request, o.p_target, o.steps_run, o.early_stopped, o.residual)
                for j, o in zip(self.jobs, result.requests)]

    def edit_fields(self, model, result) -> dict:
        n, top = len(self.jobs), result.layer
        return dict(
            request=dataclasses.replace(self.jobs[0].request, name=f"batch of {n} ({_mode(result)})"),
            hparams=self.jobs[0].hparams.with_overrides(layer=top), layer=top, module=result.module,
            steps_run=result.steps_run, early_stopped=result.early_stopped, p_target=result.p_target,
            delta_norm=None, division_factor=None, timings=result.timings.as_dict(),
        )

    def record_rows(self, db, edit, result) -> None:
        record_batch_requests(db, edit.id, self._outcomes(result))

    def summary_line(self, edit, result) -> str:
        worst = max((o.residual for o in result.requests), default=0.0)
        return (f"batch edit {edit.seq} applied ({len(self.jobs)} jobs, {_mode(result)}, mean P(target) "
                f"{edit.p_target:.3f}, worst residual {worst:.2e})")

    def finished(self, edit, result, seconds: float) -> BatchFinished:
        return BatchFinished(edit.id, edit.seq, tuple(self.ids), tuple(o.p_target for o in result.requests),
                             tuple(o.residual for o in result.requests), seconds)

    def refuse(self, worker, reason: str, summary, exc) -> None:
        """A batch of one fails as its single edit would; a larger batch's refusal is the batch's, not its
        jobs': they go back to the queue with the reason, each to run alone next (store.jobs.runs_alone)."""
        reason = " ".join(reason.split())
        if len(self.jobs) == 1:
            worker.fail_job(self.jobs[0], reason, summary, exc)
            return
        worker.requeue_refused(self, f"its batch of {len(self.jobs)} was refused ({reason}); it runs alone next",
                               summary)

    def after_edit(self, worker, model, edit) -> None:
        if worker.after_edit_hook is not None:
            record_batch_text_metrics(worker.db, model, edit)


def _first_slot(model) -> str:
    """The encoder slot a batch edits: the model's first (a bare text encoder is ``text_encoder``)."""
    slots = getattr(model, "slots", None)
    return slots[0].name if slots else "text_encoder"


def _mode(outcome) -> str:
    """The insertion mode a batch outcome used (rank-one, joint, sequential or spread), with its rounds
    when it solved more than one."""
    meta = outcome.delta.meta
    rounds = int(meta.get("rounds", "1"))
    return meta.get("insert_mode", "rank-one") + (f", {rounds} rounds" if rounds > 1 else "")


def claim_batch_unit(worker, model, nxt, limit: int | None):
    """Claim the batch that starts at the next queued job ``nxt`` (its model loaded); False when that
    job runs alone (another method, or more slots than a batch edits), None when nothing was claimed.
    HParamsError, nothing claimed, when a --layers layer cannot reach the model's readout."""
    settings = worker.batch
    if nxt.method != "refact":
        return False  # closed-form methods (TIME, UCE) take seconds each and have no shared v*: one at a time
    if not edits_first_slot_only(model, nxt.hparams):
        # a batch edits one encoder slot (the first); a request for more slots (or another one) runs
        # alone, so that every slot it asks for is edited
        log_event(worker.db, "worker", f"job {nxt.id} edits more than {model.slots[0].name} at layer "
                                       f"{nxt.hparams.layer}: it runs alone (a batch edits that slot only)")
        return False
    for layer in settings.layers:  # the single edit's readout-aware range, on the loaded model
        check_slot_layer(model.adapter, layer, _first_slot(model))
    size = settings.size if limit is None else min(settings.size, limit)
    jobs = claim_batch(worker.db, worker.config.worker_id, size, fence=worker.lease.fence)
    if not jobs:
        return None
    return JobBatch(jobs=jobs, settings=settings, token=jobs[0].batch_token or "")


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

__all__ = ["BatchStarted", "BatchStep", "BatchFinished", "JobBatch",
           "claim_batch_unit", "record_batch_text_metrics"]
