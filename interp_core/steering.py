"""Steering: directions in a site's feature space and sweeps of their strength against a behaviour metric.

- :func:`diff_means` — the difference of mean activations between two groups of inputs (e.g. images with
  and without a property, observations with and without a key), the "mean difference" / "activation
  addition" direction (Turner et al. 2023, "Activation Addition"; Marks & Tegmark 2023, "The Geometry of
  Truth", who find mass-mean directions more causally effective than probe directions).
- :func:`probe_direction` — a fitted :class:`~interp_core.probes.LinearProbe`'s direction for a label.
- :func:`steering_sweep` — add ``alpha * direction`` at a site (:class:`~interp_core.interventions.Steer`)
  for each ``alpha`` and record ``metric(output)`` per example; returns a :class:`SteeringResult`.

Directions live in the site's feature space as :meth:`ActivationCache.features` defines it (head and feature
axes flattened to ``d``); steering adds the vector at every selected position.

Every function takes a :class:`~interp_core.HookedModel` or any ``nn.Module`` and any data form of
:mod:`interp_core.boundary` (tensors, numpy arrays, Datasets, DataLoaders; NaN / inf / empty data refused),
a metric or class index through :func:`~interp_core.metrics.as_metric`, and runs in eval mode
(``hm.analysis()``: module flags and BatchNorm statistics are left as they were).

Closed-loop use (e.g. RL rollouts): pass ``runner(hm, interventions) -> output`` to :func:`steering_sweep`;
it runs whatever it needs (an episode under ``hm.intervene(interventions)``) and ``metric(output)`` turns
the output into one number per episode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .boundary import as_hooked, iter_batches
from .errors import InputError, InputTypeError
from .hooked import HookedModel
from .interventions import Steer
from .metrics import Metric, as_metric
from .progress import progress_bar
from .results import Result, save_json


def _mean_rows(hm: HookedModel, inputs: Any, site: str, pool: Any, batch_size: int | None,
               argument: str) -> torch.Tensor:
    """Mean feature row ``[d]`` of ``site`` over ``inputs`` (accumulated in float64, returned in the
    activation's dtype); ``hm`` is already in analysis mode."""
    total, count, dtype = None, 0, None
    for batch in iter_batches(inputs, model=hm, batch_size=batch_size, sites=[site], argument=argument):
        _, cache = hm.run_with_cache(batch.inputs, sites=[site], pool=pool)
        rows = cache.features(site)
        dtype = rows.dtype
        total = rows.double().sum(0) if total is None else total + rows.double().sum(0)
        count += rows.shape[0]
    if not count:  # iter_batches refuses empty data; a site with no rows per input would end here
        raise InputError(f"{argument}: no activation rows at site '{site}'; give at least one example")
    return (total / count).to(dtype)


def mean_features(model: Any, inputs: Any, site: str, pool: Any = "mean", batch_size: int | None = 256,
                  train: bool = False) -> torch.Tensor:
    """Mean feature row ``[d]`` of ``site`` over ``inputs``: ``(1/N) sum_n rows_n`` with the rows of
    :meth:`ActivationCache.features` (after ``pool``), in the activation's dtype.

    ``model``: a :class:`~interp_core.HookedModel` or any ``nn.Module``; ``inputs``: any data form of
    :mod:`interp_core.boundary` (tensor, numpy array, Dataset, DataLoader, ...). Runs in eval mode unless
    ``train=True`` (buffers restored either way).
    """
    hm = as_hooked(model)
    with hm.analysis(train=train):
        return _mean_rows(hm, inputs, site, pool, batch_size, "inputs")


def diff_means(model: Any, inputs_a: Any, inputs_b: Any, site: str, pool: Any = "mean",
               normalize: bool = False, batch_size: int | None = 256, train: bool = False) -> torch.Tensor:
    """Difference-of-means direction ``mean(a) - mean(b)`` ``[d]`` at ``site``.

    Args:
        model: a :class:`~interp_core.hooked.HookedModel` or any ``nn.Module`` (wrapped by its adapter).
        inputs_a, inputs_b: the two groups of inputs (any sizes and data forms the boundary accepts).
        site: the site name; ``d`` is its head x feature size.
        pool: how each input's positions are reduced before averaging (``"mean"``, ``"cls"``, a position,
            or ``None`` to average over every position of every input).
        normalize: return a unit vector.
        train: run in train mode (default: eval mode; buffers restored either way).

    Adding ``alpha * diff_means(...)`` with ``alpha = 1`` moves group b's mean activation onto group a's.
    """
    hm = as_hooked(model)
    with hm.analysis(train=train):
        v = (_mean_rows(hm, inputs_a, site, pool, batch_size, "inputs_a")
             - _mean_rows(hm, inputs_b, site, pool, batch_size, "inputs_b"))
    if normalize:
        n = float(v.norm())
        if n == 0:
            raise InputError(f"the two groups have identical mean activations at site '{site}'; there is no "
                             f"direction to normalise")
        v = v / n
    return v


def probe_direction(probe: Any, label: Any = None, normalize: bool = True) -> torch.Tensor:
    """The direction ``[d]`` of a fitted linear probe for ``label`` (original feature space)."""
    if not hasattr(probe, "direction_"):
        raise InputTypeError(f"{type(probe).__name__} has no direction_; use interp_core.probes.LinearProbe")
    return probe.direction_(label=label, normalize=normalize)


@dataclass
class SteeringResult(Result):
    """Metric per steering strength.

    Attributes:
        alphas: ``[A]`` steering strengths.
        values: ``[A, N]`` metric per strength and example (or episode).
        site: where the direction was added; ``config``: the settings that produced it.
    """

    alphas: np.ndarray
    values: np.ndarray
    site: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        """``[A]`` mean metric per strength."""
        return self.values.mean(1)

    @property
    def sem(self) -> np.ndarray:
        """``[A]`` standard error of the mean (``std / sqrt(N)``, ddof=1; 0 for one example)."""
        n = self.values.shape[1]
        return self.values.std(1, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(len(self.alphas))

    def slope(self) -> float:
        """Least-squares slope of the mean metric against alpha (the linear effect of the direction)."""
        a = np.asarray(self.alphas, dtype=float)
        if len(a) < 2:
            raise InputError("a slope needs at least two alphas")
        return float(np.polyfit(a, self.mean, 1)[0])

    @property
    def table(self) -> list[dict[str, float]]:
        """Rows ``{alpha, mean, sem}``."""
        return [{"alpha": float(a), "mean": float(m), "sem": float(s)}
                for a, m, s in zip(self.alphas, self.mean, self.sem)]

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "alphas": self.alphas.tolist(), "table": self.table,
                "values": self.values.tolist(), "config": self.config}

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON, atomically."""
        return save_json(self.to_dict(), path)

    def plot(self, ax: Any = None) -> Any:
        """Mean metric ± SEM against alpha; returns the figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
        else:
            fig = ax.figure
        ax.errorbar(self.alphas, self.mean, yerr=self.sem, marker="o", capsize=3)
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("steering strength alpha")
        ax.set_ylabel(self.config.get("metric", "metric"))
        ax.set_title(f"steering at {self.site}")
        fig.tight_layout()
        return fig


def steering_sweep(model: Any, inputs: Any, site: str, direction: Any, alphas: Sequence[float],
                   metric: Callable[[Any], torch.Tensor] | Metric | int, positions: Any = None,
                   normalize: bool = False, batch_size: int | None = None,
                   runner: Callable[[HookedModel, dict[str, Any]], Any] | None = None, heads: Any = None,
                   features: Any = None, progress: bool | None = None) -> SteeringResult:
    """Add ``alpha * direction`` at ``site`` for each alpha and record ``metric(output)``.

    Args:
        model: a :class:`~interp_core.hooked.HookedModel` or any ``nn.Module`` (wrapped by its adapter).
        inputs: the inputs to run, any data form the boundary accepts (ignored when ``runner`` is given).
        site: the site to steer; ``direction`` is ``[d]`` in its feature space (head x feature flattened).
        alphas: steering strengths (include 0 for the unsteered baseline).
        metric: ``metric(output) -> Tensor[batch]``, one number per example (e.g.
            ``interp_core.metrics.logit_diff(3, 5)``), or a class index (its logit).
        positions, heads, features: optional selectors (steer only there), in the site's terms
            (:class:`~interp_core.interventions.Steer`).
        normalize: scale ``direction`` to unit norm first.
        batch_size: examples per forward (default: from the site's activation size); ``metric`` is row-wise.
        runner: closed-loop runs: ``runner(hm, interventions) -> output`` replaces the forward on
            ``inputs`` (e.g. rollouts under ``hm.intervene(interventions)``).
        progress: a progress bar over the alphas (``None``: only on a terminal).

    Runs in eval mode (``hm.analysis()``: BatchNorm statistics and every module flag are left as they were).

    Returns:
        :class:`SteeringResult` with ``values [A, N]``.
    """
    hm = as_hooked(model)
    metric = as_metric(metric)
    site_obj = hm.sites[site]  # SiteError naming the closest sites for unknown names
    if not isinstance(direction, (torch.Tensor, np.ndarray, list, tuple)):
        raise InputTypeError(f"direction: expected a [d] tensor or array, got {type(direction).__name__}")
    v = torch.as_tensor(direction).detach().reshape(-1)
    if not v.is_floating_point():
        v = v.double()
    if not bool(torch.isfinite(v).all()):
        raise InputError("direction: has NaN or infinite entries; give a finite steering direction")
    if normalize:
        n = float(v.norm())
        if n == 0:
            raise InputError("direction: is zero and cannot be normalised; give a non-zero direction")
        v = v / n
    if runner is None and inputs is None:
        raise InputError("inputs: none given; give inputs= to run, or runner=(hm, interventions) -> output for "
                         "closed-loop runs")
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise InputError("alphas: empty; give at least one steering strength")
    rows = []
    with hm.analysis(), torch.no_grad():
        batches = None if runner is not None else [
            b.inputs for b in iter_batches(inputs, model=hm, batch_size=batch_size, sites=[site_obj.name],
                                           argument="inputs")]
        for a in progress_bar(alphas, desc="steering", unit="alpha", progress=progress):
            ivs = {site_obj.name: Steer(v, alpha=a, positions=positions, heads=heads, features=features)}
            if runner is not None:
                outs = [runner(hm, ivs)]
            else:
                outs = [hm.run_with_interventions(chunk, ivs) for chunk in batches]
            rows.append(torch.cat([metric(out).detach().double().cpu() for out in outs]).numpy())
    sizes = {len(r) for r in rows}
    if len(sizes) != 1:
        raise InputError(f"metric returned different numbers of values across alphas {sorted(sizes)}")
    config = {"alphas": alphas, "positions": repr(positions), "heads": repr(heads), "features": repr(features),
              "normalize": normalize, "direction_norm": float(v.norm()), "metric": metric.name,
              "closed_loop": runner is not None}
    return SteeringResult(alphas=np.asarray(alphas), values=np.stack(rows), site=site_obj.name, config=config)
