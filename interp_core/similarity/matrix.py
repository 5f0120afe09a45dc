"""Layer x layer similarity between two models (or two sets of precomputed features)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..axes import PoolSpec
from ..boundary import as_hooked
from ..errors import InputError, InputTypeError, InterpWarning
from ..progress import progress_bar
from ..results import Result
from .registry import DISTANCES, get_measure
from .sources import (
    collect_features,
    default_sites,
    is_model,
    iter_pair_batches,
    same_model,
)
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
    def values(self) -> np.ndarray:
        """The ``[len(sites_a), len(sites_b)]`` matrix (the name every result uses for its numbers)."""
        return self.matrix

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


def similarity_matrix(model_a: Any, model_b: Any = None, data: Any = None,
                      sites_a: Sequence[str] | None = None, sites_b: Sequence[str] | None = None,
                      measure: str | Callable = "linear_cka", pool: PoolSpec = "mean",
                      max_batches: int | None = None, name_a: str = "model A",
                      name_b: str = "model B", *, batch_size: int | None = None,
                      progress: bool | None = None, all_reduce: bool = False) -> SimilarityMatrixResult:
    """Similarity between every site of A and every site of B over the same inputs.

    Args:
        model_a, model_b: a model (a :class:`~interp_core.hooked.HookedModel` or a plain ``nn.Module``, which
            gets its registered adapter through :func:`~interp_core.boundary.as_hooked`; then ``data`` is
            required), an ``ActivationCache`` / ``ActivationStore`` (anything with ``features(site)``) or a dict
            ``{site: [N, d]}``. ``model_b=None`` compares A with itself (one forward per batch).
        data: the inputs, in any form :func:`~interp_core.boundary.iter_batches` accepts: a tensor or numpy
            array ``[N, ...]`` (cut into batches of ``batch_size``), an ``(x, y)`` pair, a ``Dataset``, a
            ``DataLoader`` or an iterable of batches (tensors, ``(x, y)`` pairs, dicts); read once, each model
            runs one forward per batch, in eval mode (``hm.analysis()``).
        sites_a, sites_b: site names (default: the adapter's default sites / all cached sites).
        measure: a name from :data:`~interp_core.similarity.registry.MEASURES`, ``"minibatch_cka"`` (Nguyen et
            al. 2021, per-batch debiased HSIC averaged), or a callable ``(X, Y) -> float``.
            ``"linear_cka"`` and ``"debiased_cka"`` stream through :class:`LinearCKAAccumulator` (exact, memory
            ``O(d^2)``, no rows kept); other measures keep the pooled ``[N, d]`` rows in memory.
        pool: how positions are pooled inside the hook (``"mean"``, ``"cls"``, ...); ``None`` folds positions
            into rows (then all sites must have the same positions).
        max_batches: stop after this many batches of ``data``.
        name_a, name_b: axis labels of the figure.
        batch_size: inputs per forward where ``data`` is not batched already (default: from the sites' sizes,
            :func:`~interp_core.boundary.auto_batch_size`).
        progress: tqdm progress bars over the batches (and the site pairs of non-streaming measures);
            ``None``: only on a terminal.
        all_reduce: under ``torch.distributed``, where each rank passes its own disjoint slice of ``data``: sum
            the streaming accumulators over the ranks (:meth:`LinearCKAAccumulator.all_reduce`) before the
            matrix is computed, so every rank returns the single-process matrix over all ranks' rows (and
            ``n_rows`` counts them all). Streaming measures only (``"linear_cka"``, ``"debiased_cka"``,
            ``"minibatch_cka"``); a no-op without ``torch.distributed``. A collective: every rank must call.

    Returns:
        :class:`SimilarityMatrixResult` with ``matrix`` ``[len(sites_a), len(sites_b)]``.
    """
    if model_b is None:
        model_b = model_a
    if is_model(model_a):
        model_a = as_hooked(model_a, "model_a")
    if is_model(model_b):
        model_b = model_a if same_model(model_a, model_b) else as_hooked(model_b, "model_b")
    if isinstance(sites_a, str) or isinstance(sites_b, str):
        raise InputTypeError("sites_a, sites_b: give lists of site names (a single name: ['blocks.0'])")
    sites_a = list(sites_a) if sites_a is not None else default_sites(model_a)
    sites_b = list(sites_b) if sites_b is not None else default_sites(model_b)
    if not sites_a or not sites_b:
        raise InputError("sites_a, sites_b: no sites to compare; pass sites_a= and sites_b=")
    streaming = isinstance(measure, str) and (measure in STREAMING or measure == "minibatch_cka")
    fn = None if streaming else get_measure(measure)  # an unknown name fails here, before any forward
    if all_reduce and not streaming:
        raise InputError(f"all_reduce=True sums streaming accumulators over ranks; measure {measure!r} keeps rows. "
                         f"Use 'linear_cka', 'debiased_cka' or 'minibatch_cka', or gather the rows yourself")
    name = measure if isinstance(measure, str) else getattr(measure, "__name__", "custom")
    t0 = time.perf_counter()
    common = dict(batch_size=batch_size, progress=progress, desc=f"similarity ({name})")
    if streaming:
        acc = (LinearCKAAccumulator(**STREAMING[measure]) if measure in STREAMING else MinibatchCKA(debiased=True))
        for xs, ys in iter_pair_batches(model_a, model_b, data, sites_a, sites_b, pool, max_batches, **common):
            acc.update(xs, ys)
        if all_reduce:
            acc.all_reduce()
        M, n = acc.matrix(), acc.n_
    else:
        xs, ys = collect_features(model_a, model_b, data, sites_a, sites_b, pool, max_batches, **common)
        pairs = [(i, j) for i in range(len(xs)) for j in range(len(ys))]
        M = np.empty((len(xs), len(ys)))
        for i, j in progress_bar(pairs, desc=f"{name} site pairs", unit="pair", progress=progress):
            M[i, j] = fn(xs[i], ys[j])
        n = xs[0].shape[0]
    if np.isnan(M).any():
        bad_a = [sites_a[i] for i in np.where(np.isnan(M).all(1))[0]]
        bad_b = [sites_b[j] for j in np.where(np.isnan(M).all(0))[0]]
        warnings.warn(f"{name}: undefined (NaN) for sites constant over these inputs (model A: {bad_a}, model B: "
                      f"{bad_b}); e.g. a ReLU that never fires. Use more varied data or other sites",
                      InterpWarning, stacklevel=2)
    config = {"pool": pool, "max_batches": max_batches, "batch_size": batch_size, "all_reduce": all_reduce,
              "name_a": name_a,
              "name_b": name_b, "seconds": time.perf_counter() - t0}
    return SimilarityMatrixResult(M, sites_a, sites_b, name, int(n), config)
