"""The key side of the edit: k* (mean fc2 input over context templates) and u = C^-1 k*."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch

from engine.adapters.base import EncoderAdapter
from engine.errors import InsertionRefusedError
from engine.tokens import LocatedText


@torch.no_grad()
def keys_at(adapter: EncoderAdapter, tokenizer: Any, located: Sequence[LocatedText], layer: int) -> torch.Tensor:
    """fc2 input at each prompt's lookup token, one padded batch (rows x key_size)."""
    batch = adapter.tokenize(tokenizer, [p.text for p in located])
    key = adapter.prefix(batch, layer, with_output=False).key
    rows = torch.arange(len(located), device=key.device)
    idx = torch.tensor([p.index for p in located], device=key.device)
    return key[rows, idx]


# Cholesky factors of recently used second moments: a 3072-wide factorisation costs ~0.3 s on CPU,
# and sequential edits at one layer reuse the same C. Holding C itself keeps its id unique.
_CHOLESKY_CACHE: "OrderedDict[tuple[int, int, float], tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
_CHOLESKY_CACHE_SIZE = 4
# and at most this many bytes of factors (T5-XXL's is 800 MiB; the newest is always kept)
_CHOLESKY_CACHE_BYTES = 2 * 2**30


def _cholesky(second_moment: torch.Tensor, ridge: float) -> torch.Tensor:
    key = (id(second_moment), second_moment._version, ridge)
    hit = _CHOLESKY_CACHE.get(key)
    if hit is not None and hit[0] is second_moment:
        _CHOLESKY_CACHE.move_to_end(key)
        return hit[1]
    c = second_moment.detach().to(device="cpu", dtype=torch.float64)
    if ridge > 0:
        # in place on a copy: no d x d identity (800 MiB at T5-XXL's 10240-wide key)
        shift = ridge * c.diagonal().mean()
        c = c.clone()
        c.diagonal().add_(shift)
    chol, info = torch.linalg.cholesky_ex(c)
    if int(info) != 0:
        raise InsertionRefusedError(
            "second moment is not positive definite; set a small ridge (e.g. 1e-4) or use a larger statistics corpus"
        )
    _CHOLESKY_CACHE[key] = (second_moment, chol)
    def held() -> int:
        return sum(f.numel() * f.element_size() for _, f in _CHOLESKY_CACHE.values())

    while len(_CHOLESKY_CACHE) > _CHOLESKY_CACHE_SIZE or (len(_CHOLESKY_CACHE) > 1 and held() > _CHOLESKY_CACHE_BYTES):
        _CHOLESKY_CACHE.popitem(last=False)
    return chol


def left_vector(second_moment: torch.Tensor, k_star: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """u = C^-1 k* / ||C^-1 k*|| by a float64 Cholesky solve (no explicit inverse), as float32.

    ``ridge`` adds ``ridge * mean(diag C)`` to the diagonal first. A C that is not positive
    definite (too few corpus tokens, dead units) raises InsertionRefusedError.
    """
    k = k_star.detach().to(device="cpu", dtype=torch.float64).reshape(-1, 1)
    if tuple(second_moment.shape) != (k.shape[0], k.shape[0]):
        raise InsertionRefusedError(
            f"second moment is {tuple(second_moment.shape)} but the key has {k.shape[0]} entries; "
            "recompute the statistics for this layer"
        )
    u = torch.cholesky_solve(k, _cholesky(second_moment, ridge)).reshape(-1)
    norm = torch.linalg.vector_norm(u)
    if not torch.isfinite(norm) or norm == 0:
        raise InsertionRefusedError("C^-1 k* is zero or not finite; check the statistics and the key")
    return (u / norm).to(torch.float32)
