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

from typing import Any, Sequence

import torch

from engine.delta import MatrixUpdate
from engine.tokens import check_length


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
