"""Linear probes (``interp_core.probes``): :class:`LinearProbe` and :func:`fit_many`.

``LinearProbe(kind=...)``:

- ``kind="logistic"`` — multinomial logistic regression with L2 (binary problems use one sigmoid output, as
  scikit-learn does): minimise ``sum_i s_i * CE_i + (l2 / 2) * ||W||^2`` (intercept not penalised), ``s_i``
  the sample weights (class weights included). This is scikit-learn's ``LogisticRegression(C=1 / l2)``; with
  ``standardize=True`` (default) the penalty applies to the standardised features, i.e. it matches
  ``make_pipeline(StandardScaler(), LogisticRegression(C=1 / l2))``. Solved full-batch by preconditioned
  L-BFGS in torch (:func:`~interp_core.probes.joint.fit_logistic_joint`: whitened coordinates of the feature
  matrix, analytic gradients, probes sharing a matrix solved together) to ``max |grad| <= tol`` of the
  objective divided by ``sum_i s_i`` (scikit-learn's ``gtol``), taken in the original coordinates.
- ``kind="ridge"`` / ``"ridge_classifier"`` — minimise ``sum_i s_i (y_i - x_i W - b)^2 + l2 ||W||^2``
  (scikit-learn's ``Ridge(alpha=l2)`` / ``RidgeClassifier(alpha=l2)``, which regresses ±1 targets and takes
  the argmax), closed form in float64; ``kind="linear"`` is least squares (``l2`` ignored).
- ``class_weight="balanced"`` weights class ``c`` by ``N / (n_classes * N_c)``, as scikit-learn.
- Standardisation uses the (sample-weighted) mean and standard deviation of the training rows.

A ``"logistic"`` / ``"ridge_classifier"`` probe is a scikit-learn classifier, ``"linear"`` / ``"ridge"`` a
(multi-output) regressor, as its tags say (``sklearn.base.is_classifier``), so ``clone``, ``Pipeline``,
``GridSearchCV`` and ``cross_val_score`` treat each kind as the matching scikit-learn estimator.

**Directions.** ``coef_`` (``[n_outputs, d]``, float64 tensor) and ``intercept_`` are expressed in the
ORIGINAL (unstandardised) feature space: ``decision(x) = x @ coef_.T + intercept_``. ``direction_(label)`` is
the gradient of the decision value for ``label`` with respect to ``x`` (unit norm by default) — the direction
to steer or to project out at the site. For a multinomial probe the per-class weights sum to zero at the
optimum (the L2 penalty removes softmax's shift freedom), so ``coef_[c]`` contrasts class ``c`` with the
average.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from sklearn.utils.metaestimators import available_if
from torch import nn

from ..errors import InputError, SiteError
from ..progress import progress_bar
from .base import ArrayLike, ProbeBase, check_finite
from .joint import LogisticTask, fit_logistic_joint
from .solvers import ridge_solve

logger = logging.getLogger(__name__)

KINDS = ("logistic", "ridge_classifier", "linear", "ridge")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _torch_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float64):
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise InputError(f"dtype must be 'float32' or 'float64' (or the torch dtype), got {dtype!r}")


class LinearProbe(ProbeBase):
    """A linear probe: logistic / ridge classifier / least squares / ridge regression (see module doc).

    Args (keyword-only):
        kind: ``"logistic"``, ``"ridge_classifier"``, ``"linear"`` or ``"ridge"``.
        l2: L2 strength; logistic: ``1 / C`` of scikit-learn; ridge: scikit-learn's ``alpha``. Ignored by
            ``"linear"``.
        standardize: fit on standardised features (coefficients are reported in the original space).
        class_weight: ``None``, ``"balanced"`` or ``{class: weight}`` (classifiers).
        fit_intercept: fit an unpenalised intercept.
        max_iter, tol, history: L-BFGS iterations, gradient tolerance (max abs, objective divided by the
            total sample weight) and memory (logistic only).
        constant_features: ``"error"`` (default) or ``"ignore"`` (constant columns get zero weight) when
            ``standardize=True``.
        dtype: ``"float32"`` or ``"float64"``, the float dtype of the logistic solver (closed forms always
            use float64).

    Fitted attributes: ``coef_ [n_outputs, d]``, ``intercept_ [n_outputs]`` (original feature space, float64
    tensors), ``mean_``, ``scale_`` (standardisation), ``classes_`` (classifiers), ``n_features_in_``,
    ``n_iter_`` (L-BFGS iterations; 1 for a closed form), ``converged_``.

    ``fit`` fits the probe and nothing else: held-out scores, control tasks and selectivity live in
    :class:`~interp_core.probes.SelectivityProbe` / :func:`~interp_core.probes.selectivity`.
    """

    def __init__(self, *, kind: Literal["logistic", "ridge_classifier", "linear", "ridge"] = "logistic",
                 l2: float = 1.0, standardize: bool = True, class_weight: Any = None, fit_intercept: bool = True,
                 max_iter: int = 1000, tol: float = 1e-4, history: int = 10, constant_features: str = "error",
                 dtype: str = "float32"):
        self.kind = kind
        self.l2 = l2
        self.standardize = standardize
        self.class_weight = class_weight
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.history = history
        self.constant_features = constant_features
        self.dtype = dtype

    def _is_classifier(self) -> bool:
        if self.kind not in KINDS:
            raise InputError(f"kind must be one of {KINDS}, got {self.kind!r}")
        return self.kind in ("logistic", "ridge_classifier")

    def _validate_params(self) -> None:
        self._is_classifier()
        if not isinstance(self.l2, (int, float)) or self.l2 < 0 or (self.kind == "logistic" and self.l2 == 0):
            raise InputError(f"l2 must be > 0 for logistic probes (>= 0 for ridge), got {self.l2!r}; "
                             f"use a small value such as 1e-4 for a nearly unregularised fit")
        if self.class_weight is not None and not self.is_classifier:
            raise InputError(f"class_weight applies to classifiers, not kind={self.kind!r}")
        if int(self.max_iter) < 1 or not self.tol > 0 or int(self.history) < 1:
            raise InputError(f"max_iter and history must be >= 1 and tol > 0, got max_iter={self.max_iter}, "
                             f"history={self.history}, tol={self.tol}")
        _torch_dtype(self.dtype)

    # ---- fitting
    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> "LinearProbe":
        """Fit on ``X [N, d]`` and ``y [N]`` (or ``[N, t]`` regression targets); returns ``self``."""
        fit_many([self], [X], [y], sample_weights=[sample_weight])
        return self

    def _setup(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None, memo: dict | None = None) -> dict:
        """Validate, encode labels, compute standardisation; returns what the solvers need. ``memo`` shares
        the standardisation statistics between probes of one :func:`fit_many` call that read the same rows."""
        self._validate_params()
        X, y, sw = self._validate_fit(X, y, sample_weight)
        key = (X.data_ptr(), tuple(X.shape), X.stride(), X.dtype, X.device, self.standardize, self.constant_features)
        if memo is not None and sw is None and key in memo:
            mean, scale = memo[key]
        else:
            mean, scale = self._standardize_stats(X, self.standardize, self.constant_features, sw)
            if memo is not None and sw is None:
                memo[key] = (mean, scale)
        info: dict[str, Any] = {"X": X, "mean": mean, "scale": scale}
        if self.is_classifier:
            classes, yi = self._encode_labels(y)
            self.classes_ = classes
            info["y"] = yi.to(X.device)
            w = self._class_sample_weight(yi, len(classes), self.class_weight, sw)
        else:
            info["y"] = self._regression_targets(y).to(X.device)
            w = sw
        info["sw"] = None if w is None else w.to(X.device)
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
                Y = -torch.ones(len(yi), k, dtype=torch.float64, device=X.device)
                Y[torch.arange(len(yi), device=X.device), yi] = 1.0
        else:
            Y = info["y"]
        l2 = 0.0 if self.kind == "linear" else float(self.l2)
        W, b = ridge_solve(Xs, Y, info["sw"], l2, self.fit_intercept)
        self._set_solution(W, b, info["mean"], info["scale"], X.shape[1])
        self.n_iter_ = 1
        self.converged_ = True

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
            check_finite(xb, f"rows of site '{site}'")
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
            self.n_iter_, self.converged_ = 1, True
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
    def _decision(self, X: ArrayLike) -> torch.Tensor:
        X = self._fitted_features(X)
        out = X.to(self.coef_.device).double() @ self.coef_.T + self.intercept_
        if self.is_classifier and out.shape[1] == 1:
            return out[:, 0]
        return out

    @available_if(lambda self: self.is_classifier)
    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """``X @ coef_.T + intercept_``: ``[N, n_classes]`` (binary: ``[N]``, positive = ``classes_[1]``)."""
        return self._decision(X).cpu().numpy()

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Class labels ``[N]`` (classifiers) or predicted targets ``[N]`` / ``[N, t]`` (regressors)."""
        z = self._decision(X)
        if self.is_classifier:
            idx = (z > 0).long() if z.dim() == 1 else z.argmax(1)
            return self.classes_[idx.cpu().numpy()]
        out = z.cpu().numpy()
        return out[:, 0] if getattr(self, "_y_1d", False) else out

    @available_if(lambda self: self.kind == "logistic")
    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities ``[N, n_classes]`` (logistic probes only)."""
        z = self._decision(X)
        if z.dim() == 1:
            p1 = torch.sigmoid(z)
            return torch.stack([1 - p1, p1], 1).cpu().numpy()
        return torch.softmax(z, 1).cpu().numpy()

    @available_if(lambda self: self.kind == "logistic")
    def predict_log_proba(self, X: ArrayLike) -> np.ndarray:
        """Log class probabilities ``[N, n_classes]`` (logistic probes only)."""
        z = self._decision(X)
        if z.dim() == 1:
            z = torch.stack([torch.zeros_like(z), z], 1)
        return torch.log_softmax(z, 1).cpu().numpy()

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
            if label is None and coef.shape[0] > 1:
                raise InputError(f"this probe has {coef.shape[0]} outputs; say which: direction_(label=i)")
            i = 0 if label is None else int(label)
            if not 0 <= i < coef.shape[0]:
                raise InputError(f"label: output {i} out of range; this probe has {coef.shape[0]} outputs")
            v = coef[i]
        v = v.float()
        return v / v.norm().clamp_min(1e-30) if normalize else v


def fit_many(probes: Sequence[LinearProbe], Xs: Sequence[ArrayLike], ys: Sequence[ArrayLike],
             sample_weights: Sequence[ArrayLike | None] | None = None, warm_start: bool = True,
             progress: bool | None = False, *, precondition: bool = True, joint: bool = True) -> list[LinearProbe]:
    """Fit several linear probes at once (e.g. one per site and variable); returns them fitted.

    Logistic probes that read the same feature matrix (the same ``X``, or equal values, with the same
    standardisation and solver settings; e.g. several variables or a task and its control at one site) are
    solved together by :func:`~interp_core.probes.joint.fit_logistic_joint`: L-BFGS in whitened coordinates of
    that matrix (``precondition``; the same objective, so the same optimum, with several times fewer
    iterations) and one wide product per evaluation for all of them (``joint``); each probe keeps its own
    L-BFGS memory and its own stopping test ``max |grad| <= tol`` in the original coordinates, so the result
    equals separate fits to ``tol``. ``precondition=False`` / ``joint=False`` switch the levers off (for
    measurement; the optimum is the same). The other kinds are solved in closed form.

    With ``warm_start``, a logistic problem whose labels (and weights) equal an earlier feature matrix's
    problem starts from that solution (in standardised coordinates) when it has the lower objective; the
    problems are convex, so the optimum (to ``tol``) is the same. ``progress``: a bar over the probes
    (``None``: only on a terminal).
    """
    sample_weights = list(sample_weights) if sample_weights is not None else [None] * len(probes)
    if not (len(probes) == len(Xs) == len(ys) == len(sample_weights)):
        raise InputError("fit_many needs one X, y (and sample weight) per probe")
    for p in probes:
        if not isinstance(p, LinearProbe):
            raise InputError(f"fit_many fits LinearProbe objects, got {type(p).__name__}; call .fit on it")
    memo: dict = {}
    infos = [p._setup(X, y, sw, memo) for p, X, y, sw in zip(probes, Xs, ys, sample_weights)]
    bar = progress_bar(total=len(probes), desc="probes", progress=progress, leave=False)
    for i, p in enumerate(probes):
        if p.kind != "logistic":
            p._fit_closed_form(infos[i])
            bar.update(1)
    groups = _shared_matrix_groups(probes, infos, joint)
    done: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []  # (y, sw, beta) for warm starts
    for members in groups:
        p0, info0 = probes[members[0]], infos[members[0]]
        dtype = _torch_dtype(p0.dtype)
        Xs_ = ((info0["X"].to(dtype) - info0["mean"].to(dtype)) / info0["scale"].to(dtype)).contiguous()
        tasks = []
        for i in members:
            p, info = probes[i], infos[i]
            start = None
            if warm_start:
                for y_prev, sw_prev, beta in reversed(done):
                    if _same(y_prev, info["y"]) and _same(sw_prev, info["sw"]):
                        start = beta if beta.shape[1] == Xs_.shape[1] + int(p.fit_intercept) else None
                        break
            sw = info["sw"]
            tasks.append(LogisticTask(y=info["y"], n_out=1 if len(p.classes_) == 2 else len(p.classes_),
                                      sw=None if sw is None else sw.to(dtype), l2=float(p.l2), tol=float(p.tol),
                                      max_iter=int(p.max_iter), start=start))
        outs = fit_logistic_joint(Xs_, tasks, fit_intercept=p0.fit_intercept, history=int(p0.history),
                                  precondition=precondition)
        d = Xs_.shape[1]
        for i, (beta, n_iter, conv) in zip(members, outs):
            p, info = probes[i], infos[i]
            b = beta[:, d] if p.fit_intercept else torch.zeros(beta.shape[0], dtype=beta.dtype, device=beta.device)
            p._set_solution(beta[:, :d].T, b, info["mean"], info["scale"], d)
            p.n_iter_ = max(1, int(n_iter))
            p.converged_ = bool(conv)
            done.append((info["y"], info["sw"], beta))
            if not conv:
                logger.warning("logistic probe %d did not reach tol=%g in %d iterations; raise max_iter or l2",
                               i, p.tol, p.max_iter)
        bar.update(len(members))
    bar.close()
    return list(probes)


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.device == b.device and bool(torch.equal(a, b))


def _shared_matrix_groups(probes: Sequence[LinearProbe], infos: list[dict], joint: bool) -> list[list[int]]:
    """The logistic probes, grouped by the standardised feature matrix they read (same rows, same
    standardisation) and the settings one joint solve shares (intercept, dtype, L-BFGS memory); in order."""
    groups: list[tuple[tuple, dict, list[int]]] = []
    for i, p in enumerate(probes):
        if p.kind != "logistic":
            continue
        info = infos[i]
        X = info["X"]
        key = (tuple(X.shape), X.dtype, X.device, bool(p.fit_intercept), _torch_dtype(p.dtype), int(p.history))
        for k, ref, members in groups if joint else []:
            if k != key:
                continue
            Xr = ref["X"]
            same_x = (X.data_ptr() == Xr.data_ptr() and X.stride() == Xr.stride()) or bool(torch.equal(X, Xr))
            if same_x and torch.equal(info["mean"], ref["mean"]) and torch.equal(info["scale"], ref["scale"]):
                members.append(i)
                break
        else:
            groups.append((key, info, [i]))
    return [members for _, _, members in groups]
