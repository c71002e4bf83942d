"""The edit-method interface shared by the worker, the bench and the history.

A method computes an ``EditDelta`` for a request without touching the model (``compute``), checks
first that it can edit the model's family (``check``: a one-line ``MethodRefusedError`` otherwise)
and has its own frozen hyperparameter dataclass (``hparams_from_dict`` / ``default_hparams``).
``applied(model, delta)`` applies a delta for the duration of a block and puts the touched weights
back bit-exactly from a copy (never by subtracting).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch

from engine.delta import EditDelta, component_module
from engine.errors import EngineError
from engine.request import EditRequest

METHODS = ("refact", "time", "uce")


class MethodError(EngineError):
    """An unknown method or bad method hyperparameters."""


class MethodRefusedError(EngineError):
    """The method cannot edit this model (e.g. a UNet method on a pipeline without a UNet)."""


@dataclass
class MethodResult:
    """What one method produced for one request: the delta and a few numbers for reports."""

    delta: EditDelta
    method: str
    seconds: float
    p_target: float | None = None       # ReFACT's final P(target); None for closed-form methods
    steps_run: int = 0
    early_stopped: bool = False
    detail: Any = None                   # the method's own result object (ReFACT: EditResult)
    numbers: dict[str, float] = field(default_factory=dict)


class EditMethod:
    """Base class: subclasses set ``name`` and ``component`` and implement the methods below."""

    name: str = ""
    component: str = ""          # the pipeline component the deltas edit

    def default_hparams(self, model: Any) -> Any:
        raise NotImplementedError

    def hparams_from_dict(self, data: Mapping[str, Any] | None, model: Any = None) -> Any:
        raise NotImplementedError

    def check(self, model: Any) -> None:
        """Raise MethodRefusedError (one line) when the method cannot edit ``model``."""

    def compute(self, model: Any, request: EditRequest, hparams: Any, **kwargs: Any) -> MethodResult:
        """The delta for ``request``; never modifies weights."""
        raise NotImplementedError

    def target_modules(self, model: Any, hparams: Any) -> dict[str, torch.nn.Module]:
        """"component:module" -> the Linear modules this method may edit (hashed before every bench row)."""
        raise NotImplementedError

    def weights_hash(self, model: Any, hparams: Any) -> str:
        """sha256 over the weights this method edits (cheap: only those matrices)."""
        h = hashlib.sha256()
        for name, mod in sorted(self.target_modules(model, hparams).items()):
            w = mod.weight.detach().to("cpu").contiguous()
            h.update(name.encode())
            h.update(str(w.dtype).encode())
            h.update(w.numpy().tobytes() if w.dtype != torch.bfloat16 else w.float().numpy().tobytes())
        return h.hexdigest()


def get_method(name: str) -> EditMethod:
    """The method called ``name`` (refact, time or uce); MethodError for anything else."""
    key = (name or "").strip().lower()
    if key == "refact":
        from engine.methods.refact import ReFACTMethod

        return ReFACTMethod()
    if key == "time":
        from engine.methods.time import TimeMethod

        return TimeMethod()
    if key == "uce":
        from engine.methods.uce import UCEMethod

        return UCEMethod()
    raise MethodError(f"unknown edit method {name!r}; use one of {', '.join(METHODS)}")


class WeightSnapshot:
    """CPU copies of the weights a delta touches, restored in place bit-exactly."""

    def __init__(self, model: Any, delta: EditDelta) -> None:
        self._saved: list[tuple[torch.nn.Module, torch.Tensor]] = []
        seen: set[int] = set()
        for update in delta.updates:
            linear = update.linear(model)
            if id(linear) not in seen:
                seen.add(id(linear))
                self._saved.append((linear, linear.weight.detach().clone()))

    @torch.no_grad()
    def restore(self) -> None:
        for linear, weight in self._saved:
            linear.weight.copy_(weight)


@contextmanager
def applied(model: Any, delta: EditDelta) -> Iterator[None]:
    """Apply ``delta`` inside the block; afterwards the touched weights are bit-exactly the old ones."""
    snap = WeightSnapshot(model, delta)
    delta.apply(model)
    try:
        yield
    finally:
        snap.restore()


def pipeline_component(model: Any, component: str, method: str) -> torch.nn.Module:
    """``model.pipeline.<component>``, or MethodRefusedError naming what the model has instead."""
    pipe = getattr(model, "pipeline", None)
    if pipe is None:
        raise MethodRefusedError(
            f"{method} edits a diffusion pipeline's {component}; this model is a text encoder only "
            "(use --method refact or a pipeline folder)"
        )
    found = getattr(pipe, component, None)
    if not isinstance(found, torch.nn.Module):
        has = [n for n in ("unet", "transformer", "prior") if isinstance(getattr(pipe, n, None), torch.nn.Module)]
        where = f"it has a {has[0]}, not a {component}" if has else f"it has no {component}"
        raise MethodRefusedError(
            f"{method} edits a {component}'s cross-attention and cannot edit {type(pipe).__name__}: {where}; "
            "use --method refact"
        )
    return found


def module_of(model: Any, component: str, name: str) -> torch.nn.Module:
    return component_module(model, component).get_submodule(name)
