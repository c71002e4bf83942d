"""Cholesky factors of second moments C, cached: every solve against C (u, the joint solve) uses them.

A 3072-wide factorisation costs ~0.3 s on CPU and sequential edits at one layer reuse the same C,
so recently used factors are kept (holding C itself keeps its id unique).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from engine.errors import InsertionRefusedError

CHOLESKY_CACHE: "OrderedDict[tuple[int, int, float], tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
CHOLESKY_CACHE_SIZE = 4
# and at most this many bytes of factors (T5-XXL's is 800 MiB; the newest is always kept)
CHOLESKY_CACHE_BYTES = 2 * 2**30


def cholesky(second_moment: torch.Tensor, ridge: float) -> torch.Tensor:
    """Lower Cholesky factor (float64, CPU) of C + ridge * mean(diag C) * I; InsertionRefusedError if
    C is not positive definite."""
    key = (id(second_moment), second_moment._version, ridge)
    hit = CHOLESKY_CACHE.get(key)
    if hit is not None and hit[0] is second_moment:
        CHOLESKY_CACHE.move_to_end(key)
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
    CHOLESKY_CACHE[key] = (second_moment, chol)

    def held() -> int:
        return sum(f.numel() * f.element_size() for _, f in CHOLESKY_CACHE.values())

    while len(CHOLESKY_CACHE) > CHOLESKY_CACHE_SIZE or (len(CHOLESKY_CACHE) > 1 and held() > CHOLESKY_CACHE_BYTES):
        CHOLESKY_CACHE.popitem(last=False)
    return chol
