"""What an edit method produced for 1..N requests: one delta, the rows to record, and its insertion.

Every method (ReFACT single, multi-slot or batch; TIME; UCE) returns an ``EditOutcome``. Callers (the
worker, ``refact bench``, ``refact layers``) read its rows and call ``insert``; none of them looks at
which method or path produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from engine.delta import EditDelta, WeightSnapshot
from engine.events import StepEvent
from engine.request import EditRequest


@dataclass
class EditTimings:
    stats_s: float = 0.0
    key_s: float = 0.0
    optimize_s: float = 0.0
    insert_s: float = 0.0
    total_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in vars(self).items()}


@dataclass
class SlotRow:
    """One edited matrix group of one encoder slot: where it went and how its optimisation ended."""

    slot: str
    layer: int
    module: str
    readout: str = ""
    p_target: float = 0.0
    steps_run: int = 0
    early_stopped: bool = False
    division_factor: float | None = None
    delta_norm: float | None = None
    verify_error: float | None = None   # ||W k_e - v*|| / ||v*||, set by ``insert``
    weights_hash: str = ""              # the slot's encoder hash once inserted


@dataclass
class RequestRow:
    """One request of the edit: its P(target) (its weakest slot's; TIME / UCE: the cross-attention
    proxy's) and, for a batch insertion, the share of its miss it keeps (``residual``)."""

    request: EditRequest
    p_target: float
    steps_run: int = 0
    early_stopped: bool = False
    residual: float | None = None


class Undo:
    """Puts back, bit-exactly, every matrix an ``EditOutcome.insert`` changed."""

    def __init__(self, snapshot: WeightSnapshot) -> None:
        self._snapshot = snapshot

    def __call__(self) -> None:
        self._snapshot.restore()


# Run with the delta applied; raises (InsertionRefusedError, one line) to refuse the edit.
Verify = Callable[[Any], None]


@dataclass
class EditOutcome:
    """One edit of 1..N requests. ``layer`` / ``module`` are what an edit row records (the first
    slot's, the batch's last layer, or a summary for a UNet method); ``steps`` are keyed by (slot,
    request position); ``detail`` is the method's own result, for inspection only."""

    method: str
    delta: EditDelta
    slots: list[SlotRow]
    requests: list[RequestRow]
    layer: int = -1
    module: str = ""
    timings: EditTimings = field(default_factory=EditTimings)
    steps: dict[tuple[str, int], list[StepEvent]] = field(default_factory=dict)
    division_factor: float | None = None
    delta_norm: float | None = None
    numbers: dict[str, float] = field(default_factory=dict)
    detail: Any = None
    verify: Verify | None = None

    @property
    def p_target(self) -> float:
        """Mean P(target) over the requests (one request: its own)."""
        return sum(r.p_target for r in self.requests) / max(len(self.requests), 1)

    @property
    def steps_run(self) -> int:
        return max((r.steps_run for r in self.requests), default=0)

    @property
    def early_stopped(self) -> bool:
        return bool(self.requests) and all(r.early_stopped for r in self.requests)

    def insert(self, model: Any) -> Undo:
        """Apply the delta to ``model`` and run the method's check; on any failure every touched
        matrix is restored bit-exactly and the error raised. Returns the undo."""
        snapshot = WeightSnapshot.of(model, self.delta)
        try:
            self.delta.apply(model)
            snapshot.require_changed(  # every method: an edit that changes no weight is never "applied"
                f"the {self.method} edit changes no weight (its update rounds to zero in "
                f"{self.module or 'its matrices'}); nothing was applied: pick another layer or stronger hyperparameters")
            if self.verify is not None:
                self.verify(model)
        except BaseException:
            snapshot.restore()
            raise
        return Undo(snapshot)
