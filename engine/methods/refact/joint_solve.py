"""The closed-form least-squares update of one matrix for many keys (fp64).

Minimise ||dW K - R||^2 + lam * tr(dW C dW^T) (the C-weighted ridge ReFACT's u and MEMIT use):
dW = R K^T (lam C + K K^T)^-1 = R (lam I + K^T C^-1 K)^-1 (C^-1 K)^T, i.e. one solve against the
Cholesky factor of C plus an M x M solve, returned as two factors (left = R (lam I + G)^-1,
right = C^-1 K) so the stored delta has rank M.

``lam`` is relative: the absolute ridge is lam * mean(diag(K^T C^-1 K)). That diagonal is about
1e4 on SD1's encoder against tr C ~ 85, so an absolute lam means nothing across encoders while a
relative one does: 1e-2 barely costs efficacy, 1 halves it.

Null-space projection (AlphaEdit's idea, ``protected`` keys P): the same problem under dW P = 0.
Its stationarity conditions give dW = A (C^-1 K - C^-1 P G_pp^-1 G_pk)^T with
A = R (lam I + S)^-1 and S = G_kk - G_kp G_pp^-1 G_pk, the Schur complement of the Grams
G_xy = X^T C^-1 Y. That is the solve restricted to the complement of span(P) with C projected onto
it, without forming the d x d projection: only C^-1 P and small Grams. P is orthonormalised first
(QR, rank by ``rtol``) so dependent protected keys cost nothing and G_pp stays as well conditioned as C.

``sequential_factors`` inserts requests one after another, each solved on top of the updates of the
requests before it; with ``null_space`` each update is projected off the keys of every earlier
request (and the protected ones), so later requests leave earlier ones' W k exactly where they were.
The QR of the ordered key list keeps each prefix's span, so one factorisation serves every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.errors import InsertionRefusedError
from engine.methods.refact.linalg import cholesky

RANK_RTOL = 1e-8


@dataclass
class JointFactors:
    """dW = left @ right.T (float64, CPU); lam_abs is the ridge actually used (for a sequential
    solve, the mean over its requests)."""

    left: torch.Tensor  # (out, M)
    right: torch.Tensor  # (in, M)
    lam_abs: float
    gram_mean_diag: float


def range_basis(protected: torch.Tensor, rtol: float = RANK_RTOL) -> tuple[torch.Tensor, list[int]]:
    """Orthonormal columns (size, rank) spanning ``protected``'s rows, in their order, and for each
    kept column the row it came from: the first j kept columns span the rows up to that row."""
    p = protected.detach().to("cpu", torch.float64)
    if p.numel() == 0:
        return p.new_zeros(p.shape[-1], 0), []
    q, r = torch.linalg.qr(p.T, mode="reduced")
    diag = r.diagonal().abs()
    keep = (diag > rtol * diag.max().clamp_min(1e-300)).nonzero().flatten()
    return q[:, keep], keep.tolist()


class _Protected:
    """C^-1 Q and the Cholesky factor of Q^T C^-1 Q for an orthonormal protected basis Q; a leading
    block of either belongs to the leading columns of Q."""

    def __init__(self, chol: torch.Tensor, q: torch.Tensor):
        self.q = q
        self.c_inv_q = torch.cholesky_solve(q, chol)
        g = q.T @ self.c_inv_q
        g = 0.5 * (g + g.T)
        factor, info = torch.linalg.cholesky_ex(g)
        if int(info) != 0:  # C nearly singular on the protected span: a relative jitter keeps it solvable
            g = g + 1e-12 * g.diagonal().mean() * torch.eye(g.shape[0], dtype=g.dtype)
            factor = torch.linalg.cholesky(g)
        self.factor = factor

    def project(self, k: torch.Tensor, c_inv_k: torch.Tensor, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(right, gram) of keys ``k`` (in, M) restricted off the first ``cols`` protected columns:
        right = C^-1 K - C^-1 Q G_qq^-1 G_qk and gram = S, the Schur complement."""
        gram = k.T @ c_inv_k
        if cols == 0:
            return c_inv_k, gram
        lower = self.factor[:cols, :cols]
        w = torch.linalg.solve_triangular(lower, self.c_inv_q[:, :cols].T @ k, upper=False)  # L^-1 G_qk
        coef = torch.linalg.solve_triangular(lower.T, w, upper=True)  # G_qq^-1 G_qk
        return c_inv_k - self.c_inv_q[:, :cols] @ coef, gram - w.T @ w


def _left(gram: torch.Tensor, r: torch.Tensor, lam: float) -> tuple[torch.Tensor, float, float]:
    """left = R (lam_abs I + G)^-1 with lam_abs = lam * mean(diag G); (left, lam_abs, mean diag)."""
    gram = 0.5 * (gram + gram.T)
    mean_diag = float(gram.diagonal().mean())
    lam_abs = lam * mean_diag
    system = gram + lam_abs * torch.eye(gram.shape[0], dtype=torch.float64)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        left = torch.cholesky_solve(r.T, factor).T
    else:  # keys (numerically) dependent and lam ~ 0: least squares instead
        left = torch.linalg.lstsq(system, r.T).solution.T
    return left, lam_abs, mean_diag


