"""Evaluating sparse autoencoders: reconstruction, sparsity, and the downstream effect of splicing them in.

:func:`evaluate_sae` over ``N`` rows ``x [N, d]`` (input units), reconstruction ``x_hat`` and latents ``f [N, n]``:

- ``mse = sum_rows sum_features (x - x_hat)^2 / (N d)`` (mean squared error per entry);
- ``fvu = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``: fraction of variance unexplained, against the data's
  mean (not zero), so predicting the mean scores 1;
- ``l0 = mean_rows #{i : f_i != 0}``: active latents per row;
- ``dead_fraction``: share of latents that never fire on the data; ``dense_fraction``: share firing on more than
  ``dense_threshold`` (default 10 %) of the rows; ``firing_frequency [n]``: each latent's share of rows.

:func:`splice_eval` replaces the site by the SAE's reconstruction inside the model's own forward (the core
intervention :class:`~interp_core.interventions.Replace`, every row of the site — positions folded into rows as
in ``features(site)`` — mapped through the SAE; with ``error_term=True`` the error ``x - x_hat`` is added back,
which leaves the forward unchanged and is the baseline for latent attributions). It reports, averaged over the
data, for the clean model, the spliced model, and the site zero-ablated and mean-ablated (mean over the same
data, per position):

- ``metric``: the given metric (e.g. a logit difference), and ``kept`` share
  ``(m_spliced - m_ablated) / (m_clean - m_ablated)``;
- ``accuracy`` (with labels): top-1 accuracy against the labels, and the same share;
- ``kl``: ``KL(p_clean || p)`` of the output distribution per example, and the share
  ``1 - KL_spliced / KL_ablated`` (the "loss recovered" of Bricken et al. 2023 with KL in place of the loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..axes import to_rows
from ..errors import InputError, InputTypeError
from ..results import Result
from .sae import SparseAutoencoder
from .train import as_source

__all__ = ["SAEEvaluation", "SpliceResult", "evaluate_sae", "splice_eval", "splice"]


@dataclass
class SAEEvaluation(Result):
    """Reconstruction and sparsity of an SAE on a set of rows (definitions in the module docstring)."""

    mse: float
    fvu: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    firing_frequency: torch.Tensor
    n_rows: int
    config: dict = field(default_factory=dict)

    def plot(self, ax: Any = None) -> Any:
        """Histogram of log10 firing frequencies (dead latents drawn at the left edge)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3))
        freq = self.firing_frequency.detach().cpu().double().numpy()
        floor = 1.0 / max(self.n_rows, 1)
        ax.hist(np.log10(np.clip(freq, floor / 10, None)), bins=40)
        ax.set_xlabel("log10 firing frequency")
        ax.set_ylabel("latents")
        ax.set_title(f"L0 {self.l0:.1f}, FVU {self.fvu:.3f}, dead {self.dead_fraction:.1%}")
        return ax.figure


def _check_sae(sae: Any) -> SparseAutoencoder:
    if not isinstance(sae, SparseAutoencoder):
        raise InputTypeError(f"sae: expected a fitted SparseAutoencoder, got {type(sae).__name__}")
    sae._check_fitted()
    return sae


