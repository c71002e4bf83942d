"""The closed-form least-squares update of one matrix for many keys (fp64).

Minimise ||dW K - R||^2 + lam * tr(dW C dW^T) (the C-weighted ridge ReFACT's u and MEMIT use):
dW = R K^T (lam C + K K^T)^-1 = R (lam I + K^T C^-1 K)^-1 (C^-1 K)^T, i.e. one solve against the
Cholesky factor of C plus an M x M solve, returned as two factors (left = R (lam I + G)^-1,
right = C^-1 K) so the stored delta has rank M.

``lam`` is relative: the absolute ridge is lam * mean(diag(K^T C^-1 K)). That diagonal is about
1e4 on SD1's encoder against tr C ~ 85, so an absolute lam means nothing across encoders while a
relative one does: 1e-2 barely costs efficacy, 1 halves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.errors import InsertionRefusedError
from engine.methods.refact.linalg import cholesky


@dataclass
class JointFactors:
    """dW = left @ right.T (float64, CPU); lam_abs is the ridge actually used."""

    left: torch.Tensor  # (out, M)
    right: torch.Tensor  # (in, M)
    lam_abs: float
    gram_mean_diag: float


def complement_basis(protected: torch.Tensor, size: int, rtol: float = 1e-8) -> torch.Tensor:
    """Orthonormal basis (size, size - rank) of the directions ``protected`` (rows) do not span."""
    p = protected.detach().to("cpu", torch.float64)
    q, r = torch.linalg.qr(p.T, mode="complete")
    diag = r.diagonal().abs()
    rank = int((diag > rtol * diag.max().clamp_min(1e-300)).sum()) if diag.numel() else 0
    return q[:, rank:]


def joint_factors(
    second_moment: torch.Tensor,
    keys: torch.Tensor,
    residuals: torch.Tensor,
    lam: float,
    *,
    ridge: float = 0.0,
    basis: torch.Tensor | None = None,
) -> JointFactors:
    """Factors of the ridge solve for ``keys`` (M, in) and ``residuals`` (M, out) = V* - W K.

    ``basis`` (in, d): restrict dW's rows to its span (the null space of protected keys, so
    dW k_p = 0 exactly); C is projected onto it first. Raises InsertionRefusedError on a C that
    is not positive definite or on non-finite results.
    """
    k = keys.detach().to("cpu", torch.float64).T  # (in, M)
    r = residuals.detach().to("cpu", torch.float64).T  # (out, M)
    if basis is None:
        chol = cholesky(second_moment, ridge)
        k_in = k
    else:
        c = second_moment.detach().to("cpu", torch.float64)
        if ridge > 0:
            c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=torch.float64)
        c_b = basis.T @ c @ basis
        chol, info = torch.linalg.cholesky_ex(c_b)
        if int(info) != 0:
            raise InsertionRefusedError("projected second moment is not positive definite; set a small ridge (e.g. 1e-4)")
        k_in = basis.T @ k
    c_inv_k = torch.cholesky_solve(k_in, chol)  # (d, M)
    gram = k_in.T @ c_inv_k
    gram = 0.5 * (gram + gram.T)
    mean_diag = float(gram.diagonal().mean())
    lam_abs = lam * mean_diag
    system = gram + lam_abs * torch.eye(gram.shape[0], dtype=torch.float64)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        left = torch.cholesky_solve(r.T, factor).T
    else:  # keys (numerically) dependent and lam ~ 0: least squares instead
        left = torch.linalg.lstsq(system, r.T).solution.T
    right = c_inv_k if basis is None else basis @ c_inv_k
    if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
        raise InsertionRefusedError("the joint solve produced NaN or infinite values; raise --lambda and retry")
    return JointFactors(left=left, right=right, lam_abs=lam_abs, gram_mean_diag=mean_diag)


def residual_bound(lam: float, tol: float = 1e-3) -> float:
    """Largest accepted ||W'k_e - v*|| / ||W k_e - v*|| (the share of its miss a request keeps) for a
    batch solved with relative ridge ``lam``.

    A key direction whose Gram eigenvalue is a fraction e of the mean keeps lam / (lam + e) of its
    miss, so requests that differ only in weak directions keep much more than lam suggests. The
    bound is tol + 5 sqrt(lam), capped at 1 (no better than not editing): exact (tol) at lam = 0,
    0.05 at 1e-4, 0.5 at the default 1e-2. Past it the batch is refused: its keys conflict.
    """
    return min(1.0, tol + 5.0 * math.sqrt(max(lam, 0.0)))
