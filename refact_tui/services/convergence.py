"""Whether an applied edit reached its early-stop threshold, and the one wording every view uses.

An edit whose v* optimisation used its whole step budget below ``prob_threshold`` is still applied
(its delta is in the model), but it is not reported as a success: run, history, show, the events and
the TUI say "applied, budget used, P 0.14 < 0.99" and count it apart from the edits that converged.
Closed-form methods (no optimisation, no steps) always count as reached.
"""

from __future__ import annotations

from typing import Protocol

APPLIED = "applied"


class _Applied(Protocol):
    p_target: float | None
    steps_run: int
    early_stopped: bool


def budget_used(p_target: float | None, steps_run: int, early_stopped: bool, threshold: float) -> bool:
    """True when the optimisation ran out of steps with P(target) at or below ``threshold``."""
    return p_target is not None and steps_run > 0 and not early_stopped and p_target <= threshold


def applied_label(p_target: float | None, steps_run: int, early_stopped: bool, threshold: float) -> str:
    """"applied" or "applied, budget used, P 0.14 < 0.99"."""
    if not budget_used(p_target, steps_run, early_stopped, threshold):
        return APPLIED
    return f"{APPLIED}, budget used, P {p_target:.2f} < {threshold:.2f}"


def edit_budget_used(edit) -> bool:
    """An applied edit row whose optimisation used its step budget below its threshold."""
    status = str(getattr(edit.status, "value", edit.status))
    threshold = float(getattr(edit.hparams, "prob_threshold", 1.0))
    return status == APPLIED and budget_used(edit.p_target, int(edit.steps_run or 0), bool(edit.early_stopped),
                                             threshold)


def edit_label(edit) -> str:
    """The status of an edit row as views show it: ``applied_label`` for an applied edit (threshold
    from its hyperparameters), else its stored status (rolled_back, ...)."""
    status = str(getattr(edit.status, "value", edit.status))
    if status != APPLIED:
        return status
    threshold = float(getattr(edit.hparams, "prob_threshold", 1.0))
    return applied_label(edit.p_target, int(edit.steps_run or 0), bool(edit.early_stopped), threshold)


def count_line(applied: int, budget: int, failed: int) -> str:
    """"12 edit(s) applied; 0 failed", or with ``budget`` of the ``applied`` edits below their threshold
    "2 edit(s) applied: 1 reached its threshold, 1 used its step budget below it; 0 failed"."""
    head = f"{applied} edit(s) applied"
    if budget:
        head += f": {applied - budget} reached its threshold, {budget} used its step budget below it"
    return f"{head}; {failed} failed"
