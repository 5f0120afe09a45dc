"""Layer x layer similarity between two models (or two sets of precomputed features)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..axes import PoolSpec
from ..errors import InputError
from ..results import Result
from .registry import DISTANCES, get_measure
from .sources import collect_features, default_sites, iter_pair_batches
from .streaming import LinearCKAAccumulator, MinibatchCKA

STREAMING = {"linear_cka": dict(debiased=False), "debiased_cka": dict(debiased=True)}


@dataclass
class SimilarityMatrixResult(Result):
    """``matrix[i, j]`` = measure(site ``sites_a[i]`` of A, site ``sites_b[j]`` of B) over ``n_rows`` inputs."""

    matrix: np.ndarray
    sites_a: list[str]
    sites_b: list[str]
    measure: str
    n_rows: int
    config: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: tuple[str, str]) -> float:
        a, b = key
        return float(self.matrix[self.sites_a.index(a), self.sites_b.index(b)])

    @property
    def is_distance(self) -> bool:
        return self.measure in DISTANCES

    def plot(self, ax: Any = None, title: str | None = None, vmin: float | None = 0.0,
             vmax: float | None = None) -> Any:
        """Heatmap: rows are A's sites (input at the top), columns B's sites."""
        import matplotlib.pyplot as plt

        la, lb = len(self.sites_a), len(self.sites_b)
        if ax is None:
            _, ax = plt.subplots(figsize=(1.6 + 0.38 * lb, 1.2 + 0.34 * la))
        if vmax is None:
            vmax = 2.0 if self.is_distance else 1.0
        im = ax.imshow(self.matrix, cmap="magma_r" if self.is_distance else "magma", vmin=vmin, vmax=vmax,
                       aspect="auto")
        ax.set_xticks(range(lb), self.sites_b, rotation=90, fontsize=7)
        ax.set_yticks(range(la), self.sites_a, fontsize=7)
        ax.set_xlabel(self.config.get("name_b", "model B"))
        ax.set_ylabel(self.config.get("name_a", "model A"))
        ax.set_title(title or f"{self.measure} (n = {self.n_rows})", fontsize=9)
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
        return ax.figure


def similarity_matrix(model_a: Any, model_b: Any = None, data: Iterable[Any] | None = None,
                      sites_a: Sequence[str] | None = None, sites_b: Sequence[str] | None = None,
                      measure: str | Callable = "linear_cka", pool: PoolSpec = "mean",
                      max_batches: int | None = None, name_a: str = "model A",
                      name_b: str = "model B") -> SimilarityMatrixResult:
    """Similarity between every site of A and every site of B over the same inputs.

    Args:
        model_a, model_b: :class:`~interp_core.hooked.HookedModel` (then ``data`` is required), an
            ``ActivationCache`` / ``ActivationStore`` (anything with ``features(site)``) or a dict
            ``{site: [N, d]}``. ``model_b=None`` compares A with itself.
        data: iterable of input batches (or ``(inputs, labels)`` tuples), read once; each model runs one
            forward per batch.
        sites_a, sites_b: site names (default: the adapter's default sites / all cached sites).
        measure: a name from :data:`~interp_core.similarity.registry.MEASURES`, ``"minibatch_cka"`` (Nguyen et
            al. 2021, per-batch debiased HSIC averaged), or a callable ``(X, Y) -> float``.
            ``"linear_cka"`` and ``"debiased_cka"`` stream through :class:`LinearCKAAccumulator` (exact, memory
            ``O(d^2)``, no rows kept); other measures keep the pooled ``[N, d]`` rows in memory.
        pool: how positions are pooled inside the hook (``"mean"``, ``"cls"``, ...); ``None`` folds positions
            into rows (then all sites must have the same positions).
        max_batches: stop after this many batches of ``data``.

    Returns:
        :class:`SimilarityMatrixResult` with ``matrix`` ``[len(sites_a), len(sites_b)]``.
    """
    if model_b is None:
        model_b = model_a
    sites_a = list(sites_a) if sites_a is not None else default_sites(model_a)
    sites_b = list(sites_b) if sites_b is not None else default_sites(model_b)
    if not sites_a or not sites_b:
        raise InputError("no sites to compare: pass sites_a= and sites_b=")
    name = measure if isinstance(measure, str) else getattr(measure, "__name__", "custom")
    t0 = time.perf_counter()
    if isinstance(measure, str) and (measure in STREAMING or measure == "minibatch_cka"):
        acc = (LinearCKAAccumulator(**STREAMING[measure]) if measure in STREAMING else MinibatchCKA(debiased=True))
        for xs, ys in iter_pair_batches(model_a, model_b, data, sites_a, sites_b, pool, max_batches):
            acc.update(xs, ys)
        M, n = acc.matrix(), acc.n_
    else:
        fn = get_measure(measure)
        xs, ys = collect_features(model_a, model_b, data, sites_a, sites_b, pool, max_batches)
        M = np.array([[fn(x, y) for y in ys] for x in xs], dtype=float)
        n = xs[0].shape[0]
    config = {"pool": pool, "max_batches": max_batches, "name_a": name_a, "name_b": name_b,
              "seconds": time.perf_counter() - t0}
    return SimilarityMatrixResult(M, sites_a, sites_b, name, int(n), config)
