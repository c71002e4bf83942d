"""The states a stored row can be in. StrEnum: members are the strings stored in SQLite, so they compare
equal to those strings, bind as SQL parameters and serialise to JSON unchanged."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """A queued job's life: queued -> running -> done | failed | cancelled (requeue: back to queued)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_JOB_STATES


FINAL_JOB_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


class JobPhase(StrEnum):
    """What a running job is doing; a worker that dies in a charged phase counts against the job."""

    CLAIMED = "claimed"
    LOADING = "loading"
    OPTIMIZING = "optimizing"
    COMMITTING = "committing"

    @property
    def charged(self) -> bool:
        return self in CHARGED_PHASES


CHARGED_PHASES = frozenset({JobPhase.OPTIMIZING, JobPhase.COMMITTING})


class JobKind(StrEnum):
    EDIT = "edit"
    EVAL = "eval"


class EditStatus(StrEnum):
    """applied: part of the model up to the history head; rolled_back: past the head; failed: never applied."""

    APPLIED = "applied"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class EditKind(StrEnum):
    """edit: one request; batch: N requests in one delta (see store.batches)."""

    EDIT = "edit"
    BATCH = "batch"


__all__ = [
    "CHARGED_PHASES", "FINAL_JOB_STATES", "EditKind", "EditStatus", "JobKind", "JobPhase", "JobState",
]
