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
from typing import Any, Sequence

import torch

from engine.delta import EditDelta, MatrixUpdate
from engine.methods.base import EditMethod, MethodError, MethodResult, pipeline_component
from engine.request import EditRequest
from engine.tokens import check_length


class CrossAttentionMethod(EditMethod):
    """A closed-form edit of the UNet's cross-attention projections (TIME, UCE): the shared plumbing.

    Subclasses set ``name``, ``label`` and ``hparams_type`` (a dataclass with ``from_dict``,
    ``to_dict``, ``with_to_k`` and ``lam``) and implement ``compute``.
    """

    component = "unet"
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

    def result(self, request: EditRequest, hparams: Any, updates: list[MatrixUpdate], seconds: float,
               meta: dict[str, str] | None = None, numbers: dict[str, float] | None = None) -> MethodResult:
        """The MethodResult of one closed-form edit, with the request and hyperparameters in its meta."""
        full = {
            "method": self.name,
            "request": json.dumps(request.to_dict(), ensure_ascii=False, sort_keys=True),
            "hparams": json.dumps(hparams.to_dict(), sort_keys=True),
            **(meta or {}),
        }
        return MethodResult(EditDelta(updates=updates, meta=full), self.name, seconds,
                            numbers={"n_matrices": float(len(updates)), **(numbers or {})})


def cross_attention_projections(unet: torch.nn.Module, text_width: int, with_to_k: bool,
                                with_to_v: bool = True) -> dict[str, torch.nn.Linear]:
    """Module name -> Linear of every cross-attention (attn2) to_v (and to_k) whose input is the text width."""
    wanted = tuple(s for s, on in (("attn2.to_k", with_to_k), ("attn2.to_v", with_to_v)) if on)
    out: dict[str, torch.nn.Linear] = {}
    for name, mod in unet.named_modules():
        if name.endswith(wanted) and isinstance(mod, torch.nn.Linear) and mod.in_features == text_width:
            out[name] = mod
    return out


def text_width(model: Any) -> int:
    return int(model.text_encoder.config.hidden_size)


@torch.no_grad()
def token_embeddings(model: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Final text-encoder token embeddings [N, L, d] (float64, cpu) the UNet is conditioned on, padded to
    the encoder's length as the pipeline pads them, plus the attention mask [N, L] and the token ids."""
    tok = model.tokenizer
    max_len = int(model.adapter.max_length)
    for t in texts:
        check_length(tok, t, max_len)
    batch = tok(list(texts), padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    ids = batch["input_ids"].to(model.device)
    out = model.text_encoder(ids)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden.detach().to("cpu", torch.float64), batch["attention_mask"].cpu(), batch["input_ids"].tolist()


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
