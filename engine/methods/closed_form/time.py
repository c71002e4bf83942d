"""TIME (Orgad, Kawar, Belinkov 2023): closed-form edit of the UNet's cross-attention projections.

Every ``attn2.to_v`` (and with ``with_to_k`` every ``attn2.to_k``) whose input is the text width gets
W' = (lam W + sum v* c^T)(lam I + sum c c^T)^-1, lam = 0.1. c runs over the final text-encoder token
embeddings of the source prompt (the request's prompt) and its augmentations ("A photo of ...",
"An image of ...", "A picture of ..."), all 77 positions (padding included) by default; v* = W c_new
of the destination token aligned with each source token (destination = the request's oracle, else
its target).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

from engine.methods.closed_form.common import (
    ClosedFormUpdates,
    CrossAttentionMethod,
    hparams_from_dict,
    low_rank_updates,
)
from engine.methods.closed_form.projections import token_embeddings
from engine.methods.errors import MethodError
from engine.request import EditRequest

AUGMENTATIONS = ("A photo of {}", "An image of {}", "A picture of {}")


@dataclass(frozen=True)
class TimeHParams:
    """TIME's settings (reference defaults)."""

    lam: float = 0.1
    with_to_k: bool = False
    augment: bool = True
    padding: bool = True     # all 77 positions as the reference; False = BOS..EOS only

    def __post_init__(self) -> None:
        if not self.lam > 0:
            raise MethodError(f"TIME lam must be > 0, got {self.lam}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "TimeHParams":
        return hparams_from_dict(cls, data, "TIME")

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def augment(text: str) -> list[str]:
    """The text and its three augmentations, a leading "A"/"An" lower-cased inside them."""
    first, _, rest = text.partition(" ")
    inner = (first.lower() + " " + rest) if first in ("A", "An") and rest else text
    return [text] + [t.format(inner) for t in AUGMENTATIONS]


def _norm(token: str) -> str:
    return "a</w>" if token == "an</w>" else token


def align(src_tokens: list[str], dst_tokens: list[str]) -> list[int]:
    """pi(i): each source position goes to the next identical destination token (greedy, "an" = "a");
    positions without a match take the next destination position in order (clamped to the end)."""
    out, j, last = [], 0, len(dst_tokens) - 1
    for tok in src_tokens:
        k = next((m for m in range(j, len(dst_tokens)) if _norm(dst_tokens[m]) == _norm(tok)), None)
        if k is None:
            k = min(j, last)
        out.append(k)
        j = min(k + 1, last + 1)
    return out


class TimeMethod(CrossAttentionMethod):
    name = "time"
    label = "TIME"
    hparams_type = TimeHParams

    def embeddings(self, model: Any, request: EditRequest, hparams: TimeHParams) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, aligned destination) rows [n, d] the closed form runs over."""
        dest = request.oracle or request.target
        src_texts = augment(request.prompt) if hparams.augment else [request.prompt]
        dst_texts = augment(dest) if hparams.augment else [dest]
        emb, mask, ids = token_embeddings(model, src_texts + dst_texts)
        n = len(src_texts)
        cs, gs = [], []
        for i in range(n):
            s_tok = model.tokenizer.convert_ids_to_tokens(ids[i])
            d_tok = model.tokenizer.convert_ids_to_tokens(ids[n + i])
            pi = align(s_tok, d_tok)
            keep = range(len(s_tok)) if hparams.padding else range(int(mask[i].sum()))
            rows = list(keep)
            cs.append(emb[i, rows])
            gs.append(emb[n + i, [pi[r] for r in rows]])
        return torch.cat(cs), torch.cat(gs)

    def updates(self, model: Any, request: EditRequest, hparams: TimeHParams) -> ClosedFormUpdates:
        mods = self.edit_projections(model, request, hparams)
        c, g = self.embeddings(model, request, hparams)
        return ClosedFormUpdates(low_rank_updates(self.component, mods, c, g, None, hparams.lam),
                                 meta={"n_embeddings": str(int(c.shape[0]))},
                                 numbers={"n_embeddings": float(c.shape[0])})