def evaluate_sae(sae: SparseAutoencoder, data: Any, site: str | None = None, *, pool: Any = None,
                 batch_size: int = 4096, dense_threshold: float = 0.1) -> SAEEvaluation:
    """MSE, FVU, L0, dead and dense fractions of ``sae`` on ``data``: rows ``[N, d]`` or a cache / store with
    ``site`` (rows by ``features(site, pool)``), streamed in batches. Definitions in the module docstring."""
    sae = _check_sae(sae)
    if not 0 < dense_threshold <= 1:
        raise InputError(f"dense_threshold: a share of rows in (0, 1], got {dense_threshold!r}")
    source, site = as_source(data, site, argument="data")
    m = sae.module_
    n_rows, sq_err, s1, s2 = 0, 0.0, None, 0.0
    active = torch.zeros(m.n, dtype=torch.float64)
    l0_sum = 0.0
    for batch in source.iter_batches([site], batch_size=batch_size, shuffle=False, pool=pool):
        x = batch[site].to(device=m.W_dec.device, dtype=m.W_dec.dtype)
        if x.shape[1] != m.d:
            raise InputError(f"data: site '{site}' gives rows of {x.shape[1]} features but the SAE was fitted on "
                             f"{m.d}; evaluate on the site (and pool) it was trained on")
        with torch.no_grad():
            f = m.latents(m.normalize(x))
            xh = m.denormalize(m.reconstruct(f))
        xd = x.double()
        sq_err += float((xd - xh.double()).pow(2).sum())
        s1 = xd.sum(0).cpu() if s1 is None else s1 + xd.sum(0).cpu()
        s2 += float(xd.pow(2).sum())
        fired = f != 0
        active += fired.sum(0).double().cpu()
        l0_sum += float(fired.sum())
        n_rows += x.shape[0]
    total_var = s2 - float(s1.pow(2).sum()) / n_rows
    freq = active / n_rows
    return SAEEvaluation(
        mse=sq_err / (n_rows * m.d), fvu=sq_err / total_var if total_var > 0 else float("nan"), l0=l0_sum / n_rows,
        dead_fraction=float((active == 0).double().mean()), dense_fraction=float((freq > dense_threshold).double()
                                                                                  .mean()),
        firing_frequency=freq.float(), n_rows=n_rows,
        config={"site": site, "pool": pool, "variant": sae.variant, "n_latents": m.n, "d": m.d,
                "dense_threshold": dense_threshold})


# ---------------------------------------------------------------------------------------------- splicing
def splice(sae: SparseAutoencoder, error_term: bool = False) -> Any:
    """A function ``(activation, site) -> activation`` for :class:`~interp_core.interventions.Replace` that maps
    every feature row of the site (``to_rows``: positions folded into rows) through ``sae`` and puts the rows
    back in the site's layout; ``error_term=True`` adds ``x - x_hat`` back (value unchanged)."""
    sae = _check_sae(sae)
    m = sae.module_

    def fn(act: torch.Tensor, site: Any) -> torch.Tensor:
        axes = tuple(site.axes)
        order = ([i for i, a in enumerate(axes) if a == "batch"] + [i for i, a in enumerate(axes) if a == "pos"]
                 + [i for i, a in enumerate(axes) if a in ("head", "feature")])
        moved_shape = act.permute(*order).shape
        rows = to_rows(act, axes)
        if rows.shape[1] != m.d:
            raise InputError(f"sae: site '{site.name}' has rows of {rows.shape[1]} features but the SAE was fitted "
                             f"on {m.d}; splice it at the site it was trained on")
        x = rows.to(device=m.W_dec.device, dtype=m.W_dec.dtype)
        xh = m(x)
        if error_term:
            xh = xh + (x - xh).detach()
        inverse = [order.index(i) for i in range(len(axes))]
        return xh.to(device=act.device, dtype=act.dtype).reshape(moved_shape).permute(*inverse).contiguous()

    return fn


