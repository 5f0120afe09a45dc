"""Superposition in real models: how many features each unit mixes, and how spread a site's variance is.

Two measures per site, each compared with the same site of a random-init twin (same architecture, untrained):

- **Polysemanticity per unit** (:func:`unit_polysemanticity`), from an SAE trained on the site. Unit ``u``
  (one coordinate of the site's feature rows, ``d`` units) is written by the latents through their decoder rows:
  latent ``i`` contributes ``f_i W_dec[i, u]`` (input units). Its share of the unit's weight is
  ``p_iu = a_i W_dec[i, u]^2 / sum_j a_j W_dec[j, u]^2`` with ``a_i = E[f_i^2]`` over the data (the latent's
  mean energy; ``a_i = 1`` without data), so ``p_iu`` is latent ``i``'s share of the unit's reconstructed
  second moment when the latents are uncorrelated. Per unit: ``n_mixed[u] = #{i : p_iu > threshold}`` (latents
  carrying more than ``threshold`` of the unit's weight) and the entropy-based effective count
  ``effective[u] = exp(-sum_i p_iu log p_iu)`` (Hill number of order 1: ``m`` for ``m`` equal shares, 1 for a
  monosemantic unit). Known factors instead of latents: :func:`~interp_core.features.labels.label_latents`
  on the units' own activations.
- **Variance outside the top principal directions** (:func:`variance_outside`): with ``lambda_1 >= ... >=
  lambda_d`` the eigenvalues of the rows' covariance, ``outside(k) = 1 - sum_{j <= k} lambda_j / sum_j
  lambda_j``: the share of the site's variance that ``k`` directions cannot hold. Many features in few
  dimensions (superposition) with sparse activity spread variance over many directions.

:func:`superposition` runs both on sites of a model and of its random-init twin over the same data (SAEs
trained with :func:`~interp_core.features.train.fit_saes`) and returns a :class:`SuperpositionResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..boundary import all_finite
from ..errors import InputError, InputTypeError
from ..results import Result
from .evaluate import _check_sae
from .sae import SparseAutoencoder

__all__ = ["unit_polysemanticity", "variance_outside", "superposition", "SuperpositionResult"]


def _rows(x: Any, argument: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{argument}: expected feature rows [N, d] (tensor or array), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 2:
        raise InputError(f"{argument}: expected feature rows [N, d] with N >= 2, got shape {tuple(x.shape)}; "
                         f"fold positions into rows with cache.features(site)")
    x = x.detach().double()
    if not all_finite(x):
        raise InputError(f"{argument}: the rows hold NaN or infinite values")
    return x


def unit_polysemanticity(sae: SparseAutoencoder, rows: Any = None, *, threshold: float = 0.05
                         ) -> dict[str, torch.Tensor]:
    """Per unit of the SAE's input: ``{"effective" [d], "n_mixed" [d], "shares" [n, d]}`` (module docstring).

    Args:
        sae: a fitted SAE on the site.
        rows: the site's feature rows ``[N, d]`` to weight latents by their energy ``E[f_i^2]``; ``None``
            weighs every latent alike (decoder weights only).
        threshold: share of a unit's weight above which a latent counts as mixed into it.
    """
    sae = _check_sae(sae)
    if not 0 < threshold < 1:
        raise InputError(f"threshold: a share in (0, 1), got {threshold!r}")
    m = sae.module_
    W = (m.W_dec * m.scale).detach().double().cpu()  # [n, d], input units
    if rows is None:
        a = torch.ones(W.shape[0], dtype=torch.float64)
    else:
        x = _rows(rows, "rows")
        if x.shape[1] != m.d:
            raise InputError(f"rows: {x.shape[1]} features per row but the SAE was fitted on {m.d}")
        a = sae.encode(x.float()).double().pow(2).mean(0).cpu()
    w = a[:, None] * W.pow(2)
    total = w.sum(0)
    p = w / torch.where(total > 0, total, torch.ones_like(total))
    logp = torch.where(p > 0, p.log(), torch.zeros_like(p))
    effective = torch.where(total > 0, (-(p * logp).sum(0)).exp(), torch.zeros_like(total))
    return {"effective": effective, "n_mixed": (p > threshold).sum(0), "shares": p}


def variance_outside(rows: Any, top_k: int | Sequence[int] = (1, 2, 4, 8)) -> dict[int, float]:
    """``{k: 1 - sum_{j<=k} lambda_j / sum_j lambda_j}``: the share of the rows' variance (around their mean)
    outside their top ``k`` principal directions, for each ``k`` (``rows [N, d]``)."""
    x = _rows(rows, "rows")
    ks = [top_k] if isinstance(top_k, (int, np.integer)) else list(top_k)
    if not ks or any(not isinstance(k, (int, np.integer)) or k < 0 for k in ks):
        raise InputError(f"top_k: integers >= 0, got {top_k!r}")
    s = torch.linalg.svdvals(x - x.mean(0))
    lam = s.pow(2)
    total = float(lam.sum())
    if total <= 0:
        raise InputError("rows: every row is the same (no variance to split)")
    cum = torch.cumsum(lam, 0) / total
    return {int(k): (1.0 - float(cum[min(k, len(cum)) - 1])) if k > 0 else 1.0 for k in ks}


@dataclass
class SuperpositionResult(Result):
    """Per site, for the model and (when given) its random-init twin: ``effective [d]`` and ``n_mixed [d]``
    per unit (:func:`unit_polysemanticity`) and ``outside {k: share}`` (:func:`variance_outside`), stored as
    ``measures[site]["model" | "baseline"]``."""

    measures: dict
    threshold: float
    config: dict = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per site and model: mean / median effective latents per unit, mean units' mixed latents,
        and the variance outside the top-k directions."""
        rows = []
        for site, per in self.measures.items():
            for which, m in per.items():
                eff = np.asarray(m["effective"], dtype=float)
                row = {"site": site, "model": which, "mean_effective": float(eff.mean()),
                       "median_effective": float(np.median(eff)),
                       "mean_n_mixed": float(np.mean(np.asarray(m["n_mixed"], dtype=float)))}
                row.update({f"outside_top{k}": v for k, v in m["outside"].items()})
                rows.append(row)
        return rows

    def plot(self, axes: Any = None) -> Any:
        """Left: effective latents per unit (model vs baseline, per site); right: variance outside top-k."""
        import matplotlib.pyplot as plt

        if axes is None:
            _, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        sites = list(self.measures)
        for j, which in enumerate(("model", "baseline")):
            data = [np.asarray(self.measures[s][which]["effective"], dtype=float) for s in sites
                    if which in self.measures[s]]
            if data:
                parts = axes[0].violinplot(data, positions=np.arange(len(data)) + (j - 0.5) * 0.35, widths=0.3)
                for b in parts["bodies"]:
                    b.set_facecolor("C0" if which == "model" else "0.6")
        axes[0].set_xticks(np.arange(len(sites)), sites, rotation=45, fontsize=7)
        axes[0].set_ylabel("effective latents per unit")
        axes[0].set_title("trained (blue) vs random init (grey)", fontsize=9)
        for i, s in enumerate(sites):
            for which, style in (("model", "-"), ("baseline", "--")):
                if which in self.measures[s]:
                    out = self.measures[s][which]["outside"]
                    axes[1].plot(list(out), list(out.values()), style, color=f"C{i}",
                                 label=f"{s} ({which})")
        axes[1].set_xlabel("top-k principal directions")
        axes[1].set_ylabel("variance outside")
        axes[1].legend(fontsize=6)
        return axes[0].figure


