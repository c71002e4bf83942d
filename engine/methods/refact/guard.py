"""The batch guard: a batch edit is kept only when it delivers what its requests were solved for.

Each request is judged on the scale of its own value: its residual rho = ||W'k_e - v*|| / ||v*||
after insertion next to its miss m = ||W k_e - v*|| / ||v*|| before (for spread: the residual
stream after the last edited layer against its target). A request passes when

    rho <= max(bound * m, bound * max(median, mean)(m over the batch), ABS_TOL)

``bound`` is the share of its miss the insertion mode may leave (``residual_bound``), never more
than MAX_KEEP: a huge --lambda, whose solve barely moves anything, is refused rather than kept as an
edit that delivers nothing. The floor,
that share of the batch's typical miss, keeps the judgement meaningful for a request whose target
already holds (m ~ 0): a ratio to ~0 says nothing, while what it keeps against what the batch had
to move does. The mean joins the median for a batch whose requests mostly hold already (median ~0):
the few that had to move still set the scale. Rank-one batches are held to the default joint bound.

The edit as a whole must change some weight and bring some request closer to its target; an
update that is numerically zero (e.g. an enormous --lambda) is refused, never committed.
Refusals raise BatchRefusedError, so the jobs stay retryable.
"""

from __future__ import annotations

import math
import statistics
from typing import Protocol, Sequence

from engine.errors import BatchRefusedError

ABS_TOL = 1e-4  # residuals below this share of ||v*|| are rounding, whatever the miss
PROGRESS_TOL = 1e-6  # a request "ends closer" only by more than this share of ||v*||
MAX_KEEP = 0.9  # whatever the bound, a request must close at least a tenth of its miss


class Judged(Protocol):
    """What the guard reads of one request after insertion (RequestOutcome)."""

    residual: float
    before: float


def limits(outcomes: Sequence[Judged], bound: float) -> list[float]:
    """The largest residual each request may keep."""
    bound = min(bound, MAX_KEEP)
    misses = [o.before for o in outcomes]
    floor = max(bound * max(statistics.median(misses), statistics.fmean(misses)), ABS_TOL)
    return [max(bound * o.before, floor) for o in outcomes]


def check_batch(outcomes: Sequence[Judged], bound: float, mode: str, changed: bool) -> None:
    """BatchRefusedError unless the update changes a weight, brings a request closer to its target
    and leaves every request within its limit."""
    if not changed:
        raise BatchRefusedError(
            f"the {mode} update of this batch is numerically zero (no weight changes); lower --lambda or edit "
            "the requests one at a time; the model was not changed")
    if not any(o.before - o.residual > PROGRESS_TOL for o in outcomes):
        raise BatchRefusedError(
            f"no request of this {mode} batch ends closer to its target than before; lower --lambda or split "
            "the batch; the model was not changed")
    for i, (o, limit) in enumerate(zip(outcomes, limits(outcomes, bound)), 1):
        if not math.isfinite(o.residual) or o.residual > limit:
            fix = "use --insert joint or split the batch" if mode == "rank-one" else "lower --lambda or split the batch"
            raise BatchRefusedError(
                f"request {i} of the batch keeps a residual of {o.residual:.3f} of its value after the {mode} insertion "
                f"(its miss before: {o.before:.3f}; limit {limit:.3f}): its keys conflict with the batch's; {fix}; "
                "the model was not changed")
