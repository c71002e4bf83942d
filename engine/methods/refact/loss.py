"""The v* objective, written once for the single and the vectorised optimiser.

The edited prompts' features f(delta) should pick the target text among the target, the source and
the contrastive texts: s_ij is the (negative L2, or scaled cosine) similarity of prompt feature i to
target feature j divided by the temperature, the loss is the mean -log softmax_j(s_ij) at the target
plus weight decay ||delta|| / ||v0||^2 (ROME's form).

Self-target anchoring. A target text that is a rewriting prompt itself (a row whose prompt is its
source) has a frozen feature equal to the prompt's unedited feature up to rounding, so its L2
distance at delta = 0 is rounding noise (~1e-6) and the gradient of that distance is a unit vector
in a noise direction: the first Adam step, and the whole trajectory, then depend on how the
features were batched (single edit vs the vectorised batch gave P 0.6323 vs 0.6332).
The distance is exactly zero in exact arithmetic, so both optimisers score such a pair against the
row's own unedited feature computed by the same stepper (the same function of delta): the distance
is then exactly 0 at delta = 0 (torch's norm gradient there is 0) and ||f(delta) - f(0)|| after. Every
other pair keeps its score bit for bit; a request with no such pair runs exactly as before.
A pair is anchored only while the two features agree to rounding (``close_pairs``): once earlier
edits of a history have moved the prompt, its distance to the frozen source is real and the paper's
loss is left alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from engine.methods.refact.hparams import ReFACTHParams

COSINE_SCALE = 100.0  # CLIP's logit scale, exp(log 100)

# A self-target pair is anchored only while the row's unedited feature still equals the target's
# frozen feature to rounding. After earlier edits moved the prompt (a sequential history), the two
# differ for real and the paper's loss (distance to the frozen base feature) is kept as it is.
SAME_FEATURE_REL = 1e-4

# (pairs (rows, targets) bool, unedited row features (rows, D))
Anchors = tuple[torch.Tensor, torch.Tensor]


def same_token_pairs(adapter: Any, tokenizer: Any, row_texts: Sequence[str],
                     target_texts: Sequence[str] | None) -> torch.Tensor | None:
    """(rows, targets) bool: the row's text tokenises exactly like the target text (so their frozen
    features agree up to rounding); None when no pair does or no target texts are given."""
    if not target_texts:
        return None

    def ids(texts: Sequence[str]) -> list[tuple[int, ...]]:
        batch = adapter.tokenize(tokenizer, list(texts))
        mask = batch.get("attention_mask")
        out = []
        for i, row in enumerate(batch["input_ids"].tolist()):
            keep = mask[i].tolist() if mask is not None else [1] * len(row)
            out.append(tuple(t for t, k in zip(row, keep) if k))
        return out

    rows, targets = ids(row_texts), ids(target_texts)
    mask = torch.tensor([[r == t for t in targets] for r in rows], dtype=torch.bool)
    return mask if bool(mask.any()) else None


def close_pairs(mask: torch.Tensor, unedited: torch.Tensor, targets: torch.Tensor,
                rel: float = SAME_FEATURE_REL) -> torch.Tensor | None:
    """``mask`` (rows, targets) restricted to pairs whose ``unedited`` row feature (rows, D) lies within
    ``rel`` * ||target|| of the target's frozen feature (``targets``: (targets, D), or (rows, targets, D)
    per row); None when no pair is left."""
    if targets.ndim == 2:
        targets = targets[None].expand(unedited.shape[0], -1, -1)
    width = mask.shape[1]
    t = targets[:, :width].to(unedited.dtype)
    gap = torch.linalg.vector_norm(unedited[:, None, :] - t, dim=-1)
    keep = mask.to(gap.device) & (gap <= rel * torch.linalg.vector_norm(t, dim=-1))
    return keep if bool(keep.any()) else None


def anchor_scores(scores: torch.Tensor, features: torch.Tensor, unedited: torch.Tensor, mask: torch.Tensor,
                  similarity: str) -> torch.Tensor:
    """``scores`` (rows, targets; before the temperature) with each ``mask`` pair re-scored against
    the row's ``unedited`` feature (rows, D; the same stepper at delta = 0) instead of the target's
    frozen feature; out of place, so those pairs' gradient is only the re-scored one."""
    rows, cols = mask.to(scores.device).nonzero(as_tuple=True)
    f, a = features[rows], unedited[rows].to(features.dtype)
    if similarity == "cosine":
        own = COSINE_SCALE * (torch.nn.functional.normalize(f, dim=-1) * torch.nn.functional.normalize(a, dim=-1)).sum(-1)
    else:
        own = -torch.linalg.vector_norm(f - a, dim=-1)
    return scores.index_put((rows, cols), own)


def similarity(features: torch.Tensor, targets: torch.Tensor, hparams: ReFACTHParams,
               anchors: Anchors | None = None) -> torch.Tensor:
    """s_ij / temperature between edited features (P, D) and targets: (X, D) shared by every row
    (one request), or (P, X, D), each row its own (the vectorised batch). ``anchors``: see above.
    Computed in fp32 whatever the encoder's dtype."""
    features, targets = features.float(), targets.float()
    if hparams.similarity == "cosine":
        f = torch.nn.functional.normalize(features, dim=-1)
        t = torch.nn.functional.normalize(targets, dim=-1)
        scores = COSINE_SCALE * (f @ t.T if targets.ndim == 2 else torch.bmm(t, f[:, :, None])[:, :, 0])
    else:
        shared = targets[None, :, :] if targets.ndim == 2 else targets
        scores = -torch.linalg.vector_norm(features[:, None, :] - shared, dim=-1)
    if anchors is not None:
        scores = anchor_scores(scores, features, anchors[1], anchors[0], hparams.similarity)
    return scores / hparams.temperature


def edit_loss(
    features: torch.Tensor, targets: torch.Tensor, delta: torch.Tensor, v0: torch.Tensor, hparams: ReFACTHParams,
    anchors: Anchors | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One request: (loss, nll, wd, mean P(target)); the target is column 0 of ``targets``."""
    log_p = torch.log_softmax(similarity(features, targets, hparams, anchors), dim=-1)[:, 0]
    nll = -log_p.mean()
    # Plain norm over squared norm (ROME's form); torch.norm has gradient 0 at delta = 0.
    wd = hparams.weight_decay * torch.norm(delta) / torch.norm(v0) ** 2
    return nll + wd, nll, wd, log_p.exp().mean()


def edit_losses(
    features: torch.Tensor, row_targets: torch.Tensor, row_valid: torch.Tensor, per: int, deltas: torch.Tensor,
    v0_sq: torch.Tensor, hparams: ReFACTHParams, anchors: Anchors | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """N requests of ``per`` rows each: per-request (loss, nll, wd, mean P(target)), each shaped (N,).

    ``row_targets`` (rows, X, D) padded with ``row_valid`` False; ``deltas`` (N, H); ``v0_sq`` (N,) = ||v0||^2."""
    scores = similarity(features, row_targets, hparams, anchors).masked_fill(~row_valid, -torch.inf)
    log_p = torch.log_softmax(scores, dim=-1)[:, 0].view(deltas.shape[0], per)
    nll = -log_p.mean(dim=1)
    wd = hparams.weight_decay * torch.linalg.vector_norm(deltas, dim=1) / v0_sq
    return nll + wd, nll, wd, log_p.exp().mean(dim=1)
