"""Probes: linear and MLP read-outs of activations, with control tasks and site sweeps.

- :class:`LinearProbe` — ``kind="logistic"`` (multinomial logistic regression with L2; binary problems use
  one sigmoid output, as scikit-learn does), ``"ridge_classifier"`` (ridge regression on ±1 targets,
  argmax), ``"linear"`` (least squares) and ``"ridge"`` (L2-regularised least squares).
- :class:`MLPProbe` — a small multilayer perceptron (classifier or regressor).
- :func:`probe_sites` — one probe per site of a :class:`~interp_core.hooked.HookedModel`, fitted together,
  returned as a :class:`ProbeSweepResult` (tidy table + ``.plot()``).

The API follows scikit-learn: the constructor stores parameters only, ``fit(X, y)`` returns ``self``, learned
state ends in ``_``, ``predict`` / ``predict_proba`` / ``score`` / ``get_params`` / ``set_params`` behave as
in scikit-learn, and using an unfitted probe raises :class:`NotFittedError`. ``X`` is ``[N, d]`` feature rows
(e.g. ``cache.features(site, pool=...)``), ``y`` is ``[N]`` labels (classifiers) or ``[N]`` / ``[N, t]``
targets (regressors); numpy arrays and tensors are both accepted.

**Objectives and conventions.**

- Logistic: minimise ``sum_i s_i * CE_i + (l2 / 2) * ||W||^2`` (intercept not penalised), where ``s_i`` are
  sample weights (class weights included). This is scikit-learn's ``LogisticRegression(C=1 / l2)``; with
  ``standardize=True`` (default) the penalty applies to the standardised features, i.e. it matches
  ``make_pipeline(StandardScaler(), LogisticRegression(C=1 / l2))``. Solved full-batch by L-BFGS in torch
  (float32, analytic gradients) to ``max |grad| <= tol`` of the objective divided by ``sum_i s_i`` (the same
  stopping rule as scikit-learn's ``gtol``).
- Ridge / ridge classifier: minimise ``sum_i s_i (y_i - x_i W - b)^2 + l2 ||W||^2`` (scikit-learn's ``Ridge(
  alpha=l2)``, ``RidgeClassifier(alpha=l2)``), solved in closed form in float64. ``"linear"`` is ``l2 = 0``.
- ``class_weight="balanced"`` weights class ``c`` by ``N / (n_classes * N_c)``, as scikit-learn.
- Standardisation uses the unweighted mean and standard deviation of the training rows.

**Directions.** ``coef_`` (``[n_outputs, d]``) and ``intercept_`` are expressed in the ORIGINAL (unstandardised)
feature space: ``decision(x) = x @ coef_.T + intercept_``. ``direction_(label)`` is the gradient of the
decision value for ``label`` with respect to ``x`` (unit norm by default) — the direction to steer or to
project out at the site. For a multinomial probe the per-class weights sum to zero at the optimum (the L2
penalty removes softmax's shift freedom), so ``coef_[c]`` already contrasts class ``c`` with the average.

**Control tasks and selectivity** (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control
Tasks", EMNLP). A control task gives every input *type* one label drawn at random from the empirical label
distribution (for regression: one target value drawn from the empirical targets); all rows of a type share
it. Selectivity = held-out task score - held-out control score; a probe that is selective reads the
property from the representation rather than memorising inputs. The *type* of a row is given by
``control_types=`` (e.g. a word type, a patch identity), else by ``groups=`` (the input identity, e.g. the
image id shared by all position rows of one image), else identical feature rows form one type. For
continuous activations every distinct input is then its own type, and since the held-out split never shares
a type with training when types are groups, the held-out control score measures what a probe can say about
arbitrary labels of unseen inputs (chance level unless it exploits label frequencies); pass
``control_types`` shared across the split (as Hewitt & Liang's word types are) to measure memorisation. With
``control=True``, ``fit`` splits the data (by ``groups`` when given, e.g. image id or episode, so rows of one
group never straddle the split), fits the task and the control probe on the training part, scores both on the
held-out part (``task_score_``, ``control_score_``, ``selectivity_``), then fits the probe itself on all rows.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .errors import InputError, NotFittedError, SiteError

logger = logging.getLogger(__name__)

ArrayLike = Any  # numpy array, torch tensor or nested sequence
KINDS = ("logistic", "ridge_classifier", "linear", "ridge")




# ---------------------------------------------------------------------------------------------- validation
def _as_features(X: ArrayLike, what: str = "X") -> torch.Tensor:
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    elif not isinstance(X, torch.Tensor):
        X = torch.as_tensor(np.asarray(X))
    if X.dim() != 2:
        raise InputError(f"{what} must be 2-D [N rows, d features], got shape {tuple(X.shape)}; use "
                         f"cache.features(site, pool=...) to turn an activation into rows")
    if not (X.is_floating_point()):
        X = X.float()
    return X.detach()


def _check_finite(X: torch.Tensor, what: str = "X") -> None:
    bad = ~torch.isfinite(X)
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(1)).flatten()
        cols = torch.nonzero(bad.any(0)).flatten()
        n_nan, n_inf = int(torch.isnan(X).sum()), int(torch.isinf(X).sum())
        raise InputError(f"{what} has {n_nan} NaN and {n_inf} inf entries in {len(rows)} rows (first rows "
                         f"{rows[:5].tolist()}, columns {cols[:10].tolist()}); remove or impute them before "
                         f"fitting (e.g. X[torch.isfinite(X).all(1)])")


def _check_lengths(X: torch.Tensor, y: Any, name: str = "y") -> None:
    if y is not None and len(y) != X.shape[0]:
        raise InputError(f"X has {X.shape[0]} rows but {name} has {len(y)} entries; they must describe the "
                         f"same rows (with unpooled sites, positions are folded into rows: repeat the labels "
                         f"per position or pool the site)")


def _to_numpy_1d(v: ArrayLike, what: str) -> np.ndarray:
    a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    if a.ndim != 1:
        raise InputError(f"{what} must be 1-D with one entry per row, got shape {a.shape}")
    return a


def _types_of(X: torch.Tensor, control_types: ArrayLike | None) -> np.ndarray:
    """Integer type id per row: from ``control_types`` or, without it, identical rows share a type."""
    if control_types is not None:
        t = _to_numpy_1d(control_types, "control_types")
        return np.unique(t, return_inverse=True)[1].reshape(-1)
    return _first_occurrence(torch.unique(X, dim=0, return_inverse=True)[1].cpu().numpy())


def _first_occurrence(inverse: np.ndarray) -> np.ndarray:
    """Relabel type ids by the row where each type first occurs (distinct rows get ``0..N-1`` in order)."""
    first = np.full(inverse.max() + 1, len(inverse))
    np.minimum.at(first, inverse, np.arange(len(inverse)))
    return first[inverse]


def control_labels(y: ArrayLike, types: ArrayLike, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang (2019) control labels: each type gets the label (or target) of a uniformly drawn row.

    Drawing a random row's label samples the empirical label distribution, so the control task has the same
    label distribution as the task, but the labels carry no information beyond the type's identity.

    Args:
        y: ``[N]`` labels or ``[N, t]`` targets.
        types: ``[N]`` type ids (any hashable values).
    Returns:
        ``[N, ...]`` control labels, same dtype as ``y``.
    """
    ya = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    t = np.unique(_to_numpy_1d(types, "types"), return_inverse=True)[1].reshape(-1)
    if len(t) != len(ya):
        raise InputError(f"types has {len(t)} entries but y has {len(ya)}")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ya), size=t.max() + 1)
    return ya[pick[t]]


