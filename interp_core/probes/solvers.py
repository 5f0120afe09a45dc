"""Solvers of the linear probes (``interp_core.probes``): a generic lockstep L-BFGS over K smooth problems
(:func:`lbfgs_many`) and the closed-form (weighted) ridge solution (:func:`ridge_solve`).

The logistic probes themselves are solved by the preconditioned joint L-BFGS of
:mod:`~interp_core.probes.joint` (whitened coordinates, one wide product per evaluation for every probe of a
feature matrix); ``benchmarks/probes.py`` measures it against scikit-learn's ``LogisticRegression`` at the same
gradient tolerance, and the tests check both solvers against scikit-learn's optima.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------- L-BFGS
FG = Callable[[int, torch.Tensor], tuple[float, torch.Tensor]]


def lbfgs_many(fg: FG, w0: torch.Tensor, max_iter: int = 500, tol: float = 1e-4, history: int = 10,
               max_ls: int = 25) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Minimise K independent smooth convex functions with L-BFGS in lockstep.

    ``fg(k, w) -> (f, grad)`` evaluates problem ``k`` at ``w`` (``[p]``). Each problem keeps its own curvature
    history, step size (backtracking Armijo line search with quadratic interpolation) and stopping test
    ``max |grad| <= tol``; converged problems drop out and cost nothing. The two-loop recursion runs
    vectorised over the problems still active.

    Returns ``(w [K, p], n_iter [K], converged [K])``.
    """
    K, p = w0.shape
    w = w0.clone()
    f = np.zeros(K)
    g = torch.empty_like(w)
    for k in range(K):
        f[k], g[k] = fg(k, w[k])
    S = torch.zeros(K, history, p, dtype=w.dtype, device=w.device)
    Y = torch.zeros_like(S)
    rho = torch.zeros(K, history, dtype=torch.float64, device=w.device)
    gamma = torch.ones(K, dtype=w.dtype, device=w.device)
    has_hist = np.zeros(K, dtype=bool)
    n_iter = np.zeros(K, dtype=int)
    converged = (g.abs().amax(1) <= tol).cpu().numpy()
    active = ~converged
    slot = 0
    for it in range(max_iter):
        idx = np.nonzero(active)[0]
        if len(idx) == 0:
            break
        ti = torch.as_tensor(idx, device=w.device)
        q = g[ti].clone()
        # two-loop recursion, newest to oldest; empty slots have rho = 0 and contribute nothing
        order = [(slot - 1 - j) % history for j in range(history)]
        alphas = {}
        for j in order:
            r = rho[ti, j].to(w.dtype)
            a = r * (S[ti, j] * q).sum(1)
            alphas[j] = a
            q -= a[:, None] * Y[ti, j]
        q *= gamma[ti][:, None]
        for j in reversed(order):
            r = rho[ti, j].to(w.dtype)
            b = r * (Y[ti, j] * q).sum(1)
            q += (alphas[j] - b)[:, None] * S[ti, j]
        d = -q
        gd = (g[ti] * d).sum(1)
        # a non-descent direction (numerical trouble) falls back to steepest descent
        bad = gd >= 0
        if bool(bad.any()):
            d[bad] = -g[ti][bad]
            gd[bad] = -(g[ti][bad] ** 2).sum(1)
        for n_, k in enumerate(idx):
            k = int(k)
            t = 1.0 if has_hist[k] else min(1.0, 1.0 / float(g[k].abs().sum()))
            f0, dphi0 = f[k], float(gd[n_])
            ok = False
            for _ in range(max_ls):
                w_new = w[k] + t * d[n_]
                f_new, g_new = fg(k, w_new)
                if math.isfinite(f_new) and f_new <= f0 + 1e-4 * t * dphi0:
                    ok = True
                    break
                denom = 2.0 * (f_new - f0 - dphi0 * t) if math.isfinite(f_new) else float("inf")
                t_q = -dphi0 * t * t / denom if denom > 0 else 0.5 * t
                t = min(max(t_q, 0.1 * t), 0.5 * t)
            n_iter[k] += 1
            if not ok:  # no decrease possible at float precision: stop here
                active[k] = False
                converged[k] = bool(g[k].abs().max() <= 10 * tol)
                continue
            s_vec = w_new - w[k]
            y_vec = g_new - g[k]
            sy = float((s_vec.double() * y_vec.double()).sum())
            if sy > 1e-10 * float((y_vec.double() ** 2).sum()):
                S[k, slot] = s_vec
                Y[k, slot] = y_vec
                rho[k, slot] = 1.0 / sy
                gamma[k] = sy / float((y_vec.double() ** 2).sum())
                has_hist[k] = True
            else:
                rho[k, slot] = 0.0
            rel = abs(f0 - f_new) / max(abs(f0), abs(f_new), 1.0)
            w[k], f[k], g[k] = w_new, f_new, g_new
            if float(g_new.abs().max()) <= tol:
                converged[k] = True
                active[k] = False
            elif rel < 1e-12:
                active[k] = False
        slot = (slot + 1) % history
    return w, n_iter, converged


def ridge_solve(Xs: torch.Tensor, Y: torch.Tensor, sw: torch.Tensor | None, l2: float,
                fit_intercept: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimiser ``(W [d, t], b [t])`` of ``sum_i s_i ||y_i - x_i W - b||^2 + l2 ||W||^2`` in float64
    (scikit-learn's ``Ridge(alpha=l2)``; ``l2 = 0`` is least squares, solved by ``lstsq``)."""
    Xs, Y = Xs.double(), Y.double()
    if fit_intercept:
        if sw is not None:
            wsum = float(sw.sum())
            xm = (sw[:, None] * Xs).sum(0) / wsum
            ym = (sw[:, None] * Y).sum(0) / wsum
        else:
            xm, ym = Xs.mean(0), Y.mean(0)
    else:
        xm = torch.zeros(Xs.shape[1], dtype=torch.float64, device=Xs.device)
        ym = torch.zeros(Y.shape[1], dtype=torch.float64, device=Xs.device)
    Xc, Yc = Xs - xm, Y - ym
    if sw is not None:
        r = sw.sqrt()[:, None]
        Xc, Yc = Xc * r, Yc * r
    if l2 > 0:
        A = Xc.T @ Xc + l2 * torch.eye(Xc.shape[1], dtype=torch.float64, device=Xs.device)
        W = torch.linalg.solve(A, Xc.T @ Yc)
    else:
        W = torch.linalg.lstsq(Xc.cpu(), Yc.cpu(), driver="gelsd").solution.to(Xs.device)
    return W, ym - xm @ W
