"""What a command checks before it loads a model or claims a job: that the load dtype is known and runs
on the chosen device, and that the device has the free memory the memory plan (services/plan.py)
expects the command's activity to peak at. Each refusal is one line; nothing is loaded or written."""

from __future__ import annotations

from pathlib import Path

from engine.errors import EngineError
from refact_tui.services.plan import DTYPES, MemorySource, check_fits, plan_model


def check_dtype(dtype: str | None, device: str = "auto") -> str | None:
    """``dtype`` when it is one of float32 / float16 / bfloat16 that ``device`` can run (None passes);
    one-line EngineError otherwise (bf16 on a CUDA GPU without bf16 support)."""
    if dtype is None:
        return None
    if dtype not in DTYPES:
        raise EngineError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    from engine.models import load_dtype_kwargs, resolve_device  # torch: only once a dtype is given

    load_dtype_kwargs(dtype, resolve_device(device))
    return dtype


def preflight(ws, activity: str, device: str = "auto", dtype: str | None = None, *,
              model: str | Path | None = None, base_ids: set[int] | None = None, batch: int = 8,
              memory: MemorySource | None = None) -> str | None:
    """Check a command before it loads: ``dtype`` (its --dtype; None: the workspace default,
    services.working_model.load_dtype) and the device's free memory for ``activity`` (a key of the plan's
    peaks) on ``model``, else on the base models ``base_ids`` (default: the current history's). Returns
    the dtype the (last) model will load in."""
    from engine.models import resolve_device, resolve_source
    from refact_tui.services.working_model import load_dtype
    from store.base_models import get_base_model

    check_dtype(dtype, device)
    where = str(resolve_device(device))
    if model is not None:
        chosen = load_dtype(ws, None, dtype)
        check_fits(plan_model(resolve_source(str(model)), chosen, batch), activity, where, memory)
        return chosen
    chosen = None
    for base_id in sorted(base_ids or {ws.history().base_model_id}):
        base = get_base_model(ws.db, base_id)
        chosen = check_dtype(load_dtype(ws, base, dtype), device)  # a workspace default the device cannot run
        check_fits(plan_model(base.path, chosen, batch), activity, where, memory)
    return chosen
