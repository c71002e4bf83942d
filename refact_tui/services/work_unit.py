"""What the worker claims and commits as one edit: a single job, or a batch of jobs
(``services.batch_worker.JobBatch``). The worker runs every unit through one outcome ladder and
one fenced commit (services.worker); a unit says only what differs: how its edit is computed and
inserted, what the edit row and its side rows record, and what a refusal does to its jobs.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Callable, Protocol

import sqlite_utils

from engine.covariance import SecondMomentStore
from engine.errors import InsertionRefusedError
from engine.events import StopCheck
from refact_tui.services.convergence import applied_label
from refact_tui.services.methods import insert_outcome
from refact_tui.services.worker_lease import LeaseKeeper
from refact_tui.services.worker_records import delta_meta, slot_rows
from refact_tui.services.worker_types import BatchSettings, JobFinished, JobStarted, WorkerConfig, WorkerEvent
from store.edit_slots import record_edit_slots
from store.records import JobRow
from store.states import EditKind


class UnitHost(Protocol):
    """What a unit may use of the worker that runs it (the worker passes itself)."""

    config: WorkerConfig
    lease: LeaseKeeper
    batch: BatchSettings | None
    after_edit_hook: Callable[..., None] | None

    @property
    def db(self) -> sqlite_utils.Database: ...

    @property
    def model_key(self) -> tuple[int, int] | None: ...

    def emit(self, event: WorkerEvent) -> None: ...

    def moment_store(self) -> SecondMomentStore: ...

    def stop_check(self, job_ids: list[int]) -> StopCheck: ...

    def compute_single(self, model, job: JobRow): ...

    def fail_job(self, job: JobRow, reason: str, summary, exc: BaseException | None = None) -> None: ...

    def requeue_refused(self, unit: "WorkUnit", reason: str, summary) -> None: ...


class WorkUnit(Protocol):
    """One claim of the worker: its jobs (in queue order) and what is particular to it."""

    kind: EditKind
    jobs: list[JobRow]

    @property
    def ids(self) -> list[int]: ...

    def started(self) -> WorkerEvent: ...

    def compute(self, worker: UnitHost, model): ...

    def insert(self, model, result) -> Callable[[], None]: ...

    def delta_name(self, history_id: int) -> str: ...

    def delta_meta(self, model, base_hash: str, meta: dict) -> dict[str, str]: ...

    def edit_fields(self, model, result) -> dict: ...

    def record_rows(self, db, edit, result) -> None: ...

    def summary_line(self, edit, result) -> str: ...

    def finished(self, edit, result, seconds: float) -> WorkerEvent: ...

    def refuse(self, worker: UnitHost, reason: str, summary, exc: BaseException | None) -> None: ...

    def after_edit(self, worker: UnitHost, model, edit) -> None: ...


@dataclass
class SingleJob:
    """One job, one edit (ReFACT over the slots its hyperparameters plan, or a TIME / UCE edit)."""

    job: JobRow
    kind: EditKind = EditKind.EDIT

    @property
    def jobs(self) -> list[JobRow]:
        return [self.job]

    @property
    def ids(self) -> list[int]:
        return [self.job.id]

    @property
    def history_id(self) -> int:
        return self.job.history_id

    def started(self) -> WorkerEvent:
        j = self.job
        return JobStarted(j.id, j.history_id, j.attempts, j.request.prompt, j.request.source, j.request.target,
                          j.hparams.max_steps, j.hparams.layer)

    def compute(self, worker: UnitHost, model):
        result = worker.compute_single(model, self.job)
        if not result.delta.is_finite():
            raise InsertionRefusedError("the edit produced non-finite values (NaN/inf); model left untouched; "
                                        "try a smaller --lr or a larger --ridge")
        if not math.isfinite(float(result.p_target)):
            raise InsertionRefusedError("P(target) is not finite; model left untouched; try a smaller --lr")
        return result

    def insert(self, model, result) -> Callable[[], None]:
        # ReFACT checks W k_e == v* (restores W and raises InsertionRefusedError if not)
        return insert_outcome(model, result)

    def delta_name(self, history_id: int) -> str:
        j = self.job
        return f"h{history_id:04d}-job{j.id:05d}-a{j.attempts}-{uuid.uuid4().hex[:6]}.safetensors"

    def delta_meta(self, model, base_hash: str, meta: dict) -> dict[str, str]:
        return {**meta, **delta_meta(model, self.job, base_hash)}

    def edit_fields(self, model, result) -> dict:
        return dict(request=self.job.request, hparams=self.job.hparams, layer=result.layer, module=result.module,
                    steps_run=int(result.steps_run), early_stopped=bool(result.early_stopped),
                    p_target=float(result.p_target), delta_norm=result.delta_norm,
                    division_factor=result.division_factor, timings=result.timings.as_dict())

    def record_rows(self, db, edit, result) -> None:
        if result.slots:  # an EditOutcome's per-slot rows
            record_edit_slots(db, edit.id, slot_rows(edit.id, result))

    def summary_line(self, edit, result) -> str:
        label = applied_label(float(result.p_target), int(result.steps_run), bool(result.early_stopped),
                              float(self.job.hparams.prob_threshold))
        return (f"edit {edit.seq} {label} (job {self.job.id}, P(target) {float(result.p_target):.3f}, "
                f"{int(result.steps_run)} steps)")

    def finished(self, edit, result, seconds: float) -> WorkerEvent:
        return JobFinished(self.job.id, edit.id, edit.seq, float(result.p_target), int(result.steps_run),
                           bool(result.early_stopped), seconds, float(self.job.hparams.prob_threshold))

    def refuse(self, worker: UnitHost, reason: str, summary, exc: BaseException | None) -> None:
        worker.fail_job(self.job, reason, summary, exc)

    def after_edit(self, worker: UnitHost, model, edit) -> None:
        if worker.after_edit_hook is not None:
            worker.after_edit_hook(model, edit)


__all__ = ["SingleJob", "WorkUnit"]
