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

Closed-loop use (e.g. RL rollouts): pass ``runner(hm, interventions) -> output`` to :func:`steering_sweep`;
it runs whatever it needs (an episode under ``hm.intervene(interventions)``) and ``metric(output)`` turns
the output into one number per episode.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError, InputTypeError
from .hooked import HookedModel, Inputs, call_model
from .interventions import Steer

Metric = Callable[[Any], torch.Tensor]


def _hooked(model: Any) -> HookedModel:
    if isinstance(model, HookedModel):
        return model
    if isinstance(model, torch.nn.Module):
        return HookedModel(model)
    raise InputTypeError(f"expected a HookedModel or an nn.Module, got {type(model).__name__}")


def _batches(inputs: Inputs, batch_size: int | None) -> list[Inputs]:
    if batch_size is None or not isinstance(inputs, torch.Tensor) or len(inputs) <= batch_size:
        return [inputs]
    return [inputs[i:i + batch_size] for i in range(0, len(inputs), batch_size)]


def mean_features(model: Any, inputs: Inputs, site: str, pool: Any = "mean",
                  batch_size: int | None = 256) -> torch.Tensor:
    """Mean feature row ``[d]`` of ``site`` over ``inputs`` (rows as :meth:`ActivationCache.features`)."""
    hm = _hooked(model)
    total, count = None, 0
    with hm.evaluating():
        for chunk in _batches(inputs, batch_size):
            _, cache = hm.run_with_cache(chunk, sites=[site], pool=pool)
            rows = cache.features(site).double()
            total = rows.sum(0) if total is None else total + rows.sum(0)
            count += rows.shape[0]
    if not count:
        raise InputError(f"no activation rows at site '{site}': the inputs are empty")
    return (total / count).float()


def diff_means(model: Any, inputs_a: Inputs, inputs_b: Inputs, site: str, pool: Any = "mean",
               normalize: bool = False, batch_size: int | None = 256) -> torch.Tensor:
    """Difference-of-means direction ``mean(a) - mean(b)`` ``[d]`` at ``site``.

    Args:
        model: a :class:`~interp_core.hooked.HookedModel` (an ``nn.Module`` is wrapped).
        inputs_a, inputs_b: the two groups of inputs (any batch sizes).
        site: the site name; ``d`` is its head x feature size.
        pool: how each input's positions are reduced before averaging (``"mean"``, ``"cls"``, a position,
            or ``None`` to average over every position of every input).
        normalize: return a unit vector.

    Adding ``alpha * diff_means(...)`` with ``alpha = 1`` moves group b's mean activation onto group a's.
    """
    v = mean_features(model, inputs_a, site, pool, batch_size) - mean_features(model, inputs_b, site, pool,
                                                                                  batch_size)
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
class SteeringResult:
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
        return {"site": self.site, "table": self.table, "values": self.values.tolist(), "config": self.config}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, default=str))

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


def steering_sweep(model: Any, inputs: Inputs, site: str, direction: Any, alphas: Sequence[float],
                   metric: Metric, positions: Any = None, normalize: bool = False,
                   batch_size: int | None = None,
                   runner: Callable[[HookedModel, dict[str, Any]], Any] | None = None) -> SteeringResult:
    """Add ``alpha * direction`` at ``site`` for each alpha and record ``metric(output)``.

    Args:
        model: a :class:`~interp_core.hooked.HookedModel` (an ``nn.Module`` is wrapped).
        inputs: the inputs to run (ignored when ``runner`` is given).
        site: the site to steer; ``direction`` is ``[d]`` in its feature space (head x feature flattened).
        alphas: steering strengths (include 0 for the unsteered baseline).
        metric: ``metric(output) -> Tensor[batch]``, one number per example (e.g.
            ``lambda out: out[:, 3] - out[:, 5]``, a logit difference).
        positions: optional position selector (steer only there), in the site's terms.
        normalize: scale ``direction`` to unit norm first.
        batch_size: run ``inputs`` in chunks (then ``metric`` must be row-wise).
        runner: closed-loop runs: ``runner(hm, interventions) -> output`` replaces the forward on
            ``inputs`` (e.g. rollouts under ``hm.intervene(interventions)``).

    Returns:
        :class:`SteeringResult` with ``values [A, N]``.
    """
    hm = _hooked(model)
    site_obj = hm.sites[site]  # helpful KeyError for unknown names
    v = torch.as_tensor(direction).detach().float().reshape(-1)
    if not bool(torch.isfinite(v).all()):
        raise InputError("the steering direction has NaN or inf entries")
    if normalize:
        v = v / v.norm().clamp_min(1e-30)
    if runner is None and inputs is None:
        raise InputError("give inputs= to run, or runner=(hm, interventions) -> output for closed-loop runs")
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise InputError("alphas is empty; give at least one steering strength")
    rows = []
    for a in alphas:
        ivs = {site_obj.name: Steer(v, alpha=a, positions=positions)}
        with torch.no_grad():
            if runner is not None:
                outs = [runner(hm, ivs)]
            else:
                outs = []
                for chunk in _batches(inputs, batch_size):
                    hm._ensure_traced(chunk)
                    with hm.intervene(ivs):
                        outs.append(call_model(hm.model, chunk))
            vals = []
            for out in outs:
                m = metric(out)
                m = torch.as_tensor(m)
                if m.dim() != 1:
                    raise InputError(f"metric returned shape {tuple(m.shape)}; it must return one number per "
                                     f"example, a 1-D Tensor[batch] (e.g. out[:, i] - out[:, j])")
                vals.append(m.detach().double().cpu())
        rows.append(torch.cat(vals).numpy())
    sizes = {len(r) for r in rows}
    if len(sizes) != 1:
        raise InputError(f"metric returned different numbers of values across alphas {sorted(sizes)}")
    config = {"alphas": alphas, "positions": repr(positions), "normalize": normalize,
              "direction_norm": float(v.norm()), "metric": getattr(metric, "__name__", "metric"),
              "closed_loop": runner is not None}
    return SteeringResult(alphas=np.asarray(alphas), values=np.stack(rows), site=site_obj.name, config=config)
