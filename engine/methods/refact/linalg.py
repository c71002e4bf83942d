"""Solves against second moments C, with their factors cached: every solve against C (u, the joint
solve) goes through here.

- Dense (the default): the float64 Cholesky factor of C + ridge * mean(diag C) * I. C may be stored
  float32 (wide keys, engine.covariance.storage_dtype); it is upcast once into a float64 workspace that
  the ridge is added to and that is factored in place, so a solve needs width² x 8 bytes besides C.
- Low-rank + diagonal (``rank`` > 0, hparam ``moment_rank``): C ~ V diag(lam) V^T + D with the top
  ``rank`` eigenpairs of C (randomised subspace iteration; an exact eigendecomposition when ``rank``
  is the width) and D = the remaining diagonal of C + the ridge, solved with the Woodbury identity in
  O(width x rank) memory. Its effect on u: BENCHMARKS.md, "Second moments at LLM widths".

A 3072-wide factorisation costs ~0.3 s on CPU and sequential edits at one layer reuse the same C,
so recently used factors are kept (holding C itself keeps its id unique).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from engine.errors import InsertionRefusedError

CHOLESKY_CACHE: "OrderedDict[tuple[int, int, float, int], tuple[torch.Tensor, Any]]" = OrderedDict()
CHOLESKY_CACHE_SIZE = 4
# and at most this many bytes of factors (T5-XXL's is 800 MiB; the newest is always kept)
CHOLESKY_CACHE_BYTES = 2 * 2**30
# Rows of C upcast to float64 at once when multiplying a float32 C by a block of vectors.
ROW_BLOCK = 2048
OVERSAMPLE = 16  # extra vectors of the randomised subspace iteration
POWER_ITERATIONS = 4


@dataclass(frozen=True)
class LowRankDiag:
    """C ~ U U^T + diag(d): ``u`` = V diag(sqrt(lam)) (width x rank), ``d`` > 0 (width), and ``inner``
    the Cholesky factor of I + U^T D^-1 U (rank x rank), all float64 on CPU."""

    u: torch.Tensor
    d: torch.Tensor
    inner: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.u, self.d, self.inner))

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """(U U^T + D)^-1 rhs by Woodbury: D^-1 rhs - D^-1 U (I + U^T D^-1 U)^-1 U^T D^-1 rhs."""
        d_inv = (1.0 / self.d).unsqueeze(1)
        y = d_inv * rhs
        w = torch.cholesky_solve(self.u.T @ y, self.inner)
        return y - d_inv * (self.u @ w)


def _nbytes(factor: Any) -> int:
    return factor.nbytes if isinstance(factor, LowRankDiag) else factor.numel() * factor.element_size()


def _cached(second_moment: torch.Tensor, ridge: float, rank: int) -> tuple[tuple[int, int, float, int], Any]:
    key = (id(second_moment), second_moment._version, float(ridge), int(rank))
    hit = CHOLESKY_CACHE.get(key)
    if hit is not None and hit[0] is second_moment:
        CHOLESKY_CACHE.move_to_end(key)
        return key, hit[1]
    return key, None


def _remember(key: tuple[int, int, float, int], second_moment: torch.Tensor, factor: Any) -> None:
    CHOLESKY_CACHE[key] = (second_moment, factor)

    def held() -> int:
        return sum(_nbytes(f) for _, f in CHOLESKY_CACHE.values())

    while len(CHOLESKY_CACHE) > CHOLESKY_CACHE_SIZE or (len(CHOLESKY_CACHE) > 1 and held() > CHOLESKY_CACHE_BYTES):
        CHOLESKY_CACHE.popitem(last=False)


def _check_workspace(width: int, free_bytes: int | None = None) -> None:
    """Refuse in one line, before allocating it, a float64 workspace the host cannot hold."""
    from engine.admission import DTYPE_BYTES, MomentMemory, free_memory, size_text

    need = width * width * DTYPE_BYTES["float64"]
    if need < 2**30:  # below 1 GiB (11585 wide) the check is not worth a system call
        return
    free = free_memory("cpu") if free_bytes is None else free_bytes
    if need > free:
        rank = MomentMemory(width, rank=256)
        raise InsertionRefusedError(
            f"solving against a {width}-wide C needs an fp64 workspace of {size_text(need)} but the host has "
            f"{size_text(free)} free; free memory or use a low-rank C (--moment-rank 256: {size_text(rank.solve)})"
        )


def cholesky(second_moment: torch.Tensor, ridge: float) -> torch.Tensor:
    """Lower Cholesky factor (float64, CPU) of C + ridge * mean(diag C) * I; InsertionRefusedError if
    C is not positive definite, or when the host cannot hold the float64 workspace."""
    key, hit = _cached(second_moment, ridge, 0)
    if hit is not None:
        return hit
    _check_workspace(second_moment.shape[0])
    # one float64 copy (an upcast of a float32 C, else a clone): the ridge and the factor go in place
    c = second_moment.detach().to(device="cpu", dtype=torch.float64, copy=True)
    if ridge > 0:
        c.diagonal().add_(ridge * c.diagonal().mean())  # no d x d identity (800 MiB at 10240 wide)
    # LAPACK factors a column-major matrix in place; c is symmetric, so its transpose view is that
    # matrix, and the upper factor of the view is the lower factor of c in c's own memory (a plain
    # cholesky_ex(c) would allocate a second width² x 8 bytes)
    info = torch.zeros((), dtype=torch.int32)
    torch.linalg.cholesky_ex(c.mT, upper=True, out=(c.mT, info))
    chol = c
    if int(info) != 0:
        raise InsertionRefusedError(
            "second moment is not positive definite; set a small ridge (e.g. 1e-4) or use a larger statistics corpus"
        )
    _remember(key, second_moment, chol)
    return chol


def solve_with_factor(rhs: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """C^-1 rhs from C's lower Cholesky factor by two triangular solves (cholesky_solve would copy
    the factor: another width² x 8 bytes)."""
    y = torch.linalg.solve_triangular(chol, rhs, upper=False)
    return torch.linalg.solve_triangular(chol.mT, y, upper=True)


def _times(c: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """C @ q in float64 (q float64), upcasting C ROW_BLOCK rows at a time."""
    if c.dtype == torch.float64:
        return c @ q
    out = torch.empty(c.shape[0], q.shape[1], dtype=torch.float64)
    for i in range(0, c.shape[0], ROW_BLOCK):
        out[i : i + ROW_BLOCK] = c[i : i + ROW_BLOCK].to(torch.float64) @ q
    return out


def top_eigenpairs(second_moment: torch.Tensor, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(lam, V): the ``rank`` largest eigenvalues of symmetric C and their eigenvectors (float64), by
    randomised subspace iteration (exact ``eigh`` when ``rank`` covers the width)."""
    c = second_moment.detach().cpu()
    width = c.shape[0]
    if rank + OVERSAMPLE >= width:
        lam, vec = torch.linalg.eigh(c.to(torch.float64))
        return lam.flip(0)[:rank], vec.flip(1)[:, :rank]
    gen = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(width, rank + OVERSAMPLE, generator=gen, dtype=torch.float64))[0]
    for _ in range(POWER_ITERATIONS):
        q = torch.linalg.qr(_times(c, q))[0]
    lam, small = torch.linalg.eigh(q.T @ _times(c, q))
    keep = lam.argsort(descending=True)[:rank]
    return lam[keep], q @ small[:, keep]


