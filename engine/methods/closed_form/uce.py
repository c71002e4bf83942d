"""UCE (Gandikota et al. 2023): closed-form edit of every cross-attention to_k and to_v.

c = the final text-encoder output at the last content token (position mask.sum() - 2) of each edited
concept (the request's prompt), guided to v* = W c_guide with the guide concept the request's target;
optional preserved concepts keep W c_j:
W' = (lam W + s_e sum v* c^T + s_p sum (W c_j) c_j^T)(lam I + s_e sum c c^T + s_p sum c_j c_j^T)^-1, lam = 0.5.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch

from engine.methods.closed_form.common import (
    ClosedFormUpdates,
    CrossAttentionMethod,
    hparams_from_dict,
    low_rank_updates,
)
from engine.methods.closed_form.projections import text_width, token_embeddings
from engine.methods.errors import MethodError
from engine.request import EditRequest, clean_text


@dataclass(frozen=True)
class UCEHParams:
    """UCE's settings (reference defaults: lam 0.5, both scales 1, to_k and to_v)."""

    lam: float = 0.5
    edit_scale: float = 1.0
    preserve_scale: float = 1.0
    preserve: tuple[str, ...] = ()
    with_to_k: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "preserve", tuple(clean_text(p) for p in self.preserve))
        if not self.lam > 0:
            raise MethodError(f"UCE lam must be > 0, got {self.lam}")
        if self.edit_scale <= 0 or self.preserve_scale < 0:
            raise MethodError("UCE edit_scale must be > 0 and preserve_scale >= 0")
        if any(not p for p in self.preserve):
            raise MethodError("a UCE preserved concept is empty")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["preserve"] = list(self.preserve)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "UCEHParams":
        return hparams_from_dict(cls, data, "UCE")

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def last_content(model: Any, texts: Sequence[str]) -> torch.Tensor:
    """[N, d] float64: each text's final-layer embedding at its last content token."""
    if not texts:
        return torch.zeros(0, text_width(model), dtype=torch.float64)
    emb, mask, _ = token_embeddings(model, texts)
    idx = (mask.sum(dim=1) - 2).clamp(min=0)
    return emb[torch.arange(len(texts)), idx]


class UCEMethod(CrossAttentionMethod):
    name = "uce"
    label = "UCE"
    hparams_type = UCEHParams

    def updates(self, model: Any, request: EditRequest, hparams: UCEHParams) -> ClosedFormUpdates:
        mods = self.edit_projections(model, request, hparams)
        both = last_content(model, [request.prompt, request.target])
        c, g = both[:1], both[1:]
        keep = last_content(model, [p for p in hparams.preserve if p.lower() != request.prompt.lower()])
        return ClosedFormUpdates(low_rank_updates(self.component, mods, c, g, keep, hparams.lam,
                                                  hparams.edit_scale, hparams.preserve_scale))
