"""What every probe shares: input validation and the scikit-learn estimator base (``interp_core.probes``).

A probe is a scikit-learn estimator (``sklearn.base.BaseEstimator``): the constructor stores keyword-only
parameters, ``fit(X, y)`` returns ``self``, learned state ends in ``_``, an unfitted probe raises
:class:`~interp_core.errors.NotFittedError` (also scikit-learn's). Whether a probe is a classifier or a
regressor depends on a parameter (``kind`` of :class:`~interp_core.probes.LinearProbe`, ``task`` of
:class:`~interp_core.probes.MLPProbe`), so the estimator type is reported through ``__sklearn_tags__``
(the same tags ``ClassifierMixin`` / ``RegressorMixin`` set) rather than by inheriting one mixin; ``score``
is scikit-learn's ``accuracy_score`` for classifiers and ``r2_score`` (uniform average over outputs) for
regressors, as the mixins define it.

``X`` is ``[N, d]`` feature rows (e.g. ``cache.features(site, pool=...)``); tensors stay tensors (on their
device), anything else goes through scikit-learn's ``check_array``. Every refusal is the suite's own error
naming the argument and the fix.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils import ClassifierTags, RegressorTags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, column_or_1d

from ..boundary import all_finite
from ..errors import InputError, InputTypeError, NotFittedError

ArrayLike = Any  # numpy array, torch tensor or nested sequence


# ---------------------------------------------------------------------------------------------- validation
def as_numpy(v: ArrayLike) -> np.ndarray:
    """A tensor or array-like as a numpy array (CPU, detached)."""
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def to_numpy_1d(v: ArrayLike, what: str) -> np.ndarray:
    a = as_numpy(v)
    if a.ndim != 1:
        raise InputError(f"{what} must be 1-D with one entry per row, got shape {a.shape}")
    return a


def check_finite(X: torch.Tensor, what: str = "X") -> None:
    """Refuse NaN / inf entries with a message that says where they are (both words appear, as scikit-learn's)."""
    if X.is_floating_point() and all_finite(X):
        return
    bad = ~torch.isfinite(X)
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(1)).flatten()
        cols = torch.nonzero(bad.any(0)).flatten()
        n_nan, n_inf = int(torch.isnan(X).sum()), int(torch.isinf(X).sum())
        raise InputError(f"{what} has {n_nan} NaN and {n_inf} inf entries in {len(rows)} rows (first rows "
                         f"{rows[:5].tolist()}, columns {cols[:10].tolist()}); remove or impute them before "
                         f"fitting (e.g. X[torch.isfinite(X).all(1)])")


def check_lengths(n: int, y: Any, name: str = "y") -> None:
    if y is not None and len(y) != n:
        raise InputError(f"X has {n} rows but {name} has {len(y)} entries; they must describe the same rows "
                         f"(with unpooled sites, positions are folded into rows: repeat the labels per position "
                         f"or pool the site)")


def as_features(X: ArrayLike, what: str = "X") -> torch.Tensor:
    """``X`` as a floating ``[N, d]`` tensor (tensors keep their device and floating dtype; integers become
    float64; other inputs pass scikit-learn's ``check_array``: sparse, complex or non-numeric data refused)."""
    if not isinstance(X, torch.Tensor):
        try:
            Xa = check_array(X, dtype=(np.float64, np.float32), ensure_all_finite=False, ensure_2d=False,
                             allow_nd=True, ensure_min_samples=0, input_name=what)
        except TypeError as e:
            raise InputTypeError(f"{what}: {e}") from None
        except ValueError as e:
            raise InputError(f"{what}: {e}") from None
        if not Xa.flags.writeable:  # torch warns on read-only (memory-mapped) arrays
            Xa = Xa.copy()
        X = torch.from_numpy(Xa)
    X = X.detach()
    if X.is_complex():
        raise InputError(f"{what}: Complex data not supported; pass real features (e.g. X.abs() or X.real)")
    if X.dim() != 2:
        raise InputError(f"{what} must be 2-D [N rows, d features], got shape {tuple(X.shape)}; Reshape your data "
                         f"(X.reshape(1, -1) for one row, X.reshape(-1, 1) for one feature) or use "
                         f"cache.features(site, pool=...) to turn an activation into rows")
    if not X.is_floating_point():
        X = X.double()
    return X


