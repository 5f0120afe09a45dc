"""Centered kernel alignment (CKA) with linear or RBF kernels, biased or debiased.

Definitions (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited", ICML):

- ``HSIC(K, L) = tr(K H L H) / (n - 1)^2`` with ``H = I - 11^T / n`` the centering matrix;
- ``CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``;
- linear kernel ``K = X X^T``: ``CKA = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` (``_c``: centered
  columns), computed in feature space without any ``N x N`` matrix when ``d`` is small;
- RBF kernel ``K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2))`` with the bandwidth set from the data by one of two
  median conventions, chosen by name with ``median=``:

  - ``"pairs"`` (the default): ``sigma = bandwidth * median_{i<j} ||x_i - x_j||``, the median distance over the
    ``N (N - 1) / 2`` distinct pairs;
  - ``"all"``: ``sigma^2 = bandwidth^2 * median_{i,j} ||x_i - x_j||^2`` over all ``N^2`` ordered pairs
    *including* the ``N`` zero distances of the diagonal, exactly as Kornblith et al.'s reference code
    (``gram_rbf(x, threshold)`` in google-research/representation_similarity, ``threshold = bandwidth``).
    The diagonal zeros pull the median down (by an amount that shrinks with N), so ``"all"`` gives a slightly
    smaller sigma than ``"pairs"`` for the same ``bandwidth``.

Debiased CKA replaces HSIC by the unbiased estimator of Song et al. 2012 ("Feature Selection via Dependence
Maximization", JMLR), as used by Nguyen, Raghu & Kornblith 2021 ("Do Wide and Deep Networks Learn the Same
Things?", ICLR): with ``K~`` = ``K`` with its diagonal set to 0,
``HSIC_u = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))``.

Similarity in [0, 1] (debiased: can be slightly negative for unrelated representations). Linear CKA is
invariant to orthogonal transforms, isotropic scaling and translation, NOT to arbitrary invertible linear
maps. RBF CKA with either median-scaled bandwidth has the same invariances (distances are preserved by orthogonal
maps and translations and scale with isotropic scaling, which the median rescales away). The table in
:mod:`interp_core.similarity` lists these properties; a test checks every row against the code.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..errors import InputError
from ._arrays import ArrayLike, as_pair, center


def linear_gram(X: np.ndarray) -> np.ndarray:
    """``X X^T`` ``[N, N]``."""
    return X @ X.T


MEDIANS = ("pairs", "all")


def rbf_gram(X: np.ndarray, bandwidth: float = 1.0, median: Literal["pairs", "all"] = "pairs") -> np.ndarray:
    """RBF Gram matrix ``[N, N]`` with ``sigma`` from the median convention ``median`` (module docstring)."""
    sq = np.sum(X * X, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * X @ X.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    if median == "pairs":
        sigma2 = (bandwidth * np.median(np.sqrt(d2[np.triu_indices(X.shape[0], k=1)]))) ** 2
    elif median == "all":
        sigma2 = bandwidth ** 2 * np.median(d2)
    else:
        raise InputError(f"median: must be one of {MEDIANS} (the RBF bandwidth convention), got {median!r}")
    if sigma2 <= 0:
        raise InputError(f"the RBF bandwidth (median={median!r} of the pairwise distances) is 0: most rows are "
                         f"identical; use kernel='linear' or median='pairs'")
    return np.exp(-d2 / (2.0 * sigma2))


def hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Biased HSIC ``tr(K H L H) / (n-1)^2`` (Gretton et al. 2005)."""
    n = K.shape[0]
    Kc = K - K.mean(0, keepdims=True) - K.mean(1, keepdims=True) + K.mean()
    return float(np.sum(Kc * L) / (n - 1) ** 2)


def unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC of Song et al. 2012 (eq. 5); needs ``n >= 4``."""
    n = K.shape[0]
    if n < 4:
        raise InputError(f"the unbiased HSIC needs at least 4 rows, got {n}")
    Kt = K.copy()
    Lt = L.copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    k1, l1 = Kt.sum(1), Lt.sum(1)
    term = np.sum(Kt * Lt) + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(k1 @ l1)
    return float(term / (n * (n - 3)))


def _cka_from_grams(K: np.ndarray, L: np.ndarray, debiased: bool) -> float:
    f = unbiased_hsic if debiased else hsic
    kl, kk, ll = f(K, L), f(K, K), f(L, L)
    if kk <= 0 or ll <= 0:
        raise InputError("a representation has zero (or, debiased, non-positive) self-HSIC: it is constant "
                         "over the inputs, so CKA is undefined")
    return float(kl / np.sqrt(kk * ll))


def linear_cka_features(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA in feature space: ``||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)``."""
    Xc, Yc = center(X), center(Y)
    xy = np.linalg.norm(Xc.T @ Yc) ** 2
    xx = np.linalg.norm(Xc.T @ Xc)
    yy = np.linalg.norm(Yc.T @ Yc)
    if xx == 0 or yy == 0:
        raise InputError("a representation is constant over the inputs, so CKA is undefined")
    return float(xy / (xx * yy))


def cka(X: ArrayLike, Y: ArrayLike, kernel: Literal["linear", "rbf"] = "linear", debiased: bool = False,
        bandwidth: float = 1.0, median: Literal["pairs", "all"] = "pairs") -> float:
    """Centered kernel alignment between two representations of the same N inputs.

    Args:
        X: ``[N, d1]`` feature rows (rows = inputs); Y: ``[N, d2]`` for the same inputs in the same order.
        kernel: ``"linear"`` or ``"rbf"``.
        debiased: use the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021); needs ``N >= 4``.
        bandwidth: RBF only: ``sigma`` as a fraction of the median pairwise distance (Kornblith et al. use
            0.2-1.0; 1.0 is their reference code's default).
        median: RBF only: ``"pairs"`` (default; median distance over distinct pairs ``i < j``) or ``"all"``
            (median squared distance over all ``N^2`` pairs including the diagonal, as Kornblith et al.'s
            reference code); see the module docstring.

    Returns:
        Similarity, 1 for identical representations (up to the invariances in the module docstring).
    """
    X, Y = as_pair(X, Y, min_rows=4 if debiased else 2)
    if kernel == "linear":
        if not debiased and max(X.shape[1], Y.shape[1]) <= X.shape[0]:
            return linear_cka_features(X, Y)
        return _cka_from_grams(linear_gram(X), linear_gram(Y), debiased)
    if kernel == "rbf":
        if not bandwidth > 0:
            raise InputError(f"bandwidth must be > 0 (a fraction of the median distance), got {bandwidth}")
        if median not in MEDIANS:
            raise InputError(f"median: must be one of {MEDIANS} (the RBF bandwidth convention), got {median!r}")
        return _cka_from_grams(rbf_gram(X, bandwidth, median), rbf_gram(Y, bandwidth, median), debiased)
    raise InputError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
