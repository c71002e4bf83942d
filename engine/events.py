"""Messages the engine emits while it works (plain dataclasses, no UI dependency)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable


@dataclass(frozen=True)
class StepEvent:
    """One evaluated iteration of the v* optimization (step 0 is evaluated with delta = 0)."""

    step: int
    loss: float
    nll: float
    wd: float
    p_target: float
    delta_norm: float
    elapsed: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Progress:
    """Coarse progress of a long task (covariance collection, evaluation, ...)."""

    task: str
    done: int
    total: int
    detail: str = ""


StepCallback = Callable[[StepEvent], None]
ProgressCallback = Callable[[Progress], None]
# Polled between optimization steps; returning True stops the edit with EditCancelled.
StopCheck = Callable[[], bool]
