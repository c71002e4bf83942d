"""Shared math of the closed-form cross-attention edits (TIME, UCE).

For every edited projection W (out x d, input = the text width d):

    W' = (lam W + s_e sum_i v*_i c_i^T + s_p sum_j (W c_j) c_j^T) (lam I + s_e sum_i c_i c_i^T + s_p sum_j c_j c_j^T)^-1

with v*_i = W g_i (g_i: the guide / aligned destination embedding of c_i). Writing C, G, P for the
column matrices and A for the bracket on the right, W' - W = s_e W (G - C) C^T A^-1, a product of an
(out x n) and an (n x d) factor. The (d x d) product M = (G - C) s_e C^T A^-1 is the same for every
projection, so one Cholesky solve and one SVD in float64 serve all matrices, each stored at M's
numerical rank (<= min(n, d)) as left = W U S, right = V.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Mapping, Sequence

import torch

from engine.delta import EditDelta, MatrixUpdate, applied
from engine.evaluation.cross_attn import cross_attn_scores, frozen_kv, request_texts
from engine.methods.base import EditContext, EditMethod, pipeline_component
from engine.methods.closed_form.projections import cross_attention_projections, text_width
from engine.methods.errors import MethodError
from engine.methods.outcome import EditOutcome, EditTimings, RequestRow
from engine.request import EditRequest


@dataclass
class ClosedFormUpdates:
    """What a closed-form method computed for one request: the matrix updates and its own numbers."""

    updates: list[MatrixUpdate]
    meta: dict[str, str] = field(default_factory=dict)
    numbers: dict[str, float] = field(default_factory=dict)


class CrossAttentionMethod(EditMethod):
    """A closed-form edit of the UNet's cross-attention projections (TIME, UCE): the shared plumbing.

    Subclasses set ``name``, ``label`` and ``hparams_type`` (a dataclass with ``from_dict``,
    ``to_dict``, ``with_to_k`` and ``lam``) and implement ``updates``. ``compute`` wraps them in an
    ``EditOutcome`` whose request row holds the cross-attention proxy's P(target) with the edit applied.
    """

    component = "unet"
    needs_pipeline = True
    label = ""
    hparams_type: Any = None

    def default_hparams(self, model: Any = None) -> Any:
        return self.hparams_type()

    def hparams_from_dict(self, data: Any, model: Any = None) -> Any:
        return self.hparams_type.from_dict(data)

    def check(self, model: Any) -> None:
        pipeline_component(model, self.component, self.label)

    def projections(self, model: Any, hparams: Any) -> dict[str, torch.nn.Linear]:
        """The cross-attention projections whose input is the text width (MethodError if none)."""
        unet = pipeline_component(model, self.component, self.label)
        return cross_attention_projections(unet, text_width(model), hparams.with_to_k)

    def target_modules(self, model: Any, hparams: Any) -> dict[str, torch.nn.Module]:
        return {f"{self.component}:{k}": v for k, v in self.projections(model, hparams).items()}

    def edit_projections(self, model: Any, request: EditRequest, hparams: Any) -> dict[str, torch.nn.Linear]:
        """Validate ``request`` and return the projections to edit; MethodError when there are none."""
        request.validate()
        mods = self.projections(model, hparams)
        if not mods:
            raise MethodError(f"{self.label} found no cross-attention projection whose input is the text width")
        return mods

    def updates(self, model: Any, request: EditRequest, hparams: Any) -> ClosedFormUpdates:
        raise NotImplementedError

    def compute(self, model: Any, requests: Sequence[EditRequest], hparams: Any,
                context: EditContext | None = None) -> EditOutcome:
        """The closed-form delta of one request (MethodError for several) and its proxy P(target)."""
        if len(requests) != 1:
            raise MethodError(f"{self.label} edits one request at a time, got {len(requests)}; queue them as jobs")
        request = requests[0]
        t0 = time.perf_counter()
        self.check(model)
        made = self.updates(model, request, hparams)
        meta = {
            "method": self.name,
            "request": json.dumps(request.to_dict(), ensure_ascii=False, sort_keys=True),
            "hparams": json.dumps(hparams.to_dict(), sort_keys=True),
            **made.meta,
        }
        delta = EditDelta(updates=made.updates, meta=meta)
        solve_s = time.perf_counter() - t0
        p_target = proxy_p_target(model, request, delta)
        norm = math.sqrt(sum(float(u.matrix().pow(2).sum()) for u in delta.updates))
        return EditOutcome(
            method=self.name, delta=delta, slots=[], requests=[RequestRow(request, p_target)],
            module=f"{self.component}: {len(delta.updates)} cross-attention matrices",
            timings=EditTimings(insert_s=solve_s, total_s=time.perf_counter() - t0),
            division_factor=1.0, delta_norm=norm,
            numbers={"n_matrices": float(len(delta.updates)), **made.numbers},
        )


def proxy_p_target(model: Any, request: EditRequest, delta: EditDelta) -> float:
    """The cross-attention proxy's P(target) of the edit prompt with ``delta`` applied (weights restored)."""
    frozen = frozen_kv(model)
    frozen.get(request_texts(request))
    with applied(model, delta):
        return float(cross_attn_scores(model, frozen, request).efficacy[0, 0, 1])


def hparams_from_dict(cls: Any, data: Mapping[str, Any] | None, label: str) -> Any:
    """``cls(**data)`` with each value checked against its field's default type (MethodError if wrong)."""
    data = dict(data or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise MethodError(f"unknown {label} hyperparameter(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name, value in data.items():
        default = known[name].default if known[name].default is not MISSING else known[name].default_factory()
        try:
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ValueError
            elif isinstance(default, float):
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
            elif isinstance(default, tuple):
                if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                    raise ValueError
                value = tuple(value)
        except (TypeError, ValueError):
            raise MethodError(f"{label} hyperparameter {name} must be a {type(default).__name__}, "
                              f"got {value!r}") from None
        data[name] = value
    return cls(**data)


def low_rank_updates(component: str, modules: dict[str, torch.nn.Linear], c: torch.Tensor, g: torch.Tensor,
                     keep: torch.Tensor | None, lam: float, edit_scale: float = 1.0,
                     keep_scale: float = 1.0) -> list[MatrixUpdate]:
    """The factors of W' - W for every module. c, g: [n, d] edit and guide embeddings; keep: [m, d]."""
    c = c.to(torch.float64)
    g = g.to(torch.float64)
    d = c.shape[1]
    a = lam * torch.eye(d, dtype=torch.float64) + edit_scale * c.T @ c
    if keep is not None and keep.numel():
        keep = keep.to(torch.float64)
        a = a + keep_scale * keep.T @ keep
    chol = torch.linalg.cholesky(a)
    right = edit_scale * torch.cholesky_solve(c.T, chol)          # (d, n) = s_e A^-1 C
    diff = (g - c).T                                              # (d, n) = G - C
    # Every projection gets W (G - C) right^T = W M with the same (d x d) M; store M at its numerical rank
    # (M = U S V^T, singular values above 1e-7 of the largest): left = W U S, right = V.
    u, sv, vh = torch.linalg.svd(diff @ right.T)
    keep = max(1, int((sv > sv[0] * 1e-7).sum())) if sv.numel() and float(sv[0]) > 0 else 1
    core, basis = u[:, :keep] * sv[:keep], vh[:keep].T            # (d, r), (d, r)
    updates = []
    for name, mod in modules.items():
        w = mod.weight.detach().to("cpu", torch.float64)
        updates.append(MatrixUpdate(component, name, (w @ core).float(), basis.float()))
    return updates
