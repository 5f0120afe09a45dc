"""Control tasks, selectivity and held-out splits (``interp_core.probes``).

**Control task** (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks", EMNLP). Every
input *type* gets one label drawn at random from the empirical label distribution (for regression: one
target value drawn from the empirical targets); all rows of a type share it. The suite has ONE definition of
the type of a row, used by :func:`~interp_core.probes.probe_sites`, :class:`SelectivityProbe` and
``rl.worldmodel.probe`` alike (:func:`control_labels`):

1. ``types`` given (e.g. a word type, a patch identity, an image id): those;
2. else the *input* the row came from: identical inputs are one type (:func:`input_types`). The input is
   what is fed to the model — an image, an observation — not the activation: two rows with the same
   observation but different recurrent memory are the same type, as two occurrences of a word are in
   Hewitt & Liang. A probe that sees only feature rows (:class:`SelectivityProbe` without ``types``) takes
   its rows as its inputs.

**Selectivity** = held-out task score - held-out control score (same probe, same split). A selective probe
reads the property from the representation rather than memorising types. When types are never shared
across the split (continuous inputs, or types = the split's groups) the control score measures what a probe
can say about arbitrary labels of unseen inputs (chance level unless it exploits label frequencies); types
shared across the split (Hewitt & Liang's word types) measure memorisation.

Splits are scikit-learn's: ``GroupShuffleSplit`` (whole groups, e.g. image id or episode, on one side),
``ShuffleSplit`` without groups, ``GroupKFold`` / ``KFold`` for :func:`cross_val_score`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, ShuffleSplit
from sklearn.model_selection import cross_val_score as _sk_cross_val_score
from sklearn.utils.metaestimators import available_if

from ..errors import InputError, InputTypeError
from .base import ArrayLike, as_features, as_numpy, check_lengths, to_numpy_1d
from .linear import LinearProbe, fit_many


# ---------------------------------------------------------------------------------------------- types, labels
def input_types(inputs: ArrayLike) -> np.ndarray:
    """``[N]`` integer type per input: identical inputs (all axes after the first compared) share a type.

    Types are numbered by first occurrence (distinct inputs get ``0..N-1`` in order), so the numbering
    does not depend on how inputs sort.
    """
    x = inputs if isinstance(inputs, torch.Tensor) else torch.as_tensor(np.asarray(inputs))
    if x.dim() == 0 or len(x) == 0:
        raise InputError(f"inputs: need [N, ...] inputs with N >= 1, got shape {tuple(x.shape)}")
    inverse = torch.unique(x.reshape(len(x), -1).detach().cpu(), dim=0, return_inverse=True)[1].numpy()
    return _by_first_occurrence(inverse)


def _by_first_occurrence(ids: np.ndarray) -> np.ndarray:
    """Renumber ``[N]`` type ids ``0, 1, ...`` in the order types first occur."""
    inverse = np.unique(ids, return_inverse=True)[1].reshape(-1)
    first = np.full(inverse.max() + 1, len(inverse))
    np.minimum.at(first, inverse, np.arange(len(inverse)))
    return np.unique(first[inverse], return_inverse=True)[1].reshape(-1)


def control_labels(y: ArrayLike, types: ArrayLike | None = None, *, inputs: ArrayLike | None = None,
                   seed: int = 0) -> np.ndarray:
    """Hewitt & Liang (2019) control labels: each input type gets the label (or target) of a uniformly
    drawn row, so the control task has the task's label distribution but carries no information beyond the
    type's identity.

    Args:
        y: ``[N]`` labels or ``[N, t]`` targets.
        types: ``[N]`` type ids (any hashable values); or
        inputs: ``[N, ...]`` the inputs the rows came from (images, observations): identical inputs are one
            type (:func:`input_types`). Exactly one of ``types`` and ``inputs``.
        seed: seed of the draw.
    Returns:
        ``[N, ...]`` control labels, same dtype as ``y``. Types are numbered by first occurrence, so the
        labels depend only on the partition of the rows into types (and the seed), not on how they are named.
    """
    ya = as_numpy(y)
    if (types is None) == (inputs is None):
        raise InputError("control_labels: give exactly one of types= (a type per row) and inputs= (the inputs "
                         "the rows came from; identical inputs are one type)")
    if types is not None:
        t = _by_first_occurrence(to_numpy_1d(types, "types"))
    else:
        t = input_types(inputs)
    if len(t) != len(ya):
        raise InputError(f"{'types' if types is not None else 'inputs'} has {len(t)} entries but y has {len(ya)}; "
                         f"give one per row")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ya), size=t.max() + 1)
    return ya[pick[t]]


# ---------------------------------------------------------------------------------------------- splits
def train_test_split_by_group(n: int, groups: ArrayLike | None = None, test_size: float = 0.2,
                              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted row indices ``(train, test)``; with ``groups`` whole groups go to one side (image id, episode).

    scikit-learn's ``GroupShuffleSplit`` (``ShuffleSplit`` without groups): ``test_size`` is the fraction of
    groups (of rows without groups) held out, rounded up; both sides are non-empty.
    """
    if not 0 < test_size < 1:
        raise InputError(f"test_size must be in (0, 1), got {test_size}")
    if n < 2:
        raise InputError(f"a train/test split needs at least 2 rows, got {n}")
    if groups is None:
        splitter: Any = ShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
        tr, te = next(splitter.split(np.zeros((n, 1))))
        return np.sort(tr), np.sort(te)
    g = to_numpy_1d(groups, "groups")
    if len(g) != n:
        raise InputError(f"groups has {len(g)} entries for {n} rows")
    n_groups = len(np.unique(g))
    if n_groups < 2:
        raise InputError(f"a split by group needs at least 2 groups, got {n_groups}")
    k = min(max(1, int(np.ceil(test_size * n_groups))), n_groups - 1)
    splitter = GroupShuffleSplit(n_splits=1, test_size=k, random_state=seed)
    tr, te = next(splitter.split(np.zeros((n, 1)), groups=g))
    return np.sort(tr), np.sort(te)


