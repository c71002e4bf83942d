"""Target texts that are a rewriting prompt itself (a row whose prompt is its source).

Such a target's frozen feature equals the prompt's unedited feature up to rounding, so its L2
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


# A self-target pair is anchored only while the row's unedited feature still equals the target's
# frozen feature to rounding. After earlier edits moved the prompt (a sequential history), the two
# differ for real and the paper's loss (distance to the frozen base feature) is kept as it is.
SAME_FEATURE_REL = 1e-4


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
    from engine.optimize import COSINE_SCALE

    rows, cols = mask.to(scores.device).nonzero(as_tuple=True)
    f, a = features[rows], unedited[rows].to(features.dtype)
    if similarity == "cosine":
        own = COSINE_SCALE * (torch.nn.functional.normalize(f, dim=-1) * torch.nn.functional.normalize(a, dim=-1)).sum(-1)
    else:
        own = -torch.linalg.vector_norm(f - a, dim=-1)
    return scores.index_put((rows, cols), own)
