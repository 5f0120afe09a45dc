"""Probes: linear and MLP read-outs of activations, with control tasks and site sweeps.

The package, by job:

- :mod:`~interp_core.probes.base` — input validation and the scikit-learn estimator base;
- :mod:`~interp_core.probes.solvers` — a generic lockstep L-BFGS (:func:`lbfgs_many`) and closed-form ridge;
- :mod:`~interp_core.probes.joint` — the logistic solver: L-BFGS in whitened coordinates, every probe that
  reads one feature matrix solved together (one wide product per evaluation);
- :mod:`~interp_core.probes.linear` — :class:`LinearProbe` (``kind="logistic" | "ridge_classifier" |
  "linear" | "ridge"``) and :func:`fit_many` (many probes at once);
- :mod:`~interp_core.probes.mlp` — :class:`MLPProbe`;
- :mod:`~interp_core.probes.controls` — Hewitt & Liang control tasks by input type (:func:`control_labels`),
  :func:`selectivity` and :class:`SelectivityProbe`, group-wise splits, :func:`cross_val_score`;
- :mod:`~interp_core.probes.sweep` — :func:`probe_sites` (one probe per site, held out, with controls) and
  :class:`ProbeSweepResult`.

Probes are scikit-learn estimators: keyword-only parameters, ``fit(X, y)`` returns ``self`` and does no model
selection, learned state ends in ``_``, ``clone`` / ``Pipeline`` / ``GridSearchCV`` / ``cross_val_score``
work, and ``sklearn.utils.estimator_checks.check_estimator`` passes (one exemption for the iterative solvers,
logistic and MLP: ``check_sample_weight_equivalence_on_dense_data`` holds to the solver's ``tol``, not to the
check's ``rtol=1e-7``; a float64 logistic probe at ``tol=1e-11`` passes it). ``X`` is ``[N, d]`` feature rows (e.g.
``cache.features(site, pool=...)``), ``y`` is ``[N]`` labels (classifiers) or ``[N]`` / ``[N, t]`` targets
(regressors); numpy arrays and tensors are both accepted.

    probe = LinearProbe(kind="logistic", l2=1e-3).fit(cache.features("blocks.5.resid_post", pool="cls"), y)
    probe.score(X_test, y_test), probe.direction_(label=3)
    SelectivityProbe(LinearProbe()).fit(X, y, groups=image_id).selectivity_
"""

from ..errors import NotFittedError
from .base import ProbeBase
from .controls import (
    SelectivityProbe,
    control_labels,
    cross_val_score,
    input_types,
    selectivity,
    train_test_split_by_group,
)
from .linear import KINDS, LinearProbe, fit_many
from .mlp import MLPProbe
from .solvers import lbfgs_many
from .sweep import ProbeSweepResult, default_probe, fit_and_score, probe_sites

__all__ = ["KINDS", "LinearProbe", "MLPProbe", "NotFittedError", "ProbeBase", "ProbeSweepResult",
           "SelectivityProbe", "control_labels", "cross_val_score", "default_probe", "fit_and_score", "fit_many",
           "input_types", "lbfgs_many", "probe_sites", "selectivity", "train_test_split_by_group"]