def train_test_split_by_group(n: int, groups: ArrayLike | None = None, test_size: float = 0.2,
                              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, test)``; with ``groups`` whole groups go to one side (image id, episode).

    ``test_size`` is the fraction of groups (of rows without groups) held out; both sides are non-empty.
    """
    if not 0 < test_size < 1:
        raise InputError(f"test_size must be in (0, 1), got {test_size}")
    rng = np.random.default_rng(seed)
    if groups is None:
        perm = rng.permutation(n)
        k = min(max(1, int(round(test_size * n))), n - 1)
        return np.sort(perm[k:]), np.sort(perm[:k])
    g = _to_numpy_1d(groups, "groups")
    if len(g) != n:
        raise InputError(f"groups has {len(g)} entries for {n} rows")
    uniq, inv = np.unique(g, return_inverse=True)
    if len(uniq) < 2:
        raise InputError(f"a split by group needs at least 2 groups, got {len(uniq)}")
    perm = rng.permutation(len(uniq))
    k = min(max(1, int(round(test_size * len(uniq)))), len(uniq) - 1)
    test_groups = np.zeros(len(uniq), dtype=bool)
    test_groups[perm[:k]] = True
    is_test = test_groups[inv.reshape(-1)]
    return np.nonzero(~is_test)[0], np.nonzero(is_test)[0]


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


def _logistic_fg(X: torch.Tensor, y: torch.Tensor, sw: torch.Tensor | None, n_out: int, l2: float,
                 fit_intercept: bool) -> Callable[[torch.Tensor], tuple[float, torch.Tensor]]:
    """Objective ``(sum_i s_i CE_i + l2/2 ||W||^2) / sum_i s_i`` and its gradient for flat ``w``.

    ``w`` packs ``W^T [n_out, d]`` then, with an intercept, ``b [n_out]``. ``n_out == 1``: sigmoid loss with
    ``y in {0, 1}``; otherwise softmax cross-entropy with ``y`` class indices. Computed in the transposed
    layout (``[n_out, N]`` logits), which is several times faster on CPU than ``[N, n_out]`` for small
    ``n_out`` (softmax over a short leading axis, matmuls with contiguous operands).
    """
    n, d = X.shape
    Xt = X.T.contiguous()
    total = float(sw.sum()) if sw is not None else float(n)
    scale = (sw / total).to(X.dtype)[None, :] if sw is not None else None
    if n_out == 1:
        target = y.to(X.dtype)[None, :]
    else:
        target = torch.zeros(n_out, n, dtype=X.dtype, device=X.device)
        target[y, torch.arange(n, device=X.device)] = 1.0
    reg = l2 / total

    def fg(w: torch.Tensor) -> tuple[float, torch.Tensor]:
        Wt = w[: d * n_out].view(n_out, d)
        Z = Wt @ Xt
        if fit_intercept:
            Z += w[d * n_out:, None]
        if n_out == 1:
            losses = torch.nn.functional.softplus(Z) - target * Z
            G = torch.sigmoid(Z) - target
        else:
            logp = torch.log_softmax(Z, dim=0)
            losses = -(logp * target)
            G = logp.exp_() - target
        if scale is not None:
            loss = float((losses * scale).sum(dtype=torch.float64))
            G *= scale
        else:
            loss = float(losses.sum(dtype=torch.float64)) / n
            G *= 1.0 / n
        gW = G @ X
        gW += reg * Wt
        loss += 0.5 * reg * float((Wt.double() ** 2).sum())
        if fit_intercept:
            return loss, torch.cat([gW.reshape(-1), G.sum(1)])
        return loss, gW.reshape(-1)

    return fg


# ---------------------------------------------------------------------------------------------- base class
class _Probe:
    """sklearn-style parameter handling, validation and control-task logic shared by the probes."""

    _estimator_type = "classifier"

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params: Any) -> "_Probe":
        valid = self._param_names()
        for k, v in params.items():
            if k not in valid:
                raise InputError(f"invalid parameter {k!r} for {type(self).__name__}; valid: {valid}")
            setattr(self, k, v)
        return self

    def clone(self) -> "_Probe":
        """An unfitted probe with the same parameters."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")

    def _fitted_features(self, X: ArrayLike) -> torch.Tensor:
        """``X`` as features of the width this probe was fitted on (clear errors otherwise)."""
        self._check_fitted()
        X = _as_features(X)
        if X.shape[1] != self.n_features_in_:
            raise InputError(f"X has {X.shape[1]} features but the probe was fitted on {self.n_features_in_}")
        return X

    @property
    def is_classifier(self) -> bool:
        raise NotImplementedError

    # ---- shared input handling
    def _prepare(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None) -> tuple:
        X = _as_features(X)
        _check_lengths(X, y)
        if sample_weight is not None:
            _check_lengths(X, sample_weight, "sample_weight")
        _check_finite(X)
        if X.shape[0] < 2:
            raise InputError(f"need at least 2 rows to fit a probe, got {X.shape[0]}")
        return X

    def _encode_labels(self, y: ArrayLike) -> tuple[np.ndarray, torch.Tensor]:
        ya = _to_numpy_1d(y, "y (class labels)")
        classes, inv = np.unique(ya, return_inverse=True)
        if len(classes) < 2:
            raise InputError(f"y has a single class ({classes[0]!r}); a classifier probe needs at least two "
                             f"classes — check the labels or use a regression probe (kind='ridge')")
        return classes, torch.as_tensor(inv.reshape(-1), dtype=torch.long)

    def _class_sample_weight(self, yi: torch.Tensor, n_classes: int, class_weight: Any,
                             sample_weight: ArrayLike | None) -> torch.Tensor | None:
        sw = None if sample_weight is None else torch.as_tensor(np.asarray(sample_weight), dtype=torch.float64)
        if class_weight is None:
            return sw
        if class_weight == "balanced":
            counts = torch.bincount(yi, minlength=n_classes).double()
            cw = len(yi) / (n_classes * counts)
        elif isinstance(class_weight, dict):
            cw = torch.tensor([float(class_weight.get(c, 1.0)) for c in self.classes_], dtype=torch.float64)
        else:
            raise InputError(f"class_weight must be None, 'balanced' or a dict {{class: weight}}, got "
                             f"{class_weight!r}")
        w = cw[yi]
        return w if sw is None else w * sw

    def _standardize_stats(self, X: torch.Tensor, standardize: bool,
                           constant_features: str) -> tuple[torch.Tensor, torch.Tensor]:
        d = X.shape[1]
        if not standardize:
            return torch.zeros(d, dtype=X.dtype), torch.ones(d, dtype=X.dtype)
        Xd = X.double()
        mean = Xd.mean(0)
        std = Xd.std(0, unbiased=False)
        const = std <= 1e-12 * torch.clamp(mean.abs(), min=1.0)
        if bool(const.any()):
            cols = torch.nonzero(const).flatten().tolist()
            if constant_features == "error":
                raise InputError(f"X has {len(cols)} constant feature columns {cols[:20]}"
                                 f"{' ...' if len(cols) > 20 else ''}, which cannot be standardised; drop them "
                                 f"(e.g. X[:, X.std(0) > 0]), pass constant_features='ignore' (they are then "
                                 f"left out of the fit) or standardize=False")
            if constant_features != "ignore":
                raise InputError(f"constant_features must be 'error' or 'ignore', got {constant_features!r}")
            std = torch.where(const, torch.full_like(std, math.inf), std)  # standardised value 0: no effect
        return mean.to(X.dtype), std.to(X.dtype)

    # ---- control task
    def _fit_control(self, X: torch.Tensor, y: ArrayLike, groups: ArrayLike | None,
                     control_types: ArrayLike | None, sample_weight: ArrayLike | None) -> None:
        params = self.get_params()
        params["control"] = False
        tr, te = train_test_split_by_group(X.shape[0], groups, self.test_size, self.random_state)
        ya = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        types = control_types if control_types is not None else groups
        cy = control_labels(ya, _types_of(X, types), seed=self.random_state)
        sw_tr = None if sample_weight is None else np.asarray(sample_weight)[tr]
        task = type(self)(**params).fit(X[tr], ya[tr], sample_weight=sw_tr)
        ctrl = type(self)(**params).fit(X[tr], cy[tr], sample_weight=sw_tr)
        self.task_score_ = float(task.score(X[te], ya[te]))
        self.control_score_ = float(ctrl.score(X[te], cy[te]))
        self.selectivity_ = self.task_score_ - self.control_score_

    def score(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
        """Accuracy (classifiers) or R^2, the coefficient of determination averaged over outputs (regressors)."""
        self._check_fitted()
        pred = self.predict(X)
        if self.is_classifier:
            ya = _to_numpy_1d(y, "y")
            _check_lengths(torch.empty(len(pred), 0), ya)
            hit = (np.asarray(pred) == ya).astype(float)
            if sample_weight is None:
                return float(hit.mean())
            sw = np.asarray(sample_weight, dtype=float)
            return float((hit * sw).sum() / sw.sum())
        return r2_score(y, pred, sample_weight)


def r2_score(y: ArrayLike, pred: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot``, uniformly averaged over outputs (as sklearn)."""
    ya = (y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)).astype(float)
    pa = (pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)).astype(float)
    ya = ya.reshape(len(ya), -1)
    pa = pa.reshape(len(pa), -1)
    sw = np.ones(len(ya)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    mean = (sw[:, None] * ya).sum(0) / sw.sum()
    ss_res = (sw[:, None] * (ya - pa) ** 2).sum(0)
    ss_tot = (sw[:, None] * (ya - mean) ** 2).sum(0)
    r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1), np.where(ss_res > 0, 0.0, 1.0))
    return float(r2.mean())


# ---------------------------------------------------------------------------------------------- LinearProbe
class LinearProbe(_Probe):
    """A linear probe: logistic / ridge classifier / least squares / ridge regression (see module doc).

    Args:
        kind: ``"logistic"``, ``"ridge_classifier"``, ``"linear"`` or ``"ridge"``.
        l2: L2 strength; logistic: ``1 / C`` of scikit-learn; ridge: scikit-learn's ``alpha``. Ignored by
            ``"linear"``.
        standardize: fit on standardised features (coefficients are reported in the original space).
        class_weight: ``None``, ``"balanced"`` or ``{class: weight}`` (classifiers).
        fit_intercept: fit an unpenalised intercept.
        max_iter, tol, history: L-BFGS iterations, gradient tolerance (max abs, objective divided by the
            total sample weight) and memory (logistic only).
        control: also fit a control task and report ``task_score_``, ``control_score_``, ``selectivity_``.
        test_size: held-out fraction (of groups when given) for the control comparison.
        random_state: seed of the split and of the control labels.
        constant_features: ``"error"`` (default) or ``"ignore"`` (constant columns get zero weight) when
            ``standardize=True``.
        dtype: float dtype of the logistic solver (closed forms always use float64).

    Fitted attributes: ``coef_ [n_outputs, d]``, ``intercept_ [n_outputs]`` (original feature space),
    ``mean_``, ``scale_`` (standardisation), ``classes_`` (classifiers), ``n_features_in_``, ``n_iter_``,
    ``converged_`` (logistic), and with ``control=True`` ``task_score_``, ``control_score_``,
    ``selectivity_``.
    """

    def __init__(self, kind: Literal["logistic", "ridge_classifier", "linear", "ridge"] = "logistic",
                 l2: float = 1.0, standardize: bool = True, class_weight: Any = None,
                 fit_intercept: bool = True, max_iter: int = 1000, tol: float = 1e-4, history: int = 10,
                 control: bool = False, test_size: float = 0.2, random_state: int = 0,
                 constant_features: str = "error", dtype: torch.dtype = torch.float32):
        self.kind = kind
        self.l2 = l2
        self.standardize = standardize
        self.class_weight = class_weight
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.history = history
        self.control = control
        self.test_size = test_size
        self.random_state = random_state
        self.constant_features = constant_features
        self.dtype = dtype

    @property
    def is_classifier(self) -> bool:
        return self.kind in ("logistic", "ridge_classifier")

    @property
    def _estimator_type(self) -> str:  # type: ignore[override]
        return "classifier" if self.is_classifier else "regressor"

    def _validate_params(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.l2 < 0 or (self.kind == "logistic" and self.l2 == 0):
            raise InputError(f"l2 must be > 0 for logistic probes (>= 0 for ridge), got {self.l2}; "
                             f"use a small value such as 1e-4 for a nearly unregularised fit")
        if self.class_weight is not None and not self.is_classifier:
            raise InputError(f"class_weight applies to classifiers, not kind={self.kind!r}")

    # ---- fitting
    def fit(self, X: ArrayLike, y: ArrayLike, groups: ArrayLike | None = None,
            sample_weight: ArrayLike | None = None, control_types: ArrayLike | None = None) -> "LinearProbe":
        """Fit on ``X [N, d]`` and ``y [N]`` (or ``[N, t]`` regression targets); returns ``self``.

        ``groups [N]`` (e.g. image id, episode) keeps rows of one group on one side of the held-out split
        used by ``control=True``; ``control_types [N]`` defines the input types of the control task
        (default: ``groups``, else identical rows).
        """
        self._validate_params()
        X = self._prepare(X, y, sample_weight)
        if groups is not None:
            _check_lengths(X, groups, "groups")
        if control_types is not None:
            _check_lengths(X, control_types, "control_types")
        fit_many([self], [X], [y], sample_weights=[sample_weight])
        if self.control:
            self._fit_control(X, y, groups, control_types, sample_weight)
        return self

    def _setup(self, X: torch.Tensor, y: ArrayLike, sample_weight: ArrayLike | None) -> dict:
        """Validate, encode labels, compute standardisation; returns what the solvers need."""
        self._validate_params()
        X = self._prepare(X, y, sample_weight)
        mean, scale = self._standardize_stats(X, self.standardize, self.constant_features)
        info: dict[str, Any] = {"X": X, "mean": mean, "scale": scale}
        if self.is_classifier:
            classes, yi = self._encode_labels(y)
            self.classes_ = classes
            info["y"] = yi
            info["sw"] = self._class_sample_weight(yi, len(classes), self.class_weight, sample_weight)
        else:
            yt = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
            yt = yt.detach().double()
            if not bool(torch.isfinite(yt).all()):
                raise InputError("y has NaN or inf targets; remove those rows before fitting")
            self._y_1d = yt.dim() == 1
            info["y"] = yt.reshape(len(yt), -1)
            info["sw"] = None if sample_weight is None else torch.as_tensor(np.asarray(sample_weight),
                                                                                 dtype=torch.float64)
        return info

    def _set_solution(self, W_std: torch.Tensor, b_std: torch.Tensor, mean: torch.Tensor,
                      scale: torch.Tensor, d: int) -> None:
        """Store ``coef_``/``intercept_`` in the original space from a fit in standardised space."""
        W_std = W_std.double()
        inv = 1.0 / scale.double()  # inf scale (ignored constant columns) gives weight 0
        coef = (W_std * inv[:, None]).T.contiguous()  # [n_out, d]
        self.coef_ = coef
        self.intercept_ = b_std.double() - coef @ mean.double()
        self.mean_ = mean
        self.scale_ = scale
        self.n_features_in_ = d

    def _fit_closed_form(self, info: dict) -> None:
        X = info["X"].double()
        Xs = (X - info["mean"].double()) / info["scale"].double()
        if self.is_classifier:
            yi = info["y"]
            k = len(self.classes_)
            if k == 2:
                Y = (2.0 * yi.double() - 1.0)[:, None]
            else:
                Y = -torch.ones(len(yi), k, dtype=torch.float64)
                Y[torch.arange(len(yi)), yi] = 1.0
        else:
            Y = info["y"]
        sw = info["sw"]
        if self.fit_intercept:
            wsum = float(sw.sum()) if sw is not None else float(len(Xs))
            xm = (sw[:, None] * Xs).sum(0) / wsum if sw is not None else Xs.mean(0)
            ym = (sw[:, None] * Y).sum(0) / wsum if sw is not None else Y.mean(0)
        else:
            xm = torch.zeros(Xs.shape[1], dtype=torch.float64)
            ym = torch.zeros(Y.shape[1], dtype=torch.float64)
        Xc, Yc = Xs - xm, Y - ym
        if sw is not None:
            r = sw.sqrt()[:, None]
            Xc, Yc = Xc * r, Yc * r
        l2 = 0.0 if self.kind == "linear" else float(self.l2)
        if l2 > 0:
            A = Xc.T @ Xc + l2 * torch.eye(Xc.shape[1], dtype=torch.float64)
            W = torch.linalg.solve(A, Xc.T @ Yc)
        else:
            W = torch.linalg.lstsq(Xc, Yc, driver="gelsd").solution
        b = ym - xm @ W
        self._set_solution(W, b, info["mean"], info["scale"], X.shape[1])

    # ---- streaming fit
    def fit_stream(self, source: Any, site: str, y: ArrayLike | None = None, pool: Any = None,
                   batch_size: int = 1024, epochs: int = 10, lr: float = 5e-2, seed: int = 0) -> "LinearProbe":
        """Fit from mini-batches of ``source.iter_batches(site, ...)`` (an ActivationStore or a cache).

        For data that do not fit in memory. Labels come from the store (``labels=True``; the store must have
        been collected with ``(inputs, labels)`` batches and the site pooled) or from ``y`` aligned with the
        rows in order (then rows are read unshuffled). A first pass computes the standardisation statistics
        (and class counts). ``"ridge"`` / ``"linear"`` / ``"ridge_classifier"`` accumulate the sufficient
        statistics ``X^T X`` and ``X^T y`` and solve exactly (the same solution as :meth:`fit`);
        ``"logistic"`` runs ``epochs`` of Adam (learning rate ``lr``, cosine-decayed per epoch) on the same
        objective, so it approaches
        the full-batch solution without holding the data.
        """
        self._validate_params()

        def batches(shuffle: bool, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            if y is None:
                for b in source.iter_batches(site, batch_size=batch_size, shuffle=shuffle, seed=seed + epoch,
                                             pool=pool, labels=True):
                    yield b[site].double(), b["labels"]
                return
            yy = y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
            i = 0
            for b in source.iter_batches(site, batch_size=batch_size, shuffle=False, pool=pool):
                x = b[site]
                yield x.double(), yy[i:i + len(x)]
                i += len(x)
            if i != len(yy):
                raise InputError(f"y has {len(yy)} entries but the source gave {i} rows for site '{site}'")

        # pass 1: moments, labels
        n, s1, s2, labels = 0, None, None, []
        for xb, yb in batches(False, 0):
            _check_finite(xb, f"rows of site '{site}'")
            s1 = xb.sum(0) if s1 is None else s1 + xb.sum(0)
            s2 = (xb * xb).sum(0) if s2 is None else s2 + (xb * xb).sum(0)
            n += len(xb)
            labels.append(yb.detach().cpu())
        if n < 2:
            raise InputError(f"the source gave {n} rows for site '{site}'; need at least 2")
        yall = torch.cat(labels)
        mean = s1 / n
        if self.standardize:
            var = torch.clamp(s2 / n - mean ** 2, min=0.0)
            std = var.sqrt()
            const = std <= 1e-6 * torch.clamp(mean.abs(), min=1.0)
            if bool(const.any()):
                cols = torch.nonzero(const).flatten().tolist()
                if self.constant_features == "error":
                    raise InputError(f"site '{site}' has constant feature columns {cols[:20]}; drop them, pass "
                                     f"constant_features='ignore' or standardize=False")
                std = torch.where(const, torch.full_like(std, math.inf), std)
        else:
            mean = torch.zeros_like(mean)
            std = torch.ones_like(mean)
        d = len(mean)
        if self.is_classifier:
            classes, yi_all = self._encode_labels(yall.numpy())
            self.classes_ = classes
            lookup = {c: i for i, c in enumerate(classes.tolist())}
            k = len(classes)
            counts = torch.bincount(yi_all, minlength=k).double()
            cw = (n / (k * counts) if self.class_weight == "balanced" else
                  torch.tensor([float((self.class_weight or {}).get(c, 1.0)) for c in classes.tolist()],
                               dtype=torch.float64))

            def encode(yb: torch.Tensor) -> torch.Tensor:
                return torch.as_tensor([lookup[v] for v in yb.tolist()], dtype=torch.long)
        if self.kind != "logistic":
            # exact: accumulate weighted sufficient statistics of the standardised rows
            n_out = (1 if len(self.classes_) == 2 else len(self.classes_)) if self.is_classifier else None
            sw_tot, sx, sy, sxx, sxy = 0.0, 0, 0, 0, 0
            for xb, yb in batches(False, 0):
                xs = (xb - mean) / std
                if self.is_classifier:
                    yi = encode(yb)
                    if n_out == 1:
                        Y = (2.0 * yi.double() - 1.0)[:, None]
                    else:
                        Y = -torch.ones(len(yi), n_out, dtype=torch.float64)
                        Y[torch.arange(len(yi)), yi] = 1.0
                    w = cw[yi]
                else:
                    Y = yb.double().reshape(len(yb), -1)
                    self._y_1d = yb.dim() == 1
                    w = torch.ones(len(xb), dtype=torch.float64)
                sw_tot += float(w.sum())
                sx = sx + (w[:, None] * xs).sum(0)
                sy = sy + (w[:, None] * Y).sum(0)
                sxx = sxx + xs.T @ (w[:, None] * xs)
                sxy = sxy + xs.T @ (w[:, None] * Y)
            if self.fit_intercept:
                xm, ym = sx / sw_tot, sy / sw_tot
                A = sxx - sw_tot * torch.outer(xm, xm)
                B = sxy - sw_tot * torch.outer(xm, ym)
            else:
                xm, ym = torch.zeros(d, dtype=torch.float64), torch.zeros(sy.shape[0], dtype=torch.float64)
                A, B = sxx, sxy
            l2 = 0.0 if self.kind == "linear" else float(self.l2)
            W = torch.linalg.solve(A + l2 * torch.eye(d, dtype=torch.float64), B) if l2 > 0 else \
                torch.linalg.lstsq(A, B, driver="gelsd").solution
            self._set_solution(W, ym - xm @ W, mean, std, d)
            return self
        # logistic: Adam on the same objective (mean weighted CE + l2 / (2 n_eff) ||W||^2)
        k = len(self.classes_)
        n_out = 1 if k == 2 else k
        g = torch.Generator().manual_seed(seed)
        W = torch.zeros(d, n_out, dtype=torch.float32, requires_grad=True)
        b = torch.zeros(n_out, dtype=torch.float32, requires_grad=True)
        W.data.normal_(0.0, 1e-3, generator=g)
        total_w = float(cw[yi_all].sum())
        opt = torch.optim.Adam([W, b] if self.fit_intercept else [W], lr=lr)
        it = 0
        for epoch in range(epochs):
            for group in opt.param_groups:  # cosine decay per epoch: settles near the optimum
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
            for xb, yb in batches(True, epoch + 1):
                xs = ((xb - mean) / std).float()
                yi = encode(yb)
                w = cw[yi].float()
                z = xs @ W + b
                if n_out == 1:
                    losses = nn.functional.binary_cross_entropy_with_logits(z[:, 0], yi.float(), reduction="none")
                else:
                    losses = nn.functional.cross_entropy(z, yi, reduction="none")
                loss = (w * losses).sum() / w.sum() + 0.5 * self.l2 / total_w * (W ** 2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                it += 1
        self.n_iter_ = it
        self.converged_ = False  # stochastic: no gradient test
        W, b = W.detach().double(), b.detach().double()
        if n_out > 1:  # softmax ignores a shift shared by all classes; the L2 optimum has none
            W, b = W - W.mean(1, keepdim=True), b - b.mean()
        self._set_solution(W, b, mean, std, d)
        return self

    # ---- prediction
    def decision_function(self, X: ArrayLike) -> torch.Tensor:
        """``X @ coef_.T + intercept_``: ``[N, n_outputs]`` (binary: ``[N]``, positive = ``classes_[1]``)."""
        X = self._fitted_features(X)
        out = X.double() @ self.coef_.T + self.intercept_
        if self.is_classifier and out.shape[1] == 1:
            return out[:, 0]
        return out

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Class labels ``[N]`` (classifiers) or predicted targets ``[N]`` / ``[N, t]`` (regressors)."""
        z = self.decision_function(X)
        if self.is_classifier:
            idx = (z > 0).long() if z.dim() == 1 else z.argmax(1)
            return self.classes_[idx.cpu().numpy()]
        out = z.cpu().numpy()
        return out[:, 0] if getattr(self, "_y_1d", False) else out

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities ``[N, n_classes]`` (logistic probes only)."""
        if self.kind != "logistic":
            raise AttributeError(f"predict_proba needs kind='logistic'; a {self.kind!r} probe gives scores "
                                 f"through decision_function")
        z = self.decision_function(X)
        if z.dim() == 1:
            p1 = torch.sigmoid(z)
            return torch.stack([1 - p1, p1], 1).cpu().numpy()
        return torch.softmax(z, 1).cpu().numpy()

    # ---- directions
    @property
    def directions_(self) -> torch.Tensor:
        """``[n_outputs, d]`` weight vectors in the original feature space (``coef_`` as float32)."""
        self._check_fitted()
        return self.coef_.float()

    def direction_(self, label: Any = None, normalize: bool = True) -> torch.Tensor:
        """The direction ``[d]`` in the original feature space that raises the decision value for ``label``.

        Binary classifiers: ``label`` may be ``None`` or ``classes_[1]`` (the positive direction) or
        ``classes_[0]`` (its negative). Multiclass: ``label`` (a class) is required. Regressors: the output
        index (``None`` for a single output). Unit norm unless ``normalize=False``.
        """
        self._check_fitted()
        coef = self.coef_
        if self.is_classifier:
            classes = list(self.classes_.tolist())
            if coef.shape[0] == 1:
                if label is None or label == classes[1]:
                    v = coef[0]
                elif label == classes[0]:
                    v = -coef[0]
                else:
                    raise SiteError(f"unknown label {label!r}; classes are {classes}")
            else:
                if label is None:
                    raise InputError(f"this probe has {len(classes)} classes; say which: direction_(label=...) "
                                     f"with one of {classes}")
                if label not in classes:
                    raise SiteError(f"unknown label {label!r}; classes are {classes}")
                v = coef[classes.index(label)]
        else:
            i = 0 if label is None else int(label)
            if label is None and coef.shape[0] > 1:
                raise InputError(f"this probe has {coef.shape[0]} outputs; say which: direction_(label=i)")
            v = coef[i]
        v = v.float()
        return v / v.norm().clamp_min(1e-30) if normalize else v


def fit_many(probes: Sequence[LinearProbe], Xs: Sequence[torch.Tensor], ys: Sequence[ArrayLike],
             sample_weights: Sequence[ArrayLike | None] | None = None,
             warm_start: bool = True) -> list[LinearProbe]:
    """Fit several linear probes at once (e.g. one per site); returns them fitted.

    Logistic probes are solved by :func:`lbfgs_many`: on CPU one after the other (each probe's rows stay in
    cache), on accelerators all in lockstep (a probe that has converged costs nothing more); the others in
    closed form. With ``warm_start`` (CPU), a logistic problem whose labels equal an earlier problem's
    starts from that solution (in standardised coordinates) when it has the lower objective — for a sweep
    over the layers of a residual network this about halves the L-BFGS iterations; the problems are convex,
    so the optimum (to ``tol``) is the same. Control tasks are not run here.
    """
    sample_weights = list(sample_weights) if sample_weights is not None else [None] * len(probes)
    if not (len(probes) == len(Xs) == len(ys) == len(sample_weights)):
        raise InputError("fit_many needs one X, y (and sample weight) per probe")
    infos = [p._setup(X, y, sw) for p, X, y, sw in zip(probes, Xs, ys, sample_weights)]
    logistic = [i for i, p in enumerate(probes) if p.kind == "logistic"]
    for i, p in enumerate(probes):
        if p.kind != "logistic":
            p._fit_closed_form(infos[i])
    if not logistic:
        return list(probes)
    # group by (shape of the parameter vector, solver settings) so each group shares one lockstep L-BFGS
    groups: dict[tuple, list[int]] = {}
    for i in logistic:
        p, info = probes[i], infos[i]
        n_out = 1 if len(p.classes_) == 2 else len(p.classes_)
        key = (info["X"].shape[1], n_out, p.fit_intercept, p.max_iter, p.tol, p.history, p.dtype)
        groups.setdefault(key, []).append(i)
    for (d, n_out, fit_intercept, max_iter, tol, history, dtype), members in groups.items():
        fgs = []
        for i in members:
            p, info = probes[i], infos[i]
            Xs_ = ((info["X"].to(dtype) - info["mean"].to(dtype)) / info["scale"].to(dtype)).contiguous()
            sw = info["sw"]
            fgs.append(_logistic_fg(Xs_, info["y"].to(Xs_.device), None if sw is None else sw.to(dtype),
                                    n_out, float(p.l2), fit_intercept))
        p_len = d * n_out + (n_out if fit_intercept else 0)
        w0 = torch.zeros(len(members), p_len, dtype=dtype, device=infos[members[0]]["X"].device)
        if w0.device.type == "cpu":
            # one problem after the other: each problem's rows stay in cache across its iterations, which
            # on CPU beats cycling through all problems every iteration. With warm_start, a problem with the
            # same labels as an earlier one (the next site of a sweep) starts from that one's solution when
            # it has the lower objective: adjacent layers of a residual network read out similarly, which
            # about halves the iterations; the optimum is unchanged (the problem is convex).
            outs = []
            for j, i in enumerate(members):
                start = w0[j:j + 1]
                if warm_start:
                    y_j = infos[i]["y"]
                    for jj in range(j - 1, -1, -1):
                        y_prev = infos[members[jj]]["y"]
                        if y_prev.shape == y_j.shape and torch.equal(y_prev, y_j):
                            cand = outs[jj][0]
                            if fgs[j](cand[0])[0] < fgs[j](start[0])[0]:
                                start = cand.clone()
                            break
                outs.append(lbfgs_many(lambda k, wk, j=j: fgs[j](wk), start, max_iter=max_iter, tol=tol,
                                       history=history))
            w = torch.cat([o[0] for o in outs])
            n_iter = np.concatenate([o[1] for o in outs])
            conv = np.concatenate([o[2] for o in outs])
        else:  # accelerators: all problems in lockstep
            w, n_iter, conv = lbfgs_many(lambda k, wk: fgs[k](wk), w0, max_iter=max_iter, tol=tol,
                                         history=history)
        for j, i in enumerate(members):
            p, info = probes[i], infos[i]
            W = w[j, : d * n_out].view(n_out, d).T
            b = w[j, d * n_out:] if fit_intercept else torch.zeros(n_out, dtype=dtype)
            p._set_solution(W, b, info["mean"], info["scale"], d)
            p.n_iter_ = int(n_iter[j])
            p.converged_ = bool(conv[j])
            if not conv[j]:
                logger.warning("logistic probe %d did not reach tol=%g in %d iterations; raise max_iter or l2",
                               i, tol, max_iter)
    return list(probes)


# ---------------------------------------------------------------------------------------------- MLPProbe
class MLPProbe(_Probe):
    """A multilayer-perceptron probe (classifier or regressor), trained full-batch with L-BFGS.

    Args:
        hidden: hidden layer widths, e.g. ``(64,)``.
        task: ``"classifier"`` (softmax cross-entropy) or ``"regressor"`` (squared error).
        l2: weight decay on the weights: objective ``mean_i loss_i + (l2 / (2 N)) * sum ||W||^2`` (the
            same per-row scaling as :class:`LinearProbe`'s logistic objective).
        activation: ``"relu"``, ``"gelu"`` or ``"tanh"``.
        standardize, class_weight, control, test_size, random_state, constant_features: as LinearProbe.
        max_iter: L-BFGS iterations.

    Fitted attributes: ``net_`` (the torch module, on standardised inputs), ``mean_``, ``scale_``,
    ``classes_``, ``n_features_in_``, ``n_iter_``; with ``control=True`` ``task_score_``,
    ``control_score_``, ``selectivity_``.
    """

    def __init__(self, hidden: Sequence[int] = (64,), task: Literal["classifier", "regressor"] = "classifier",
                 l2: float = 1e-2, activation: str = "relu", standardize: bool = True,
                 class_weight: Any = None, max_iter: int = 300, control: bool = False, test_size: float = 0.2,
                 random_state: int = 0, constant_features: str = "error"):
        self.hidden = hidden
        self.task = task
        self.l2 = l2
        self.activation = activation
        self.standardize = standardize
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.control = control
        self.test_size = test_size
        self.random_state = random_state
        self.constant_features = constant_features

    @property
    def is_classifier(self) -> bool:
        return self.task == "classifier"

    def fit(self, X: ArrayLike, y: ArrayLike, groups: ArrayLike | None = None,
            sample_weight: ArrayLike | None = None, control_types: ArrayLike | None = None) -> "MLPProbe":
        """Fit on ``X [N, d]`` and ``y [N]`` (``[N, t]`` targets for a regressor); returns ``self``."""
        if self.task not in ("classifier", "regressor"):
            raise InputError(f"task must be 'classifier' or 'regressor', got {self.task!r}")
        acts = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
        if self.activation not in acts:
            raise InputError(f"activation must be one of {sorted(acts)}, got {self.activation!r}")
        X = self._prepare(X, y, sample_weight)
        mean, scale = self._standardize_stats(X, self.standardize, self.constant_features)
        Xs = ((X.float() - mean.float()) / scale.float())
        if self.is_classifier:
            classes, yi = self._encode_labels(y)
            self.classes_ = classes
            sw = self._class_sample_weight(yi, len(classes), self.class_weight, sample_weight)
            n_out = len(classes)
            target = yi
        else:
            yt = (y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))).float()
            self._y_1d = yt.dim() == 1
            target = yt.reshape(len(yt), -1)
            sw = None if sample_weight is None else torch.as_tensor(np.asarray(sample_weight), dtype=torch.float64)
            n_out = target.shape[1]
        torch.manual_seed(self.random_state)
        layers: list[nn.Module] = []
        width = X.shape[1]
        for h in self.hidden:
            layers += [nn.Linear(width, int(h)), acts[self.activation]()]
            width = int(h)
        layers.append(nn.Linear(width, n_out))
        net = nn.Sequential(*layers)
        w = (sw / sw.sum()).float() if sw is not None else torch.full((len(Xs),), 1.0 / len(Xs))
        total = float(sw.sum()) if sw is not None else float(len(Xs))
        weights = [m.weight for m in net if isinstance(m, nn.Linear)]
        opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=self.max_iter, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-10)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            out = net(Xs)
            if self.is_classifier:
                losses = nn.functional.cross_entropy(out, target, reduction="none")
            else:
                losses = ((out - target) ** 2).sum(1)
            loss = (w * losses).sum() + 0.5 * self.l2 / total * sum((p ** 2).sum() for p in weights)
            loss.backward()
            return loss

        opt.step(closure)
        self.n_iter_ = int(opt.state[opt._params[0]].get("n_iter", 0))
        self.net_ = net.eval()
        self.mean_, self.scale_ = mean, scale
        self.n_features_in_ = X.shape[1]
        if self.control:
            self._fit_control(X, y, groups, control_types, sample_weight)
        return self

    def _forward(self, X: ArrayLike) -> torch.Tensor:
        X = self._fitted_features(X)
        with torch.no_grad():
            return self.net_((X.float() - self.mean_.float()) / self.scale_.float())

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        if not self.is_classifier:
            raise AttributeError("predict_proba needs task='classifier'")
        return torch.softmax(self._forward(X), 1).numpy()

    def predict(self, X: ArrayLike) -> np.ndarray:
        out = self._forward(X)
        if self.is_classifier:
            return self.classes_[out.argmax(1).numpy()]
        out = out.numpy()
        return out[:, 0] if self._y_1d else out

    def direction_(self, label: Any = None, normalize: bool = True) -> torch.Tensor:
        raise AttributeError("an MLP probe has no single direction; use LinearProbe for steering directions")


def cross_val_score(probe: _Probe, X: ArrayLike, y: ArrayLike, groups: ArrayLike | None = None,
                    n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Held-out scores of ``probe`` over ``n_splits`` folds (whole groups per fold when ``groups`` given)."""
    X = _as_features(X)
    _check_lengths(X, y)
    ya = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    rng = np.random.default_rng(seed)
    if groups is None:
        unit = rng.permutation(len(ya))
        fold_of = np.empty(len(ya), dtype=int)
        fold_of[unit] = np.arange(len(ya)) % n_splits
    else:
        g = _to_numpy_1d(groups, "groups")
        _check_lengths(X, g, "groups")
        uniq, inv = np.unique(g, return_inverse=True)
        if len(uniq) < n_splits:
            raise InputError(f"{len(uniq)} groups cannot make {n_splits} folds; lower n_splits")
        gf = np.empty(len(uniq), dtype=int)
        gf[rng.permutation(len(uniq))] = np.arange(len(uniq)) % n_splits
        fold_of = gf[inv.reshape(-1)]
    scores = []
    for f in range(n_splits):
        te, tr = fold_of == f, fold_of != f
        p = probe.clone().set_params(control=False).fit(X[torch.as_tensor(tr)], ya[tr])
        scores.append(p.score(X[torch.as_tensor(te)], ya[te]))
    return np.asarray(scores)


# ---------------------------------------------------------------------------------------------- site sweeps
@dataclass
class ProbeSweepResult:
    """One probe per site: a tidy table and the fitted probes.

    ``table`` rows: ``site``, ``index`` (order of the sweep, e.g. the layer), ``metric`` ("accuracy" or
    "r2"), ``train_score``, ``test_score``, ``control_score``, ``selectivity`` (test - control; ``None``
    without control), ``n_train``, ``n_test``, ``d``. ``probes[site]`` is the probe fitted on the training
    split (its ``direction_`` lives in that site's feature space).
    """

    table: list[dict[str, Any]]
    probes: dict[str, Any] = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        return [r["site"] for r in self.table]

    def column(self, name: str) -> list[Any]:
        return [r[name] for r in self.table]

    def best_site(self, by: str = "test_score") -> str:
        rows = [r for r in self.table if r[by] is not None]
        return max(rows, key=lambda r: r[by])["site"]

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "config": self.config}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, default=str))

    def plot(self, ax: Any = None) -> Any:
        """Test score, control score and selectivity per site (in sweep order); returns the figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(self.table) + 2), 3.5))
        else:
            fig = ax.figure
        x = np.arange(len(self.table))
        metric = self.table[0]["metric"] if self.table else "score"
        ax.plot(x, self.column("test_score"), "o-", label=f"test {metric}")
        ax.plot(x, self.column("train_score"), ".:", color="grey", label=f"train {metric}")
        if all(r["control_score"] is not None for r in self.table):
            ax.plot(x, self.column("control_score"), "s--", label=f"control {metric}")
            ax.plot(x, self.column("selectivity"), "^-", label="selectivity")
        ax.set_xticks(x)
        ax.set_xticklabels(self.sites, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(metric)
        ax.set_title("probe sweep")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def _chunks(data: Any, batch_size: int) -> Iterator[Any]:
    if isinstance(data, torch.Tensor):
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size]
    else:
        yield from data


def probe_sites(model: Any, data: Any, labels: ArrayLike, sites: Sequence[str] | str | None = None,
                pool: Any = "mean", probe: _Probe | None = None, groups: ArrayLike | None = None,
                control: bool = True, control_types: ArrayLike | None = None, test_size: float = 0.2,
                seed: int = 0, batch_size: int = 256) -> ProbeSweepResult:
    """Fit one probe per site on the model's activations and compare them.

    Args:
        model: a :class:`~interp_core.hooked.HookedModel` (an ``nn.Module`` is wrapped).
        data: inputs ``[N, ...]`` (run through the model in chunks of ``batch_size``), an iterable of input
            batches, or an already collected ``ActivationCache`` / ``ActivationStore`` holding the sites.
        labels: ``[N]`` one per input (repeated over positions for unpooled sites) or one per feature row.
        sites: site names (default: the model's default sites).
        pool: how positions are reduced (``"mean"``, ``"cls"``, ...; ``None`` folds positions into rows).
        probe: the probe to clone per site (default ``LinearProbe("logistic", tol=3e-4,
            constant_features="ignore")``: a sweep compares held-out accuracies, and ``tol=3e-4`` reaches the
            accuracy of the ``tol=1e-4`` fit within 0.2 points in ``benchmarks/probes.py`` in half the time).
        groups: ``[N]`` group per input for the held-out split (default: each input its own group, so the
            positions of one input stay on one side).
        control: also fit a control task (Hewitt & Liang 2019) per site and report selectivity.
        control_types: ``[N]`` input type per input for the control task (default: ``groups`` when given,
            else identical inputs share a type; see the module docstring).

    Logistic linear probes of all sites (and their controls) are fitted together by :func:`fit_many`.
    """
    from .hooked import HookedModel

    probe = probe if probe is not None else LinearProbe("logistic", tol=3e-4, constant_features="ignore")
    if hasattr(data, "features") and not isinstance(data, torch.Tensor):
        source = data
        names = list([sites] if isinstance(sites, str) else (sites or source.site_names))
        feats = {s: source.features(s, pool=pool) for s in names}
        input_ids = None
    else:
        hm = model if isinstance(model, HookedModel) else HookedModel(model)
        names = list([sites] if isinstance(sites, str) else (sites or hm.default_sites))
        parts: dict[str, list[torch.Tensor]] = {s: [] for s in names}
        raw: list[torch.Tensor] = []
        with hm.evaluating():
            for chunk in _chunks(data, batch_size):
                _, cache = hm.run_with_cache(chunk, sites=names, pool=pool)
                for s in names:
                    parts[s].append(cache.features(s))
                if control and control_types is None and isinstance(chunk, torch.Tensor):
                    raw.append(chunk.reshape(len(chunk), -1))
        feats = {s: torch.cat(v) for s, v in parts.items()}
        input_ids = (_first_occurrence(torch.unique(torch.cat(raw), dim=0, return_inverse=True)[1].numpy())
                     if raw else None)
    y_in = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    n_inputs = len(y_in)
    rows_per = {s: f.shape[0] for s, f in feats.items()}
    fits = {}
    for s, n_rows in rows_per.items():
        if n_rows % n_inputs:
            raise InputError(f"site '{s}' gives {n_rows} feature rows, not a multiple of the {n_inputs} labels; "
                             f"pool the site or give one label per row")
        fits[s] = n_rows // n_inputs
    g_in = (np.arange(n_inputs) if groups is None else _to_numpy_1d(groups, "groups"))
    if len(g_in) != n_inputs:
        raise InputError(f"groups has {len(g_in)} entries for {n_inputs} inputs")
    if control_types is not None:
        t_in = _to_numpy_1d(control_types, "control_types")
    elif groups is not None:
        t_in = g_in
    elif input_ids is not None:
        t_in = input_ids
    else:
        t_in = np.arange(n_inputs)
    yc_in = control_labels(y_in, t_in, seed=seed) if control else None
    # split at the level of inputs (whole groups), then expand to rows
    tr_in, te_in = train_test_split_by_group(n_inputs, g_in, test_size, seed)
    test_mask_in = np.zeros(n_inputs, dtype=bool)
    test_mask_in[te_in] = True

    jobs, job_keys = [], []
    for s in names:
        rep = fits[s]
        y_rows = np.repeat(y_in, rep, axis=0)
        te_rows = np.repeat(test_mask_in, rep)
        X = feats[s]
        tr_t, te_t = torch.as_tensor(~te_rows), torch.as_tensor(te_rows)
        jobs.append((probe.clone().set_params(control=False), X[tr_t], y_rows[~te_rows], X[te_t], y_rows[te_rows]))
        job_keys.append((s, "task"))
        if control:
            yc_rows = np.repeat(yc_in, rep, axis=0)
            jobs.append((probe.clone().set_params(control=False), X[tr_t], yc_rows[~te_rows], X[te_t],
                         yc_rows[te_rows]))
            job_keys.append((s, "control"))
    if isinstance(probe, LinearProbe):
        fit_many([j[0] for j in jobs], [j[1] for j in jobs], [j[2] for j in jobs])
    else:
        for j in jobs:
            j[0].fit(j[1], j[2])
    done = {key: j for key, j in zip(job_keys, jobs)}
    table, probes = [], {}
    for i, s in enumerate(names):
        p, Xtr, ytr, Xte, yte = done[(s, "task")]
        row = {"site": s, "index": i, "metric": "accuracy" if p.is_classifier else "r2",
               "train_score": float(p.score(Xtr, ytr)), "test_score": float(p.score(Xte, yte)),
               "control_score": None, "selectivity": None, "n_train": int(len(ytr)), "n_test": int(len(yte)),
               "d": int(Xtr.shape[1])}
        if control:
            c, _, _, cXte, cyte = done[(s, "control")]
            row["control_score"] = float(c.score(cXte, cyte))
            row["selectivity"] = row["test_score"] - row["control_score"]
            p.task_score_, p.control_score_ = row["test_score"], row["control_score"]
            p.selectivity_ = row["selectivity"]
        table.append(row)
        probes[s] = p
    config = {"sites": names, "pool": pool if not callable(pool) else repr(pool), "probe": repr(probe),
              "control": control, "test_size": test_size, "seed": seed, "n_inputs": n_inputs}
    return ProbeSweepResult(table=table, probes=probes, config=config)
