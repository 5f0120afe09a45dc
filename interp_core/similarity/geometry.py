"""Geometry-based similarity: orthogonal Procrustes distance, RSA and mutual k-nearest-neighbour alignment.

- **Procrustes distance** (Ding, Denain & Steinhardt 2021, "Grounding Representation Similarity with
  Statistical Testing", NeurIPS; Williams et al. 2021): center each representation, scale it to unit Frobenius
  norm, then ``d = min_R ||X - Y R||_F^2 = 2 - 2 ||X^T Y||_*`` over orthogonal ``R`` (narrower side padded with
  zeros). A *distance* in [0, 2], 0 for identical representations; invariant to orthogonal maps, isotropic
  scaling and translation, NOT to general invertible linear maps.
- **RSA** (Kriegeskorte, Mur & Bandettini 2008, "Representational similarity analysis", Front. Syst.
  Neurosci.): the representational dissimilarity matrix (RDM, pairwise distances between inputs) of each
  representation, compared over its upper triangle by Spearman (default, ``scipy.stats.spearmanr``) or Pearson
  correlation (``scipy.stats.pearsonr``). A similarity in [-1, 1]. Invariances follow the RDM distance:

  - ``"euclidean"``: orthogonal maps, translation and isotropic scaling (which scales every distance alike);
  - ``"correlation"`` (the default; ``1 - Pearson`` between two inputs' rows, each row centered over its own
    *features*): isotropic scaling and any per-row rescaling or per-row constant shift, but NOT orthogonal
    maps (rotating the features changes each row's mean over features) and NOT translation by a vector
    (adding ``b`` to every row shifts each row's feature mean differently unless ``b`` is constant);
  - ``"cosine"``: orthogonal maps and isotropic (also per-row) scaling, NOT translation.

  Spearman adds invariance to monotone maps of the RDM. None is invariant to general invertible linear maps.
- **Mutual k-NN** (Huh, Cheung, Wang & Isola 2024, "The Platonic Representation Hypothesis", ICML): the mean over
  inputs of ``|N_k^X(i) & N_k^Y(i)| / k``, with ``N_k(i)`` the k nearest other inputs (cosine similarity of
  rows, as in the paper, or euclidean). A similarity in [0, 1] (chance: about ``k / (N - 1)``); invariant to
  orthogonal maps and isotropic scaling (cosine: not translation; euclidean: also translation).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.stats import pearsonr, spearmanr

from ..errors import InputError
from ._arrays import ArrayLike, as_pair, center


def procrustes(X: ArrayLike, Y: ArrayLike) -> float:
    """Orthogonal Procrustes distance in [0, 2] (0 = identical up to rotation, scale and shift)."""
    X, Y = as_pair(X, Y)
    Xc, Yc = center(X), center(Y)
    nx, ny = np.linalg.norm(Xc), np.linalg.norm(Yc)
    if nx == 0 or ny == 0:
        raise InputError("a representation is constant over the inputs; the Procrustes distance is undefined")
    nuc = np.linalg.svd((Xc / nx).T @ (Yc / ny), compute_uv=False).sum()
    return float(max(2.0 - 2.0 * nuc, 0.0))


def rdm(X: ArrayLike, metric: Literal["correlation", "euclidean", "cosine"] = "correlation") -> np.ndarray:
    """Condensed representational dissimilarity vector ``[N (N - 1) / 2]`` (upper triangle, row-major)."""
    from ._arrays import as_matrix

    X = as_matrix(X)
    if metric == "correlation":
        Z = X - X.mean(1, keepdims=True)
    elif metric in ("cosine", "euclidean"):
        Z = X
    else:
        raise InputError(f"metric: must be 'correlation', 'euclidean' or 'cosine', got {metric!r}")
    if metric == "euclidean":
        sq = (Z * Z).sum(1)
        D = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * Z @ Z.T, 0.0))
    else:
        norms = np.linalg.norm(Z, axis=1)
        if np.any(norms == 0):
            raise InputError(f"RDM metric {metric!r} is undefined for a row with zero norm (after centering for "
                             f"'correlation'); use metric='euclidean'")
        Zn = Z / norms[:, None]
        D = 1.0 - Zn @ Zn.T
    return D[np.triu_indices(X.shape[0], k=1)]


def _check_not_constant(v: np.ndarray, what: str) -> None:
    if np.ptp(v) <= 1e-15 * max(1.0, float(np.abs(v).max())):
        raise InputError(f"{what}: its RDM is constant (all inputs equally distant), so the RDM correlation is "
                         f"undefined; use other inputs or another measure")


def rsa(X: ArrayLike, Y: ArrayLike, metric: Literal["correlation", "euclidean", "cosine"] = "correlation",
        compare: Literal["spearman", "pearson"] = "spearman") -> float:
    """RSA: correlation between the RDMs of X and Y (see the module docstring).

    Args:
        X: ``[N, d1]``; Y: ``[N, d2]`` (rows: the same inputs), N >= 3.
        metric: RDM distance between inputs.
        compare: ``"spearman"`` (rank correlation, ties averaged) or ``"pearson"``.
    """
    X, Y = as_pair(X, Y, min_rows=3)
    if compare not in ("spearman", "pearson"):
        raise InputError(f"compare: must be 'spearman' or 'pearson', got {compare!r}")
    a, b = rdm(X, metric), rdm(Y, metric)
    _check_not_constant(a, "X")
    _check_not_constant(b, "Y")
    r = spearmanr(a, b).statistic if compare == "spearman" else pearsonr(a, b).statistic
    return float(np.clip(r, -1.0, 1.0))


def knn_indices(X: np.ndarray, k: int, metric: str = "cosine", chunk: int = 2048) -> np.ndarray:
    """Indices ``[N, k]`` of each row's k nearest other rows (rows processed in chunks: memory ``chunk x N``)."""
    if metric == "cosine":
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        Z = X / np.where(norms == 0, 1.0, norms)
        sq = None
    elif metric == "euclidean":
        Z = X
        sq = (X * X).sum(1)
    else:
        raise InputError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    n = X.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, chunk):
        S = Z[s:s + chunk] @ Z.T  # higher = nearer
        if sq is not None:
            S = 2 * S - sq[None, :] - sq[s:s + chunk, None]
        S[np.arange(S.shape[0]), np.arange(s, s + S.shape[0])] = -np.inf
        out[s:s + chunk] = np.argpartition(-S, k - 1, axis=1)[:, :k]
    return out


def mutual_knn(X: ArrayLike, Y: ArrayLike, k: int = 10, metric: Literal["cosine", "euclidean"] = "cosine") -> float:
    """Mutual k-NN alignment (Huh et al. 2024) in [0, 1]; needs ``N > k``."""
    X, Y = as_pair(X, Y)
    n = X.shape[0]
    if not 1 <= k < n:
        raise InputError(f"k must be in [1, N - 1] = [1, {n - 1}], got {k}")
    a, b = knn_indices(X, k, metric), knn_indices(Y, k, metric)
    hits = 0
    for s in range(0, n, 4096):  # [rows, k, k] comparisons, bounded memory
        hits += int((a[s:s + 4096, :, None] == b[s:s + 4096, None, :]).sum())
    return float(hits / (n * k))
