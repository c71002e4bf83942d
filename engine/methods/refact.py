"""ReFACT behind the method interface: a wrapper over ``engine.refact.compute_edit``."""

from __future__ import annotations

import time
from typing import Any, Mapping

import torch

from engine.hparams import ReFACTHParams
from engine.methods.base import EditMethod, MethodResult
from engine.request import EditRequest


class ReFACTMethod(EditMethod):
    name = "refact"
    component = "text_encoder"

    def default_hparams(self, model: Any = None) -> ReFACTHParams:
        """The paper's defaults; on encoders with fewer than 8 layers, the middle layer."""
        h = ReFACTHParams()
        n = getattr(getattr(model, "adapter", None), "num_layers", None)
        if n is not None and h.layer >= n:
            h = h.with_overrides(layer=n // 2)
        return h

    def hparams_from_dict(self, data: Mapping[str, Any] | None, model: Any = None) -> ReFACTHParams:
        return ReFACTHParams.from_dict({**self.default_hparams(model).to_dict(), **dict(data or {})})

    def target_modules(self, model: Any, hparams: ReFACTHParams) -> dict[str, torch.nn.Module]:
        return {f"text_encoder:{k}": v for k, v in model.fc2_modules().items()}

    def compute(self, model: Any, request: EditRequest, hparams: ReFACTHParams, **kwargs: Any) -> MethodResult:
        """``compute_edit`` (kwargs pass through: stats, corpus, n_samples, on_step, should_stop, ...)."""
        from engine.refact import compute_edit

        t0 = time.perf_counter()
        res = compute_edit(model, request, hparams, **kwargs)
        res.delta.meta.setdefault("method", self.name)
        return MethodResult(res.delta, self.name, time.perf_counter() - t0, p_target=float(res.p_target),
                            steps_run=int(res.steps_run), early_stopped=bool(res.early_stopped), detail=res,
                            numbers={"delta_norm": float(res.delta_norm), "division_factor": float(res.division_factor)})