def cross_val_score(probe: Any, X: ArrayLike, y: ArrayLike, groups: ArrayLike | None = None,
                    n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Held-out scores of ``probe`` over ``n_splits`` folds: scikit-learn's ``cross_val_score`` with
    ``GroupKFold`` (whole groups per fold) when ``groups`` are given, else shuffled ``KFold``."""
    Xa = as_numpy(as_features(X))
    ya = as_numpy(y)
    check_lengths(len(Xa), ya)
    if groups is None:
        cv: Any = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
        g = None
    else:
        g = to_numpy_1d(groups, "groups")
        check_lengths(len(Xa), g, "groups")
        if len(np.unique(g)) < n_splits:
            raise InputError(f"{len(np.unique(g))} groups cannot make {n_splits} folds; lower n_splits")
        cv = GroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return _sk_cross_val_score(clone(probe), Xa, ya, groups=g, cv=cv, error_score="raise")


# ---------------------------------------------------------------------------------------------- selectivity
def selectivity(probe: Any, X: ArrayLike, y: ArrayLike, *, groups: ArrayLike | None = None,
                control_types: ArrayLike | None = None, inputs: ArrayLike | None = None,
                sample_weight: ArrayLike | None = None, test_size: float = 0.2,
                seed: int = 0) -> dict[str, float]:
    """Held-out task score, control score and selectivity of ``probe`` (cloned) on ``X [N, d]``, ``y [N]``.

    The split keeps ``groups`` whole (:func:`train_test_split_by_group`); the control labels are
    :func:`control_labels` with types ``control_types``, else ``groups``, else ``inputs`` (default: the rows of
    ``X``). Returns ``{"task_score", "control_score", "selectivity", "n_train", "n_test"}``.
    """
    if y is None:
        raise InputError("y: selectivity requires y to be passed, but the target y is None; give one label per row")
    Xt = as_features(X)
    ya = as_numpy(y)
    check_lengths(Xt.shape[0], ya)
    if Xt.shape[0] < 2:
        raise InputError(f"X: got {Xt.shape[0]} sample; a held-out split needs at least 2 rows")
    groups, control_types, sample_weight = (None if v is None else as_numpy(v)
                                            for v in (groups, control_types, sample_weight))
    for name, v in (("groups", groups), ("control_types", control_types), ("sample_weight", sample_weight)):
        if v is not None:
            check_lengths(Xt.shape[0], v, name)
    tr, te = train_test_split_by_group(Xt.shape[0], groups, test_size, seed)
    types = control_types if control_types is not None else groups
    cy = control_labels(ya, types, seed=seed) if types is not None else \
        control_labels(ya, inputs=inputs if inputs is not None else Xt, seed=seed)
    sw = None if sample_weight is None else as_numpy(sample_weight)
    fit_kw = {} if sw is None else {"sample_weight": sw[tr]}
    tr_t, te_t = torch.as_tensor(tr, device=Xt.device), torch.as_tensor(te, device=Xt.device)
    task, ctrl, X_tr = clone(probe), clone(probe), Xt[tr_t]
    if isinstance(probe, LinearProbe):  # task and control read the same rows: one joint solve
        sw_tr = fit_kw.get("sample_weight")
        fit_many([task, ctrl], [X_tr, X_tr], [ya[tr], cy[tr]], sample_weights=[sw_tr, sw_tr])
    else:
        task.fit(X_tr, ya[tr], **fit_kw)
        ctrl.fit(X_tr, cy[tr], **fit_kw)
    task_score = float(task.score(Xt[te_t], ya[te]))
    control_score = float(ctrl.score(Xt[te_t], cy[te]))
    return {"task_score": task_score, "control_score": control_score,
            "selectivity": task_score - control_score, "n_train": int(len(tr)), "n_test": int(len(te))}


class SelectivityProbe(BaseEstimator):
    """A probe plus its Hewitt & Liang control task: ``fit`` measures selectivity, then fits the probe.

    ``SelectivityProbe(LinearProbe(), test_size=0.2, random_state=0).fit(X, y, groups=..., control_types=...)``
    runs :func:`selectivity` (held-out task and control scores on a split that keeps ``groups`` whole) and
    fits ``probe_`` (a clone of ``probe``) on all rows. ``predict`` / ``score`` / ``direction_`` are those of
    ``probe_``.

    Fitted attributes: ``task_score_``, ``control_score_``, ``selectivity_``, ``probe_``, ``n_features_in_``.
    """

    def __init__(self, probe: Any = None, *, test_size: float = 0.2, random_state: int = 0):
        self.probe = probe
        self.test_size = test_size
        self.random_state = random_state

    def _probe(self) -> Any:
        if self.probe is None:
            from .linear import LinearProbe

            return LinearProbe()
        if not hasattr(self.probe, "fit") or not hasattr(self.probe, "score"):
            raise InputTypeError(f"probe: expected an estimator with fit and score, got {type(self.probe).__name__}")
        return self.probe

    def __sklearn_tags__(self):  # noqa: D105 - scikit-learn protocol
        return self._probe().__sklearn_tags__()

    def fit(self, X: ArrayLike, y: ArrayLike, groups: ArrayLike | None = None,
            control_types: ArrayLike | None = None, sample_weight: ArrayLike | None = None) -> "SelectivityProbe":
        """Measure selectivity on a held-out split, then fit the probe on all rows; returns ``self``."""
        base = self._probe()
        res = selectivity(base, X, y, groups=groups, control_types=control_types, sample_weight=sample_weight,
                          test_size=self.test_size, seed=self.random_state)
        self.task_score_ = res["task_score"]
        self.control_score_ = res["control_score"]
        self.selectivity_ = res["selectivity"]
        kw = {} if sample_weight is None else {"sample_weight": sample_weight}
        self.probe_ = clone(base).fit(X, y, **kw)
        self.n_features_in_ = self.probe_.n_features_in_
        return self

    def _fitted(self) -> Any:
        if not hasattr(self, "probe_"):
            from ..errors import NotFittedError

            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")
        return self.probe_

    @property
    def classes_(self) -> np.ndarray:
        """The fitted probe's classes (classifiers)."""
        return self._fitted().classes_

    def predict(self, X: ArrayLike) -> np.ndarray:
        return self._fitted().predict(X)

    @available_if(lambda self: hasattr(self._probe(), "decision_function"))
    def decision_function(self, X: ArrayLike) -> np.ndarray:
        return self._fitted().decision_function(X)

    @available_if(lambda self: hasattr(self._probe(), "predict_proba"))
    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        return self._fitted().predict_proba(X)

    def score(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
        return self._fitted().score(X, y, sample_weight=sample_weight)

    def direction_(self, label: Any = None, normalize: bool = True) -> torch.Tensor:
        return self._fitted().direction_(label=label, normalize=normalize)
