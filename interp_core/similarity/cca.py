"""CCA-based similarity: canonical correlations, SVCCA and PWCCA.

- Canonical correlations ``rho_1 >= rho_2 >= ...`` between centered ``X`` and ``Y`` (Hotelling 1936) are the
  singular values of ``Q_x^T Q_y``, with ``Q_x``, ``Q_y`` orthonormal bases of the column spaces (computed by
  SVD; directions with singular value below ``eps`` times the largest are dropped as rank deficient).
- **SVCCA** (Raghu et al. 2017, "SVCCA: Singular Vector Canonical Correlation Analysis for Deep Learning
  Dynamics and Interpretability", NeurIPS): keep the top singular directions of each representation that
  explain ``keep`` (default 99%) of its variance, then the mean canonical correlation of the reduced pair.
- **PWCCA** (Morcos, Raghu & Bengio 2018, "Insights on representational similarity in neural networks with
  canonical correlation", NeurIPS): ``sum_i alpha_i rho_i / sum_i alpha_i`` with
  ``alpha_i = sum_j |<h_i, x_j>|``, ``h_i`` the i-th canonical variate of X (unit norm over the inputs) and
  ``x_j`` the j-th (centered) feature column of X. Asymmetric: weights come from X.

All three are similarities in [0, 1] and invariant to translation, orthogonal maps and isotropic scaling.
Canonical correlations, and SVCCA with ``keep=1.0``, are invariant to any invertible linear map of either
representation. SVCCA with its default truncation (``keep=0.99``) is NOT: an invertible map changes the variance
spectrum, hence which directions the truncation keeps, hence the value. PWCCA is invariant to invertible linear
maps of Y and to isotropic scaling of X, but NOT to rotations of X (its weights sum over X's units). They need
more rows than features (``N > d``) to be meaningful: with ``N <= d`` every correlation is 1. The table in
:mod:`interp_core.similarity` lists these properties; a test checks every row against the code.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ._arrays import ArrayLike, as_pair, center


def _basis(X: np.ndarray, keep: float | None = None, eps: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis ``[N, r]`` of the centered column space and the singular values kept."""
    U, s, _ = np.linalg.svd(center(X), full_matrices=False)
    if s.size == 0 or s[0] == 0:
        raise InputError("a representation is constant over the inputs; CCA is undefined")
    r = int(np.sum(s > eps * s[0]))
    if keep is not None:
        if not 0 < keep <= 1:
            raise InputError(f"keep: must be a fraction of variance in (0, 1], got {keep}")
        var = s[:r] ** 2
        r = int(np.searchsorted(np.cumsum(var) / var.sum(), keep - 1e-12) + 1)
    return U[:, :r], s[:r]


def canonical_correlations(X: ArrayLike, Y: ArrayLike) -> np.ndarray:
    """Canonical correlations ``[min(r_x, r_y)]``, descending (``r``: ranks of the centered matrices)."""
    X, Y = as_pair(X, Y, min_rows=3)
    Qx, _ = _basis(X)
    Qy, _ = _basis(Y)
    return np.clip(np.linalg.svd(Qx.T @ Qy, compute_uv=False), 0.0, 1.0)


def svcca(X: ArrayLike, Y: ArrayLike, keep: float = 0.99) -> float:
    """SVCCA similarity (mean canonical correlation after SVD reduction to ``keep`` of the variance).

    Args:
        X: ``[N, d1]``; Y: ``[N, d2]`` (rows: the same inputs).
        keep: fraction of variance each representation keeps (Raghu et al.: 0.99).
    """
    X, Y = as_pair(X, Y, min_rows=3)
    Qx, _ = _basis(X, keep)
    Qy, _ = _basis(Y, keep)
    rho = np.clip(np.linalg.svd(Qx.T @ Qy, compute_uv=False), 0.0, 1.0)
    return float(rho.mean())


def pwcca(X: ArrayLike, Y: ArrayLike) -> float:
    """Projection-weighted CCA similarity of Y to X (weights from X's canonical variates); see the module."""
    X, Y = as_pair(X, Y, min_rows=3)
    Qx, _ = _basis(X)
    Qy, _ = _basis(Y)
    U, rho, _ = np.linalg.svd(Qx.T @ Qy, full_matrices=False)
    H = Qx @ U  # canonical variates of X, unit norm, [N, k]
    alpha = np.abs(H.T @ center(X)).sum(axis=1)
    rho = np.clip(rho, 0.0, 1.0)
    return float(np.sum(alpha * rho) / np.sum(alpha))