def check_sample_weight(sample_weight: ArrayLike | None, n: int) -> torch.Tensor | None:
    """``[N]`` non-negative finite float64 weights, not all zero (``None`` passes through)."""
    if sample_weight is None:
        return None
    sw = as_numpy(sample_weight)
    if sw.ndim == 0:
        sw = np.full(n, float(sw))
    try:
        sw = np.asarray(sw, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"sample_weight: not numeric ({e})") from None
    if sw.ndim != 1 or len(sw) != n:
        raise InputError(f"sample_weight: expected shape ({n},), one weight per row, got {sw.shape}")
    if not np.isfinite(sw).all() or (sw < 0).any():
        raise InputError("sample_weight: weights must be finite and non-negative")
    if sw.sum() <= 0:
        raise InputError("sample_weight: all sample weights are zero; give at least one row a positive weight")
    return torch.from_numpy(sw.copy())


def _moments(X: torch.Tensor, w: torch.Tensor | None, rows: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Column mean and standard deviation (``ddof=0``; weighted by ``w [N]`` summing to 1 when given) in
    float64, two passes over row chunks (a float64 copy of all of ``X`` costs more than the arithmetic)."""
    n = X.shape[0]
    s1 = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
    for i in range(0, n, rows):
        c = X[i:i + rows].double()
        s1 += c.sum(0) / n if w is None else w[i:i + rows] @ c
    s2 = torch.zeros_like(s1)
    for i in range(0, n, rows):
        c = X[i:i + rows].double() - s1
        c *= c
        s2 += c.sum(0) / n if w is None else w[i:i + rows] @ c
    return s1, s2.sqrt()


# ---------------------------------------------------------------------------------------------- base class
class ProbeBase(BaseEstimator):
    """scikit-learn estimator base of the probes: tags by task, validation, labels, standardisation, score."""

    # ---- what kind of estimator this is
    def _is_classifier(self) -> bool:
        raise NotImplementedError

    @property
    def is_classifier(self) -> bool:
        """Whether this probe classifies (accuracy) or regresses (R^2)."""
        return self._is_classifier()

    def _multi_output(self) -> bool:
        return not self._is_classifier()

    def __sklearn_tags__(self):  # noqa: D105 - scikit-learn protocol
        tags = super().__sklearn_tags__()
        try:
            clf = self._is_classifier()
        except Exception:  # an invalid kind / task: report a regressor; fit will say what is wrong
            clf = False
        tags.estimator_type = "classifier" if clf else "regressor"
        tags.classifier_tags = ClassifierTags() if clf else None
        tags.regressor_tags = None if clf else RegressorTags()
        tags.target_tags.required = True
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = self._multi_output() if not clf else False
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        return tags

    # ---- fitted state
    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "n_features_in_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")

    def set_params(self, **params: Any) -> "ProbeBase":
        """Set parameters (scikit-learn's ``set_params``); an unknown name is an :class:`InputError`."""
        valid = sorted(self.get_params(deep=False))
        for k in params:
            if k.split("__")[0] not in valid:
                raise InputError(f"invalid parameter {k!r} for {type(self).__name__}; valid: {valid}")
        return super().set_params(**params)

    def clone(self) -> "ProbeBase":
        """An unfitted probe with the same parameters (``sklearn.base.clone``)."""
        from sklearn.base import clone

        return clone(self)

    # ---- input handling
    def _validate_fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None
                      ) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """``(X [N, d], y, sample_weight [N] or None)`` checked for a fit; sets ``n_features_in_`` later."""
        if y is None:
            raise InputError(f"y: {type(self).__name__} requires y to be passed, but the target y is None; give "
                             f"one label (or target) per row of X")
        if not isinstance(y, torch.Tensor):
            y = np.asarray(y)
        X = as_features(X)
        if X.shape[0] == 0:
            raise InputError("X: 0 rows (shape (0, d)); need at least 2 rows to fit a probe")
        check_lengths(X.shape[0], y)
        check_finite(X)
        if X.shape[0] < 2:
            raise InputError(f"X: got 1 sample; need at least 2 rows to fit a probe, got {X.shape[0]}")
        sw = check_sample_weight(sample_weight, X.shape[0])
        return X, y, sw

    def _fitted_features(self, X: ArrayLike) -> torch.Tensor:
        """``X`` as features of the width this probe was fitted on (clear errors otherwise)."""
        self._check_fitted()
        X = as_features(X)
        if X.shape[1] != self.n_features_in_:
            raise InputError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input (it was fitted on {self.n_features_in_}); "
                             f"pass rows of the site the probe was fitted on")
        check_finite(X)
        return X

    def _encode_labels(self, y: ArrayLike) -> tuple[np.ndarray, torch.Tensor]:
        """``(classes_, [N] class indices)``; refuses continuous targets and a single class."""
        ya = as_numpy(y)
        try:
            ya = column_or_1d(ya, warn=True)
            check_classification_targets(ya)
        except ValueError as e:
            raise InputError(f"y (class labels): {e}; for continuous targets use a regression probe "
                             f"(kind='ridge' or task='regressor')") from None
        classes, inv = np.unique(ya, return_inverse=True)
        if len(classes) < 2:
            raise InputError(f"y has a single class ({classes[0]!r}); a classifier probe needs at least two "
                             f"classes (1 class given) — check the labels or use a regression probe (kind='ridge')")
        return classes, torch.as_tensor(inv.reshape(-1), dtype=torch.long)

    def _regression_targets(self, y: ArrayLike) -> torch.Tensor:
        yt = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(np.array(y, dtype=np.float64))
        if yt.dim() not in (1, 2):
            raise InputError(f"y: regression targets must be [N] or [N, t], got shape {tuple(yt.shape)}")
        yt = yt.double()
        if not bool(torch.isfinite(yt).all()):
            raise InputError("y has NaN or inf targets; remove those rows before fitting")
        self._y_1d = yt.dim() == 1
        return yt.reshape(len(yt), -1)

    def _class_sample_weight(self, yi: torch.Tensor, n_classes: int, class_weight: Any,
                             sw: torch.Tensor | None) -> torch.Tensor | None:
        """Per-row weights: sample weights times class weights (``"balanced"``: ``N / (k N_c)``, as sklearn)."""
        if class_weight is None:
            return sw
        if isinstance(class_weight, str) and class_weight == "balanced":
            counts = torch.bincount(yi, minlength=n_classes).double()
            cw = len(yi) / (n_classes * counts)
        elif isinstance(class_weight, dict):
            cw = torch.tensor([float(class_weight.get(c, 1.0)) for c in self.classes_.tolist()], dtype=torch.float64)
        else:
            raise InputError(f"class_weight must be None, 'balanced' or a dict {{class: weight}}, got "
                             f"{class_weight!r}")
        w = cw[yi]
        return w if sw is None else w * sw

    @staticmethod
    def _standardize_stats(X: torch.Tensor, standardize: bool, constant_features: str,
                           sw: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the training rows (weighted by ``sample_weight`` when given, as
        ``StandardScaler().fit(X, sample_weight=...)``; class weights do not enter). Constant columns get
        ``inf`` scale (zero weight) with ``constant_features="ignore"``."""
        d = X.shape[1]
        if constant_features not in ("error", "ignore"):
            raise InputError(f"constant_features must be 'error' or 'ignore', got {constant_features!r}")
        if not standardize:
            return torch.zeros(d, dtype=X.dtype, device=X.device), torch.ones(d, dtype=X.dtype, device=X.device)
        mean, std = _moments(X, None if sw is None else (sw / sw.sum()).to(X.device, torch.float64))
        const = std <= 1e-12 * torch.clamp(mean.abs(), min=1.0)
        if bool(const.any()):
            cols = torch.nonzero(const).flatten().tolist()
            if constant_features == "error":
                raise InputError(f"X has {len(cols)} constant feature columns {cols[:20]}"
                                 f"{' ...' if len(cols) > 20 else ''}, which cannot be standardised; drop them "
                                 f"(e.g. X[:, X.std(0) > 0]), pass constant_features='ignore' (they are then "
                                 f"left out of the fit) or standardize=False")
            std = torch.where(const, torch.full_like(std, math.inf), std)  # standardised value 0: no effect
        return mean.to(X.dtype), std.to(X.dtype)

    # ---- score
    def score(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
        """Accuracy (classifiers) or R^2, the coefficient of determination uniformly averaged over outputs
        (regressors): scikit-learn's ``accuracy_score`` / ``r2_score``."""
        self._check_fitted()
        pred = self.predict(X)
        ya = as_numpy(y)
        check_lengths(len(pred), ya)
        sw = None if sample_weight is None else as_numpy(sample_weight)
        if self._is_classifier():
            return float(accuracy_score(column_or_1d(ya), pred, sample_weight=sw))
        return float(r2_score(ya.astype(np.float64), np.asarray(pred, dtype=np.float64), sample_weight=sw))
