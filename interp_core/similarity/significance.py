"""Significance of a similarity: permutation-test p-values and bootstrap confidence intervals.

- :func:`permutation_test` — the null hypothesis is "X and Y are unrelated": shuffling the rows of Y breaks the
  pairing of inputs while keeping each representation's own structure. ``p = (1 + #{null >= observed}) /
  (n + 1)`` (Phipson & Smyth 2010: never 0, exact level under the null); for distances (e.g. Procrustes) the
  comparison is ``<=``.
- :func:`bootstrap_ci` — percentile bootstrap (Efron & Tibshirani 1993): resample the inputs (the same rows of
  X and Y) with replacement, recompute, take the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles.
  Note that duplicated rows bias kernel measures slightly; the interval is for the estimator as computed.

``measure``: a name (``"linear_cka"``, ``"rbf_cka"``, ``"debiased_cka"``, ``"svcca"``, ``"pwcca"``,
``"procrustes"``, ``"rsa"``, ``"mutual_knn"``) or any callable ``(X, Y) -> float``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..errors import InputError
from ..results import Result
from ._arrays import ArrayLike, as_pair
from .registry import DISTANCES, get_measure


@dataclass
class PermutationResult(Result):
    """Observed value, the null distribution ``[n]`` and the p-value of a permutation test."""

    statistic: float
    p_value: float
    null: np.ndarray
    alternative: str
    config: dict[str, Any] = field(default_factory=dict)

    def plot(self, ax: Any = None) -> Any:
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3))
        ax.hist(self.null, bins=30, color="0.6", label="permutation null")
        ax.axvline(self.statistic, color="C3", label=f"observed (p = {self.p_value:.3g})")
        ax.set_xlabel(self.config.get("measure", "measure"))
        ax.legend()
        return ax.figure


@dataclass
class BootstrapResult(Result):
    """Point estimate, percentile interval ``[low, high]`` and the bootstrap samples ``[n]``."""

    statistic: float
    low: float
    high: float
    level: float
    samples: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)

    def plot(self, ax: Any = None) -> Any:
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3))
        ax.hist(self.samples, bins=30, color="0.6")
        for v in (self.low, self.high):
            ax.axvline(v, color="C0", ls="--")
        ax.axvline(self.statistic, color="C3")
        ax.set_xlabel(f"{self.config.get('measure', 'measure')} ({self.level:.0%} CI)")
        return ax.figure


def _name(measure: str | Callable) -> str:
    return measure if isinstance(measure, str) else getattr(measure, "__name__", repr(measure))


def permutation_test(measure: str | Callable[[ArrayLike, ArrayLike], float], X: ArrayLike, Y: ArrayLike,
                     n: int = 1000, seed: int = 0,
                     alternative: Literal["auto", "greater", "less"] = "auto") -> PermutationResult:
    """p-value of the observed similarity against row permutations of Y.

    Args:
        measure: name or callable ``(X, Y) -> float``.
        X: ``[N, d1]``; Y: ``[N, d2]``.
        n: number of permutations.
        alternative: ``"greater"`` (similarities), ``"less"`` (distances); ``"auto"`` picks by the name.
    """
    fn = get_measure(measure)
    X, Y = as_pair(X, Y)
    if alternative == "auto":
        alternative = "less" if isinstance(measure, str) and measure in DISTANCES else "greater"
    if alternative not in ("greater", "less"):
        raise InputError(f"alternative must be 'auto', 'greater' or 'less', got {alternative!r}")
    rng = np.random.default_rng(seed)
    stat = float(fn(X, Y))
    null = np.array([fn(X, Y[rng.permutation(len(Y))]) for _ in range(n)], dtype=float)
    extreme = null >= stat if alternative == "greater" else null <= stat
    p = (1.0 + extreme.sum()) / (n + 1.0)
    return PermutationResult(stat, float(p), null, alternative,
                             {"measure": _name(measure), "n": n, "seed": seed, "rows": len(X)})


def bootstrap_ci(measure: str | Callable[[ArrayLike, ArrayLike], float], X: ArrayLike, Y: ArrayLike,
                 n: int = 1000, level: float = 0.95, seed: int = 0) -> BootstrapResult:
    """Percentile bootstrap confidence interval over inputs (rows resampled jointly in X and Y)."""
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    fn = get_measure(measure)
    X, Y = as_pair(X, Y)
    rng = np.random.default_rng(seed)
    stat = float(fn(X, Y))
    samples = np.empty(n)
    for b in range(n):
        idx = rng.integers(0, len(X), len(X))
        samples[b] = fn(X[idx], Y[idx])
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return BootstrapResult(stat, float(lo), float(hi), level, samples,
                           {"measure": _name(measure), "n": n, "seed": seed, "rows": len(X)})