def low_rank_diag(second_moment: torch.Tensor, rank: int, ridge: float) -> LowRankDiag:
    """The rank-``rank`` + diagonal approximation of C + ridge * mean(diag C) * I (cached)."""
    key, hit = _cached(second_moment, ridge, rank)
    if hit is not None:
        return hit
    c = second_moment.detach().cpu()
    diag = c.diagonal().to(torch.float64)
    lam, vec = top_eigenpairs(c, min(rank, c.shape[0]))
    u = vec * lam.clamp(min=0).sqrt()
    rest = (diag - (u * u).sum(dim=1)).clamp(min=0) + ridge * diag.mean()
    if not bool((rest > 0).all()):
        raise InsertionRefusedError(
            "the low-rank C leaves a zero diagonal; set a small ridge (e.g. 1e-4) with --moment-rank")
    inner = torch.eye(u.shape[1], dtype=torch.float64) + u.T @ (u / rest.unsqueeze(1))
    factor = LowRankDiag(u, rest, torch.linalg.cholesky(inner))
    _remember(key, second_moment, factor)
    return factor


def solve(second_moment: torch.Tensor, rhs: torch.Tensor, ridge: float, rank: int = 0) -> torch.Tensor:
    """(C + ridge * mean(diag C) * I)^-1 rhs (float64, CPU; ``rhs`` is width x columns), dense
    Cholesky when ``rank`` is 0, else low-rank + diagonal with that rank."""
    rhs = rhs.detach().to("cpu", torch.float64)
    if rank > 0:
        return low_rank_diag(second_moment, rank, ridge).solve(rhs)
    return solve_with_factor(rhs, cholesky(second_moment, ridge))