def superposition(model: Any, data: Any, sites: Sequence[str] | str, *, baseline: Any = None,
                  sae: SparseAutoencoder | None = None, pool: Any = None, top_k: Sequence[int] = (1, 2, 4, 8),
                  threshold: float = 0.05, batch_size: int | None = None, seed: int = 0,
                  progress: bool | None = None) -> SuperpositionResult:
    """Polysemanticity per unit and variance outside the top principal directions at ``sites`` of ``model``
    (and of ``baseline``, its random-init twin) over the same ``data`` (module docstring).

    Args:
        model, baseline: ``HookedModel``s or ``nn.Module``s (eval mode, flags restored).
        data: inputs in any form :func:`~interp_core.boundary.iter_batches` accepts.
        sites: the sites (their rows by ``features(site, pool)``).
        sae: the SAE template trained per site and model (default ``SparseAutoencoder(expansion=4, k=8)``).
        top_k, threshold: as in :func:`variance_outside` and :func:`unit_polysemanticity`.
    """
    from ..boundary import as_hooked, iter_batches
    from ..cache import ActivationCache
    from .train import fit_saes

    names = [sites] if isinstance(sites, str) else list(sites)
    if not names:
        raise InputError("sites: none given; name at least one site")
    template = sae if sae is not None else SparseAutoencoder(expansion=4.0, k=8, seed=seed)
    if not isinstance(template, SparseAutoencoder):
        raise InputTypeError(f"sae: expected a SparseAutoencoder template, got {type(template).__name__}")
    models = {"model": as_hooked(model, "model")}
    if baseline is not None:
        models["baseline"] = as_hooked(baseline, "baseline")
    batches = list(iter_batches(data, model=models["model"], batch_size=batch_size, sites=names))
    measures: dict[str, dict[str, Any]] = {s: {} for s in names}
    for which, hm in models.items():
        with hm.analysis():
            cache = ActivationCache.cat([hm.run_with_cache(b.inputs, sites=names, pool=pool)[1] for b in batches])
        saes = {s: template.clone() for s in names}
        fit_saes(cache, saes, pool=pool, seed=seed, progress=progress)
        for s in names:
            rows = cache.features(s, pool)
            poly = unit_polysemanticity(saes[s], rows, threshold=threshold)
            measures[s][which] = {"effective": poly["effective"].float(), "n_mixed": poly["n_mixed"],
                                  "outside": variance_outside(rows, top_k), "n_latents": saes[s].n_latents_}
    return SuperpositionResult(measures=measures, threshold=threshold,
                               config={"sites": names, "pool": pool, "top_k": list(top_k),
                                       "sae": {k: v for k, v in template.get_params().items() if k != "progress"},
                                       "n_examples": sum(b.size for b in batches)})