@dataclass
class SpliceResult(Result):
    """Model behaviour with the site clean, spliced (SAE reconstruction), zero- and mean-ablated.

    ``values[condition][measure]`` for condition in ``clean``, ``spliced``, ``zero``, ``mean`` and measure in
    ``metric``, ``accuracy``, ``kl`` (those available); ``kept[measure][ablation]`` the share kept against each
    ablation (module docstring)."""

    site: str
    values: dict
    kept: dict
    error_term: bool
    n_examples: int
    config: dict = field(default_factory=dict)

    def plot(self, ax: Any = None) -> Any:
        """Bars: share kept per measure against zero and mean ablation."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3))
        measures = list(self.kept)
        w = 0.38
        for j, abl in enumerate(("zero", "mean")):
            vals = [self.kept[m].get(abl, float("nan")) for m in measures]
            ax.bar(np.arange(len(measures)) + (j - 0.5) * w, vals, w, label=f"vs {abl} ablation")
        ax.set_xticks(np.arange(len(measures)), measures)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylabel("share kept")
        ax.set_title(f"SAE spliced at {self.site}")
        ax.legend()
        return ax.figure


def _share(clean: float, new: float, ablated: float) -> float:
    """``(new - ablated) / (clean - ablated)``; NaN where ablating does not move the measure (no share to keep)."""
    den = clean - ablated
    return (new - ablated) / den if abs(den) > 1e-6 * max(abs(clean), abs(ablated), 1.0) else float("nan")


def splice_eval(model: Any, sae: SparseAutoencoder, data: Any, site: str, *, metric: Any = None,
                target: Any = None, labels: Any = None, error_term: bool = False,
                batch_size: int | None = None) -> SpliceResult:
    """Splice ``sae``'s reconstruction into ``site`` during the model's forward over ``data`` and report the
    share of the metric / accuracy / KL kept against zero- and mean-ablating the site (module docstring).

    Args:
        model: a ``HookedModel`` or ``nn.Module`` (run in eval mode, flags restored).
        data: inputs in any form :func:`~interp_core.boundary.iter_batches` accepts (labels from ``(x, y)``).
        site: the site the SAE was trained on (unpooled rows: every position is replaced).
        metric, target: an optional metric (``as_metric`` rule); KL is always reported, accuracy with labels.
        error_term: add the SAE's error back (the forward is then the model's own).
    """
    from ..boundary import as_hooked, as_metric, iter_batches
    from ..interventions import Ablate, Replace
    from ..metrics import logits_of

    hm = as_hooked(model)
    sae = _check_sae(sae)
    met = as_metric(metric, target=target) if (metric is not None or target is not None) else None
    batches = list(iter_batches(data, labels, model=hm, batch_size=batch_size, sites=[site]))
    with hm.analysis():
        total, count = None, 0
        for b in batches:
            _, cache = hm.run_with_cache(b.inputs, sites=[site])
            act = cache[site]
            bdim = cache.axes(site).index("batch")
            s = act.double().sum(bdim)
            total = s if total is None else total + s
            count += act.shape[bdim]
        mean = (total / count).float()
        conditions = {"spliced": {site: Replace(splice(sae, error_term))}, "zero": {site: Ablate("zero")},
                      "mean": {site: Ablate("mean", stats=mean)}}
        sums: dict[str, dict[str, float]] = {c: {} for c in ("clean", *conditions)}
        n = 0
        for b in batches:
            with torch.no_grad():
                clean = hm.run_with_interventions(b.inputs, {})
                outs = {"clean": clean}
                for c, iv in conditions.items():
                    outs[c] = hm.run_with_interventions(b.inputs, iv)
            z_clean = logits_of(clean).float()
            for c, out in outs.items():
                z = logits_of(out).float()
                acc = sums[c]
                kl = torch.nn.functional.kl_div(z.log_softmax(-1), z_clean.log_softmax(-1), log_target=True,
                                                reduction="none").sum(-1)
                acc["kl"] = acc.get("kl", 0.0) + float(kl.sum())
                if met is not None:
                    acc["metric"] = acc.get("metric", 0.0) + float(met(out).double().sum())
                if b.labels is not None:
                    hit = (z.argmax(-1).cpu() == b.labels.long()).double()
                    acc["accuracy"] = acc.get("accuracy", 0.0) + float(hit.sum())
            n += b.size
    values = {c: {k: v / n for k, v in d.items()} for c, d in sums.items()}
    if any(b.labels is None for b in batches):
        for d in values.values():
            d.pop("accuracy", None)
    kept: dict[str, dict[str, float]] = {}
    for measure in values["clean"]:
        kept[measure] = {}
        for abl in ("zero", "mean"):
            if measure == "kl":
                ka = values[abl]["kl"]
                kept[measure][abl] = 1.0 - values["spliced"]["kl"] / ka if ka > 1e-12 else float("nan")
            else:
                kept[measure][abl] = _share(values["clean"][measure], values["spliced"][measure],
                                            values[abl][measure])
    return SpliceResult(site=site, values=values, kept=kept, error_term=error_term, n_examples=n,
                        config={"metric": getattr(met, "name", None), "variant": sae.variant,
                                "n_latents": sae.n_latents_})
