"""Streaming linear CKA: accumulate over batches, never hold all N rows nor an ``N x N`` matrix.

Two accumulators, both with ``update(X_batch, Y_batch)`` and ``value()`` (or ``matrix()`` for many layers):

- :class:`LinearCKAAccumulator` — the *exact* full-data linear CKA (biased, or debiased with the unbiased HSIC
  of Song et al. 2012) computed in feature space. It accumulates ``X^T X``, ``Y^T Y``, ``X^T Y``, column sums
  and (debiased) a few norm-weighted sums, so memory is ``O(d^2)`` whatever N. Every term of the unbiased
  HSIC with a linear kernel is a function of these sums: with ``a_i``, ``b_i`` the rows,
  ``tr(K~L~) = ||A^T B||_F^2 - sum_i |a_i|^2 |b_i|^2``, ``1^T K~ 1 = |sum_i a_i|^2 - sum_i |a_i|^2`` and
  ``1^T K~ L~ 1 = s_a^T A^T B s_b - s_a^T sum_i a_i |b_i|^2 - s_b^T sum_i b_i |a_i|^2 + sum_i |a_i|^2 |b_i|^2``.
  Rows are shifted by the first batch's mean before accumulating (HSIC, biased and unbiased, is invariant
  to translation), which keeps the float64 sums well conditioned.
- :class:`MinibatchCKA` — the minibatch CKA of Nguyen, Raghu & Kornblith 2021 ("Do Wide and Deep Networks
  Learn the Same Things?", ICLR): ``CKA_mb = mean_b HSIC_u(K_b, L_b) / sqrt(mean_b HSIC_u(K_b, K_b) mean_b
  HSIC_u(L_b, L_b))`` over minibatches ``b`` (``b x b`` Gram matrices only). With the unbiased HSIC (default)
  it estimates the same population quantity as full-batch debiased CKA, independent of the batch size.

Both accept lists of matrices (one per layer) for X and Y and then give the whole layer x layer matrix from
one pass over the data: the cross-products of all layer pairs come from one matrix product per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError

Batch = Any  # [b, d] tensor or array, or a list of them (one per layer)


def _as_list(X: Batch, dtype: torch.dtype) -> list[torch.Tensor]:
    items = list(X) if isinstance(X, (list, tuple)) else [X]
    out = []
    for t in items:
        t = torch.as_tensor(t).detach()
        if t.dim() == 1:
            t = t[:, None]
        if t.dim() != 2:
            raise InputError(f"batches must be [b, d] feature rows, got shape {tuple(t.shape)}")
        t = t.to(device="cpu", dtype=dtype)
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"a batch of feature rows {tuple(t.shape)} holds NaN or infinite values; CKA needs "
                             f"finite activations: drop or clean those rows first")
        out.append(t)
    return out


def _offsets(dims: Sequence[int]) -> list[slice]:
    s, out = 0, []
    for d in dims:
        out.append(slice(s, s + d))
        s += d
    return out


class LinearCKAAccumulator:
    """Exact linear CKA over all rows, streamed; memory ``O((sum d)^2)``, see the module docstring.

    Args:
        debiased: use the unbiased HSIC estimator (needs at least 4 rows in total).
        dtype: accumulation dtype (float64 keeps 50,000+ rows exact to ~1e-10).

    ``update(X, Y)`` takes ``[b, d_x]`` and ``[b, d_y]`` batches (the same b inputs), or lists of them (layers
    of model A and of model B); ``value()`` gives the CKA (single pair) and ``matrix()`` the ``[L_x, L_y]``
    matrix.
    """

    def __init__(self, debiased: bool = False, dtype: torch.dtype = torch.float64):
        self.debiased = debiased
        self.dtype = dtype
        self.n_ = 0
        self._init = False

    def _setup(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
        self.dims_x_ = [x.shape[1] for x in xs]
        self.dims_y_ = [y.shape[1] for y in ys]
        self._sx, self._sy = _offsets(self.dims_x_), _offsets(self.dims_y_)
        self._shift_x = torch.cat([x.mean(0) for x in xs])
        self._shift_y = torch.cat([y.mean(0) for y in ys])
        dx, dy, lx, ly = sum(self.dims_x_), sum(self.dims_y_), len(xs), len(ys)
        z = lambda *s: torch.zeros(*s, dtype=self.dtype)  # noqa: E731
        self._xy = z(dx, dy)
        self._sum_x, self._sum_y = z(dx), z(dy)
        self._xx = [z(d, d) for d in self.dims_x_]
        self._yy = [z(d, d) for d in self.dims_y_]
        if self.debiased:
            self._x_ny = z(dx, ly)  # sum_i a_i |b_i|^2 for every (layer of x, layer of y)
            self._y_nx = z(dy, lx)
            self._nx_ny = z(lx, ly)  # sum_i |a_i|^2 |b_i|^2
            self._nx, self._ny = z(lx), z(ly)  # sum_i |a_i|^2
            self._x_nx = [z(d) for d in self.dims_x_]  # sum_i a_i |a_i|^2
            self._y_ny = [z(d) for d in self.dims_y_]
            self._nx2, self._ny2 = z(lx), z(ly)  # sum_i |a_i|^4
        self._init = True

    def update(self, X: Batch, Y: Batch) -> "LinearCKAAccumulator":
        xs, ys = _as_list(X, self.dtype), _as_list(Y, self.dtype)
        b = {t.shape[0] for t in xs + ys}
        if len(b) != 1:
            raise InputError(f"all batches in one update must have the same rows (inputs), got sizes {sorted(b)}")
        if not self._init:
            self._setup(xs, ys)
        elif [x.shape[1] for x in xs] != self.dims_x_ or [y.shape[1] for y in ys] != self.dims_y_:
            raise InputError(f"feature sizes changed between batches: first {self.dims_x_} / {self.dims_y_}, now "
                             f"{[x.shape[1] for x in xs]} / {[y.shape[1] for y in ys]}")
        A = torch.cat(xs, 1) - self._shift_x
        B = torch.cat(ys, 1) - self._shift_y
        self.n_ += A.shape[0]
        self._xy += A.T @ B
        self._sum_x += A.sum(0)
        self._sum_y += B.sum(0)
        for k, s in enumerate(self._sx):
            self._xx[k] += A[:, s].T @ A[:, s]
        for k, s in enumerate(self._sy):
            self._yy[k] += B[:, s].T @ B[:, s]
        if self.debiased:
            na = torch.stack([(A[:, s] ** 2).sum(1) for s in self._sx], 1)  # [b, Lx]
            nb = torch.stack([(B[:, s] ** 2).sum(1) for s in self._sy], 1)
            self._x_ny += A.T @ nb
            self._y_nx += B.T @ na
            self._nx_ny += na.T @ nb
            self._nx += na.sum(0)
            self._ny += nb.sum(0)
            self._nx2 += (na ** 2).sum(0)
            self._ny2 += (nb ** 2).sum(0)
            for k, s in enumerate(self._sx):
                self._x_nx[k] += A[:, s].T @ na[:, k]
            for k, s in enumerate(self._sy):
                self._y_ny[k] += B[:, s].T @ nb[:, k]
        return self

    # ------------------------------------------------------------------ HSIC from the sums
    def _biased(self, G: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        n = self.n_
        C = G - torch.outer(s1, s2) / n
        return (C ** 2).sum() / (n - 1) ** 2

    def _unbiased(self, G, s1, s2, v1_n2, v2_n1, n1n2, n1, n2) -> torch.Tensor:
        n = self.n_
        t1 = (G ** 2).sum() - n1n2
        t2 = (s1 @ s1 - n1) * (s2 @ s2 - n2)
        t3 = s1 @ G @ s2 - s1 @ v1_n2 - s2 @ v2_n1 + n1n2
        return (t1 + t2 / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * t3) / (n * (n - 3))

    def _self_hsic(self, which: str, k: int) -> torch.Tensor:
        sl = (self._sx if which == "x" else self._sy)[k]
        G = (self._xx if which == "x" else self._yy)[k]
        s = (self._sum_x if which == "x" else self._sum_y)[sl]
        if not self.debiased:
            return self._biased(G, s, s)
        v = (self._x_nx if which == "x" else self._y_ny)[k]
        nn_ = (self._nx2 if which == "x" else self._ny2)[k]
        nrm = (self._nx if which == "x" else self._ny)[k]
        return self._unbiased(G, s, s, v, v, nn_, nrm, nrm)

    def matrix(self) -> np.ndarray:
        """``[L_x, L_y]`` CKA between every layer of X and every layer of Y over all rows seen."""
        need = 4 if self.debiased else 2
        if not self._init or self.n_ < need:
            raise InputError(f"need at least {need} rows before computing CKA, got {self.n_}; call update() first")
        hx = [self._self_hsic("x", k) for k in range(len(self._sx))]
        hy = [self._self_hsic("y", j) for j in range(len(self._sy))]
        out = np.zeros((len(hx), len(hy)))
        for k, sx in enumerate(self._sx):
            for j, sy in enumerate(self._sy):
                G = self._xy[sx, sy]
                if self.debiased:
                    h = self._unbiased(G, self._sum_x[sx], self._sum_y[sy], self._x_ny[sx, j], self._y_nx[sy, k],
                                       self._nx_ny[k, j], self._nx[k], self._ny[j])
                else:
                    h = self._biased(G, self._sum_x[sx], self._sum_y[sy])
                den = torch.sqrt(hx[k] * hy[j]) if hx[k] > 0 and hy[j] > 0 else torch.tensor(float("nan"))
                out[k, j] = float(h / den)
        return out

    def value(self) -> float:
        """CKA of the single pair (use :meth:`matrix` for lists of layers)."""
        m = self.matrix()
        if m.shape != (1, 1):
            raise InputError(f"this accumulator holds {m.shape[0]} x {m.shape[1]} layer pairs; use matrix()")
        return float(m[0, 0])


class MinibatchCKA:
    """Minibatch linear CKA (Nguyen et al. 2021): per-batch HSIC averaged over batches, see module docstring.

    Args:
        debiased: unbiased HSIC per batch (default, as in the paper); each batch needs at least 4 rows.

    ``update(X, Y)`` with ``[b, d]`` batches or lists of them; ``value()`` / ``matrix()`` as
    :class:`LinearCKAAccumulator`. Memory: ``O(b^2 L)`` per batch.
    """

    def __init__(self, debiased: bool = True, dtype: torch.dtype = torch.float64):
        self.debiased = debiased
        self.dtype = dtype
        self.n_batches_ = 0
        self.n_ = 0

    def _hsic(self, Ks: torch.Tensor, Ls: torch.Tensor) -> torch.Tensor:
        """HSIC between every Gram in ``Ks`` ``[P, b, b]`` and every Gram in ``Ls`` ``[Q, b, b]`` -> ``[P, Q]``."""
        n = Ks.shape[-1]
        if self.debiased:
            eye = torch.eye(n, dtype=Ks.dtype)
            Kt, Lt = Ks * (1 - eye), Ls * (1 - eye)
            t1 = Kt.reshape(len(Kt), -1) @ Lt.reshape(len(Lt), -1).T
            k1, l1 = Kt.sum(-1), Lt.sum(-1)  # [P, b], [Q, b]
            t2 = torch.outer(k1.sum(-1), l1.sum(-1)) / ((n - 1) * (n - 2))
            t3 = 2.0 / (n - 2) * (k1 @ l1.T)
            return (t1 + t2 - t3) / (n * (n - 3))
        H = torch.eye(n, dtype=Ks.dtype) - 1.0 / n
        Kc = H @ Ks @ H
        return Kc.reshape(len(Kc), -1) @ Ls.reshape(len(Ls), -1).T / (n - 1) ** 2

    def update(self, X: Batch, Y: Batch) -> "MinibatchCKA":
        xs, ys = _as_list(X, self.dtype), _as_list(Y, self.dtype)
        b = {t.shape[0] for t in xs + ys}
        if len(b) != 1:
            raise InputError(f"all batches in one update must have the same rows (inputs), got sizes {sorted(b)}")
        b = b.pop()
        if self.debiased and b < 4:
            raise InputError(f"debiased minibatch CKA needs batches of at least 4 rows, got {b}")
        Ks = torch.stack([x @ x.T for x in xs])
        Ls = torch.stack([y @ y.T for y in ys])
        xy, xx, yy = self._hsic(Ks, Ls), torch.diagonal(self._hsic(Ks, Ks)), torch.diagonal(self._hsic(Ls, Ls))
        if self.n_batches_ == 0:
            self._xy, self._xx, self._yy = xy, xx, yy
        else:
            if xy.shape != self._xy.shape:
                raise InputError(f"number of layers changed between batches: {tuple(self._xy.shape)} -> "
                                 f"{tuple(xy.shape)}")
            self._xy, self._xx, self._yy = self._xy + xy, self._xx + xx, self._yy + yy
        self.n_batches_ += 1
        self.n_ += b
        return self

    def matrix(self) -> np.ndarray:
        if self.n_batches_ == 0:
            raise InputError("no batches seen; call update() first")
        den = torch.sqrt(torch.outer(self._xx, self._yy).clamp_min(0))
        out = (self._xy / den).numpy()
        out[(den <= 0).numpy()] = np.nan  # a representation constant within every batch: CKA is undefined
        return out

    def value(self) -> float:
        m = self.matrix()
        if m.shape != (1, 1):
            raise InputError(f"this accumulator holds {m.shape[0]} x {m.shape[1]} layer pairs; use matrix()")
        return float(m[0, 0])
