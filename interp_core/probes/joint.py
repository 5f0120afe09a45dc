"""Preconditioned joint L-BFGS for logistic probes that share one feature matrix (``interp_core.probes``).

A probe sweep fits many multinomial logistic problems; all the probes of one site (several variables, or a
task and its control) read the SAME standardised rows ``X [n, d]``. :func:`fit_logistic_joint` solves them
together, with three levers measured in ``benchmarks/probes.py``:

1. **Fewer iterations (preconditioning).** Problem ``j`` minimises, over ``beta_j = [W_j | b_j]``
   (``[n_out_j, p]``, ``p = d + 1`` with an intercept),

       f_j(beta) = (sum_i s_i CE(beta x~_i, y_i) + (l2_j / 2) ||W_j||^2) / sum_i s_i,   x~_i = [x_i, 1],

   scikit-learn's ``LogisticRegression`` objective. L-BFGS runs in whitened coordinates ``beta = gamma M``
   with ``M = A^{-1/2}``, ``A = c X~^T X~ / n + r E`` (``c = 1/4``, the logistic curvature scale; ``r`` the
   median ``l2_j / sum_i s_i``; ``E`` the identity without the intercept entry), computed once per feature
   matrix. This is a change of variables only: the function minimised is ``f_j(gamma M)``, exactly the same
   objective, so the optimum is the same; the stopping test is taken on the gradient in the ORIGINAL
   coordinates, ``max |grad_beta f_j| <= tol_j`` (scikit-learn's ``gtol``). With correlated features
   (residual streams) this cuts L-BFGS iterations several-fold (Nocedal & Wright 2006, sec. 7.2: L-BFGS with
   initial matrix ``H_0 = A^{-1}``). ``A`` is positive definite for any data because ``l2 > 0``. Forming
   ``A`` costs ``n d^2``, so very wide features solved for few outputs (``d > 256 R``, ``R`` the output rows
   solved together) skip it.
2. **Fewer passes (joint fitting).** Every evaluation stacks the coefficients of all problems still running
   into one ``[R, d]`` matrix: one product ``[R, d] @ X^T`` for the logits and one ``G [R, n] @ X`` for the
   gradients, instead of two passes over ``X`` per problem. The problems stay separate (each keeps its own
   L-BFGS memory, line search and stopping test), so the result equals separate fits.
3. **Cheaper passes.** The two products run in the probes' solver ``dtype`` (float32 by default); the losses
   are summed and the L-BFGS state kept in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

CURVATURE = 0.25  # the scale of the logistic loss's second derivative, p (1 - p) <= 1/4
WIDE = 256  # precondition while d <= WIDE * (output rows solved together)
MAX_STALLS = 10  # consecutive stalled iterations before giving up on tol
Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a float64 tensor over processes
REL_FTOL = 64 * 2.0 ** -52  # f stalls below this relative change (scipy L-BFGS-B's ftol, as sklearn calls it)


@dataclass
class LogisticTask:
    """One logistic problem on the shared rows: ``y [n]`` class indices (``n_out == 1``: 0/1), ``sw [n]``
    per-row weights (sample x class weights) or ``None``, the L2 strength ``l2`` (``1 / C``), the gradient
    tolerance and iteration cap, and an optional starting point ``start [n_out, p]`` in the standardised
    coordinates (used only where its objective is below the zero start's)."""

    y: torch.Tensor
    n_out: int
    sw: torch.Tensor | None
    l2: float
    tol: float = 1e-4
    max_iter: int = 1000
    start: torch.Tensor | None = None


def whitening(X: torch.Tensor, fit_intercept: bool, reg: float, curvature: float = CURVATURE,
              reduce: Reduce | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, M^{-1})``, ``M = A^{-1/2}`` with ``A = curvature * X~^T X~ / n + reg * E`` (float64 ``[p, p]``).

    ``X~ = [X, 1]`` with an intercept; ``E`` is the identity with a zero at the intercept. ``A`` is
    symmetric positive definite for ``reg > 0``; tiny eigenvalues from rounding are clipped at ``reg``.
    ``reduce`` sums the data terms over the processes that hold the other rows (see :func:`fit_logistic_joint`).
    """
    n, d = X.shape
    p = d + int(fit_intercept)
    stats = torch.cat([(X.T @ X).double().reshape(-1), X.sum(0, dtype=torch.float64),
                       torch.tensor([float(n)], dtype=torch.float64, device=X.device)])
    if reduce is not None:
        stats = reduce(stats)
    n = float(stats[-1])
    A = torch.empty(p, p, dtype=torch.float64, device=X.device)
    A[:d, :d] = stats[: d * d].view(d, d) / n
    if fit_intercept:
        m = stats[d * d: d * d + d] / n
        A[:d, d] = m
        A[d, :d] = m
        A[d, d] = 1.0
    A *= curvature
    A.diagonal()[:d] += reg
    A = 0.5 * (A + A.T)
    lam, V = torch.linalg.eigh(A)
    lam = lam.clamp_min(max(reg, 1e-12) * (0.5 if fit_intercept else 1.0))
    M = (V * lam.rsqrt()) @ V.T
    M_inv = (V * lam.sqrt()) @ V.T
    return M, M_inv


class _Objective:
    """Evaluates any subset of the tasks at once: one ``[R, d] @ X^T`` and one ``G @ X`` per call."""

    def __init__(self, X: torch.Tensor, tasks: list[LogisticTask], fit_intercept: bool, reduce: Reduce | None):
        self.X = X.contiguous()
        self.Xt = X.T.contiguous()
        self.d = X.shape[1]
        self.fit_intercept = fit_intercept
        self.tasks = tasks
        self.reduce = reduce
        dt, dev = X.dtype, X.device
        sums = torch.tensor([float(X.shape[0])] + [float(t.sw.sum()) if t.sw is not None else 0.0 for t in tasks],
                            dtype=torch.float64)
        sums = reduce(sums) if reduce is not None else sums
        self.n = float(sums[0])  # rows over every process
        self.scale, self.target, self.reg = [], [], []
        for t, sw_total in zip(tasks, sums[1:].tolist()):
            total = sw_total if t.sw is not None else self.n
            self.scale.append((t.sw / total).to(dt)[None, :] if t.sw is not None else None)
            # binary: the 0/1 targets [1, n]; multinomial: the class index per row [1, n] (no one-hot matrix)
            self.target.append(t.y.to(dt)[None, :] if t.n_out == 1 else t.y.to(dev, torch.long)[None, :])
            self.reg.append(float(t.l2) / total)
        self.minus_one = torch.full((1, X.shape[0]), -1.0, dtype=dt, device=dev)

    def __call__(self, idx: list[int], betas: list[torch.Tensor]) -> tuple[list[float], list[torch.Tensor]]:
        """``(f_j, grad_beta f_j [n_out_j, p] float64)`` for the tasks ``idx`` at ``betas`` (float64)."""
        d = self.d
        B = torch.cat(betas).to(self.X.dtype)
        Z = B[:, :d] @ self.Xt  # [R, n]
        if self.fit_intercept:
            Z += B[:, d:]
        G = torch.empty_like(Z)
        losses = []
        r = 0
        for j in idx:
            t = self.tasks[j]
            z, tg, sc = Z[r:r + t.n_out], self.target[j], self.scale[j]
            if t.n_out == 1:
                lo = torch.nn.functional.softplus(z) - tg * z
                g = torch.sigmoid(z) - tg
            else:
                logp = torch.log_softmax(z, dim=0)
                lo = -logp.gather(0, tg)
                g = logp.exp_().scatter_add_(0, tg, self.minus_one)
            if sc is not None:
                losses.append(float((lo * sc).sum(dtype=torch.float64)))
                g *= sc
            else:
                losses.append(float(lo.sum(dtype=torch.float64)) / self.n)
                g *= 1.0 / self.n
            G[r:r + t.n_out] = g
            r += t.n_out
        gW = (G @ self.X).double()
        if self.fit_intercept:
            grad = torch.cat([gW, G.sum(1).double()[:, None]], 1)
        else:
            grad = gW
        if self.reduce is not None:  # the data terms summed over the processes: the same f and grad on each
            packed = self.reduce(torch.cat([torch.tensor(losses, dtype=torch.float64, device=grad.device),
                                            grad.reshape(-1)]))
            losses, grad = packed[: len(idx)].tolist(), packed[len(idx):].view_as(grad).clone()
        fs, grads = [], []
        r = 0
        for n_, j in enumerate(idx):
            t, beta = self.tasks[j], betas[n_]
            g = grad[r:r + t.n_out]
            W = beta[:, :d]
            g[:, :d] += self.reg[j] * W
            fs.append(losses[n_] + 0.5 * self.reg[j] * float((W * W).sum()))
            grads.append(g)
            r += t.n_out
        return fs, grads


def fit_logistic_joint(X: torch.Tensor, tasks: list[LogisticTask], fit_intercept: bool = True, history: int = 10,
                       precondition: bool = True, max_ls: int = 25, reduce: Reduce | None = None
                       ) -> list[tuple[torch.Tensor, int, bool]]:
    """Minimise every task's objective (module docstring) on the shared standardised rows ``X [n, d]``.

    Products run in ``X.dtype``. Returns per task ``(beta [n_out, p] float64, iterations, converged)``; the
    coefficients are ``beta[:, :d]`` (``[n_out, d]``) and, with an intercept, ``beta[:, d]``.
    ``precondition=False`` (or ``d > 256 R``) runs the same lockstep L-BFGS in the original coordinates.

    ``reduce`` (``float64 tensor -> its sum over processes``, e.g. an all-reduce): ``X`` (and each task's
    ``y`` / ``sw``) hold this process's rows only; row counts, weight totals, the whitening statistics and
    every loss and gradient are summed with it, so every process takes the same steps and returns the
    solution on all rows (:func:`interp_core.distributed.fit_linear_probe`).
    """
    d = X.shape[1]
    p = d + int(fit_intercept)
    dev = X.device
    obj = _Objective(X, tasks, fit_intercept, reduce)
    K = len(tasks)
    noise = 16 * torch.finfo(X.dtype).eps  # relative rounding noise of f evaluated with products in X.dtype
    # whitening costs one Gram (n d^2, a compute-bound product) and saves ~100+ evaluations (4 n d R each,
    # memory-bound): worth it unless the features are wide next to the R output rows solved here
    precondition = precondition and d <= WIDE * sum(t.n_out for t in tasks)
    if precondition:
        regs = sorted(obj.reg)
        M, M_inv = whitening(X, fit_intercept, regs[len(regs) // 2], reduce=reduce)
    else:
        M = M_inv = torch.eye(p, dtype=torch.float64, device=dev)

    def to_beta(j: int, gam: torch.Tensor) -> torch.Tensor:
        return gam.view(tasks[j].n_out, p) @ M

    def to_gamma_grad(gb: torch.Tensor) -> torch.Tensor:
        return (gb @ M).reshape(-1)

    # starting points: the given start where it beats the zero start (f(0) = log(n_out), log 2 if binary)
    gam = [torch.zeros(t.n_out * p, dtype=torch.float64, device=dev) for t in tasks]
    with_start = [j for j, t in enumerate(tasks) if t.start is not None]
    for j in with_start:
        b0 = tasks[j].start.to(dev, torch.float64).reshape(tasks[j].n_out, p)
        if tasks[j].n_out > 1:  # the optimum has sum_k beta_k = 0 (softmax is shift-invariant, the penalty is not)
            b0 = b0 - b0.mean(0)
        gam[j] = (b0 @ M_inv).reshape(-1)
    f = [0.0] * K
    gb: list[torch.Tensor] = [torch.empty(0)] * K
    idx_all = list(range(K))
    fs, gs = obj(idx_all, [to_beta(j, gam[j]) for j in idx_all])
    for j in idx_all:
        f[j], gb[j] = fs[j], gs[j]
    back = [j for j in with_start if f[j] > math.log(max(tasks[j].n_out, 2))]
    if back:
        for j in back:
            gam[j].zero_()
        fs, gs = obj(back, [to_beta(j, gam[j]) for j in back])
        for n_, j in enumerate(back):
            f[j], gb[j] = fs[n_], gs[n_]
    g = [to_gamma_grad(gb[j]) for j in range(K)]
    S: list[list[torch.Tensor]] = [[] for _ in range(K)]
    Y: list[list[torch.Tensor]] = [[] for _ in range(K)]
    rho: list[list[float]] = [[] for _ in range(K)]
    scale = [1.0] * K
    n_iter = [0] * K
    best = [float(gb[j].abs().max()) for j in range(K)]
    stalls = [0] * K
    converged = [best[j] <= tasks[j].tol for j in range(K)]
    active = [j for j in range(K) if not converged[j]]
    while active:
        # search directions: two-loop recursion per task (vectors of n_out * p, cheap next to the products)
        dirs, gds, steps = {}, {}, {}
        for j in active:
            q = g[j].clone()
            alphas = []
            for s_, y_, r_ in zip(reversed(S[j]), reversed(Y[j]), reversed(rho[j])):
                a = r_ * float(s_ @ q)
                alphas.append(a)
                q -= a * y_
            q *= scale[j]
            for (s_, y_, r_), a in zip(zip(S[j], Y[j], rho[j]), reversed(alphas)):
                q += (a - r_ * float(y_ @ q)) * s_
            dj = -q
            gd = float(g[j] @ dj)
            if not gd < 0:  # numerical trouble: steepest descent
                dj, gd = -g[j], -float(g[j] @ g[j])
            dirs[j], gds[j] = dj, gd
            first = not S[j]
            steps[j] = 1.0 if (precondition or not first) else min(1.0, 1.0 / float(g[j].abs().sum()))
        # lockstep backtracking (Armijo, quadratic interpolation): the tasks still searching share products
        pending, found = list(active), {}
        for _ in range(max_ls):
            if not pending:
                break
            trial = {j: gam[j] + steps[j] * dirs[j] for j in pending}
            fs, gs = obj(pending, [to_beta(j, trial[j]) for j in pending])
            still = []
            for n_, j in enumerate(pending):
                t_, f_new = steps[j], fs[n_]
                armijo = math.isfinite(f_new) and f_new <= f[j] + 1e-4 * t_ * gds[j]
                # approximate Wolfe (Hager & Zhang 2005): near the optimum f changes below its rounding noise;
                # then a step that keeps f within the noise and lowers the slope enough is accepted
                approx = (math.isfinite(f_new) and f_new <= f[j] + noise * abs(f[j])
                          and float(to_gamma_grad(gs[n_]) @ dirs[j]) <= -0.8 * gds[j])
                if armijo or approx:
                    found[j] = (trial[j], f_new, gs[n_])
                    continue
                denom = 2.0 * (f_new - f[j] - gds[j] * t_) if math.isfinite(f_new) else math.inf
                t_q = -gds[j] * t_ * t_ / denom if denom > 0 else 0.5 * t_
                steps[j] = min(max(t_q, 0.1 * t_), 0.5 * t_)
                still.append(j)
            pending = still
        next_active = []
        for j in active:
            n_iter[j] += 1
            tol = tasks[j].tol
            if j not in found:  # no decrease possible at this precision: stop here
                converged[j] = float(gb[j].abs().max()) <= 10 * tol
                continue
            gam_new, f_new, gb_new = found[j]
            g_new = to_gamma_grad(gb_new)
            s_vec, y_vec = gam_new - gam[j], g_new - g[j]
            sy, yy = float(s_vec @ y_vec), float(y_vec @ y_vec)
            if sy > 1e-10 * yy:
                S[j].append(s_vec)
                Y[j].append(y_vec)
                rho[j].append(1.0 / sy)
                scale[j] = sy / yy
                if len(S[j]) > history:
                    S[j].pop(0)
                    Y[j].pop(0)
                    rho[j].pop(0)
            rel = abs(f[j] - f_new) / max(abs(f[j]), abs(f_new), 1.0)
            g_max = float(gb_new.abs().max())
            gam[j], f[j], gb[j], g[j] = gam_new, f_new, gb_new, g_new
            # a stall: f stays within rounding and the gradient does not reach a new low
            stalls[j] = stalls[j] + 1 if (rel < REL_FTOL and g_max >= best[j]) else 0
            best[j] = min(best[j], g_max)
            if g_max <= tol:
                converged[j] = True
            elif n_iter[j] < tasks[j].max_iter and stalls[j] < MAX_STALLS:
                next_active.append(j)
        active = next_active
    return [(to_beta(j, gam[j]), n_iter[j], bool(converged[j])) for j in range(K)]