def _finite(left: torch.Tensor, right: torch.Tensor) -> None:
    if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
        raise InsertionRefusedError("the joint solve produced NaN or infinite values; raise --lambda and retry")


def joint_factors(
    second_moment: torch.Tensor,
    keys: torch.Tensor,
    residuals: torch.Tensor,
    lam: float,
    *,
    ridge: float = 0.0,
    protected: torch.Tensor | None = None,
) -> JointFactors:
    """Factors of the ridge solve for ``keys`` (M, in) and ``residuals`` (M, out) = V* - W K.

    ``protected`` (P, in): keys the update must not move, dW k_p = 0 exactly (the null-space
    projection, see the module docstring). Raises InsertionRefusedError on a C that is not positive
    definite or on non-finite results.
    """
    chol = cholesky(second_moment, ridge)
    k = keys.detach().to("cpu", torch.float64).T  # (in, M)
    r = residuals.detach().to("cpu", torch.float64).T  # (out, M)
    c_inv_k = torch.cholesky_solve(k, chol)  # (in, M)
    if protected is None or protected.shape[0] == 0:
        right, gram = c_inv_k, k.T @ c_inv_k
    else:
        q, _ = range_basis(protected)
        right, gram = _Protected(chol, q).project(k, c_inv_k, q.shape[1])
    left, lam_abs, mean_diag = _left(gram, r, lam)
    _finite(left, right)
    return JointFactors(left=left, right=right, lam_abs=lam_abs, gram_mean_diag=mean_diag)


def sequential_factors(
    second_moment: torch.Tensor,
    keys: torch.Tensor,
    residuals: torch.Tensor,
    lam: float,
    *,
    ridge: float = 0.0,
    protected: torch.Tensor | None = None,
    null_space: bool = True,
) -> JointFactors:
    """Requests inserted one after another: ``keys`` (N, m, in) and ``residuals`` (N, m, out) are
    each request's keys and what they must gain; request i is solved (``joint_factors`` over its m
    keys, relative ridge ``lam`` on its own Gram) for its residual minus what the updates of requests
    1..i-1 already moved its keys. With ``null_space`` its update is projected off ``protected`` and
    the keys of requests 1..i-1, so it leaves their W k unchanged. The factors' columns are the
    requests' in order (m each).
    """
    chol = cholesky(second_moment, ridge)
    n, m, _ = keys.shape
    k_all = keys.detach().to("cpu", torch.float64).reshape(n * m, -1)
    r_all = residuals.detach().to("cpu", torch.float64)
    c_inv = torch.cholesky_solve(k_all.T, chol)  # (in, N m)
    prior = protected.detach().to("cpu", torch.float64) if protected is not None else k_all[:0]
    proj, ends = None, []
    if null_space:
        q, rows = range_basis(torch.cat([prior, k_all]))
        proj = _Protected(chol, q)
        # columns of Q spanning the protected keys and requests 1..i-1: those from rows before its first key
        first_row = [prior.shape[0] + i * m for i in range(n)]
        ends = [sum(1 for row in rows if row < start) for start in first_row]
    lefts, rights, lams, diags = [], [], [], []
    for i in range(n):
        k = k_all[i * m:(i + 1) * m].T  # (in, m)
        gap = r_all[i].clone()  # (m, out)
        if lefts:  # what earlier requests' updates already moved request i's keys by
            gap -= (torch.cat(lefts, 1) @ (torch.cat(rights, 1).T @ k)).T
        c_inv_k = c_inv[:, i * m:(i + 1) * m]
        right, gram = (c_inv_k, k.T @ c_inv_k) if proj is None else proj.project(k, c_inv_k, ends[i])
        left, lam_abs, mean_diag = _left(gram, gap.T, lam)
        lefts.append(left)
        rights.append(right)
        lams.append(lam_abs)
        diags.append(mean_diag)
    left, right = torch.cat(lefts, 1), torch.cat(rights, 1)
    _finite(left, right)
    return JointFactors(left=left, right=right, lam_abs=sum(lams) / n, gram_mean_diag=sum(diags) / n)


def residual_bound(lam: float, tol: float = 1e-3) -> float:
    """Largest accepted ||W'k_e - v*|| / ||W k_e - v*|| (the share of its miss a request keeps) for a
    batch solved with relative ridge ``lam``.

    A key direction whose Gram eigenvalue is a fraction e of the mean keeps lam / (lam + e) of its
    miss, so requests that differ only in weak directions keep much more than lam suggests. The
    bound is tol + 5 sqrt(lam), capped at 1 (no better than not editing): exact (tol) at lam = 0,
    0.05 at 1e-4, 0.5 at the default 1e-2. Past it the batch is refused: its keys conflict.
    """
    return min(1.0, tol + 5.0 * math.sqrt(max(lam, 0.0)))
