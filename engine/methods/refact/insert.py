"""The closed-form rank-one insertion: r = (v* - v_e) / (k_e . u), W += outer(r, u), then verify."""

from __future__ import annotations

import math

import torch

from engine.adapters.base import EncoderAdapter
from engine.delta import EditDelta, WeightSnapshot
from engine.errors import InsertionRefusedError

VERIFY_RTOL = {torch.float32: 1e-4, torch.float64: 1e-8}
VERIFY_RTOL_LOW_PRECISION = 1e-2
ZERO_UPDATE = ("the edit's update is numerically zero (no weight changes): v* equals the current value, so the "
               "target already holds; raise prob_threshold or leave the request out; the model was not changed")


def right_vector(
    v_star: torch.Tensor, v_e: torch.Tensor, k_e: torch.Tensor, u: torch.Tensor, min_division: float
) -> tuple[torch.Tensor, float]:
    """(r as float32 CPU, division factor k_e . u); InsertionRefusedError if ill-conditioned or non-finite."""
    v_star, v_e, k_e, u = (t.detach().to("cpu", torch.float32).reshape(-1) for t in (v_star, v_e, k_e, u))
    division = float(k_e @ u)
    if not math.isfinite(division) or not all(torch.isfinite(t).all() for t in (v_star, v_e, k_e, u)):
        raise InsertionRefusedError("the edit produced NaN or infinite values; lower the learning rate and retry")
    if abs(division) < min_division:
        raise InsertionRefusedError(
            f"|k_e . u| = {abs(division):.3g} is below min_division {min_division:g}, so r would blow up; "
            "try another layer or a larger ridge"
        )
    r = (v_star - v_e) / division
    if not torch.isfinite(r).all():
        raise InsertionRefusedError("r is not finite; lower the learning rate or raise min_division and retry")
    return r, division


@torch.no_grad()
def check_inserted(linear: torch.nn.Module, k_e: torch.Tensor, v_star: torch.Tensor) -> float:
    """The relative error ||W k_e - v*|| / ||v*|| of an inserted edit; InsertionRefusedError past the
    dtype's tolerance (the caller restores W)."""
    w = linear.weight
    got = linear(k_e.to(w.device, w.dtype).reshape(1, -1)).reshape(-1).float().cpu()
    want = v_star.detach().float().cpu().reshape(-1)
    err = float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want).clamp_min(1e-12))
    tol = VERIFY_RTOL.get(w.dtype, VERIFY_RTOL_LOW_PRECISION)
    if not math.isfinite(err) or err > tol:
        raise InsertionRefusedError(
            f"after the update W k_e misses v* by {err:.2e} (relative, limit {tol:g}); the model was restored"
        )
    return err


@torch.no_grad()
def insert(adapter: EncoderAdapter, delta: EditDelta, k_e: torch.Tensor, v_star: torch.Tensor) -> float:
    """Apply ``delta`` and check fc2(k_e) == v*; on failure restore W bit-exactly and refuse.

    Returns the relative error ||fc2(k_e) - v*|| / ||v*||.
    """
    linear = adapter.fc2(delta.layer)
    if adapter.fc2_name(delta.layer) != delta.module:
        raise InsertionRefusedError(f"delta is for {delta.module!r}, not layer {delta.layer}'s fc2; recompute the edit")
    snapshot = WeightSnapshot([linear])
    delta.apply(adapter)
    try:
        snapshot.require_changed(ZERO_UPDATE)
        return check_inserted(linear, k_e, v_star)
    except BaseException:
        snapshot.restore()
        raise
