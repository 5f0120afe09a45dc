"""Activation patching, attribution patching, path patching and ablation sweeps over sites × units.

One call shape for every model: ``patch_sweep(model, clean=, corrupted=, sites=, metric=)``. A *unit* is
what one patch replaces, chosen by ``per`` in the site's own terms:

- ``"pos"`` — one position (a ViT token, a CNN cell ``(h, w)``, a time step), all its features;
- ``"head"`` — one attention head, all positions; ``("pos", "head")`` — one head at one position;
- ``"feature"`` — one feature (a CNN channel, an MLP unit) at all positions;
- ``"site"`` — the whole activation;
- ``"auto"`` (default) — ``"pos"`` where the site has positions, else ``"feature"``.

Modes (Heimersheim & Nanda 2024, "How to use and interpret activation patching"):

- ``"denoising"``: run the *corrupted* input and patch in the clean activation of one unit — does this unit
  suffice to restore the clean behaviour?
- ``"noising"``: run the *clean* input and patch in the corrupted activation — is this unit necessary?

Effects are normalised as ``(m - m_corrupted) / (m_clean - m_corrupted)``: 0 = the corrupted behaviour,
1 = the clean one, where ``m`` is the metric averaged over the batch. Every patch is checked to have
actually changed the activation: units whose clean and corrupted activations are identical are flagged
in ``result.no_op`` and logged (their effect is meaningless), and a site whose write does not put the new
value in place (an adapter bug that elsewhere fails silently) raises an error.

Speed: patches of one site are stacked along the batch axis so many share one forward (``batch_size``
rows at a time; by default as many rows as keep a chunk's activation at the site near 2**20 values, at
most 1,024: tiny models gain from big batches, while on a CPU a compute-bound model slows down per row
when a chunk's intermediates fall out of cache — patching three blocks of ``vit_tiny_patch16_224`` took
5.2-5.7 s at 197 rows per chunk and 3.2-3.3 s at 32). With ``reuse_prefix=True`` (default) each patched
run computes only what depends on the patched site, in one of two ways:

- **Cones** (the model traces with ``torch.fx``, works nowhere in place, has no hook or forward override
  active, and every site is a module's output or input, each module run once: the zoo agents, MLPs, ViTs,
  ``interp_core.traced.site_cones``): one recording graph runs the base (and the source) input and keeps
  the sites' values and every value computed *off* each site's path that the nodes after it read (a skip
  connection from before the site, a critic head that does not depend on an actor site); each chunk then runs
  only the site's cone — the nodes downstream of it, on the patched values — calling modules' ``forward``
  directly. An input site (a ViT's ``blocks.3.resid_pre``) is replaced for its module only, as a pre-hook
  would. A graph found stale (the model changed since it was built) is built again. Where the output reads
  only some rows of a value (a ViT's class token), the cone is narrowed to them (:mod:`interp_core.narrow`):
  the last block attends from the class token's query only, and its MLP, the final norm and the head run on
  that token alone, less work than a hand loop that runs every token through them.
- **Prefix reuse** (anything else: in-place ResNets, models that do not trace): modules that finish
  before the site's module starts (in the traced forward order) return the base run's outputs instead of
  recomputing them, and where the site is a module's output (``blocks.3``, ``layer2.1``) and that module
  runs once per forward, the module itself returns its recorded output and the patch acts on that (the
  module's output does not depend on the patch, so the values are unchanged). All recorded in the one base
  run.

A patched row then computes only what follows the site — at most the work of a hand-written loop that stacks
patched copies of block ``i``'s output and runs blocks ``i+1..``
(``benchmarks/patching.py``: see the README's table for the measured ratios). With a single base example the
reused values reach the site as broadcast views, and code that is not on the site's path runs on one row, not
one per patch; a model that cannot run that way (it writes in place to a view, or reshapes with a batch size
read before the site) is detected by the error or row count it produces, and the chunk is rerun with stacked
copies. All paths give the numbers of the one-forward-per-patch loop (tested to 1e-5 against plain
``register_forward_hook`` loops, and each path against the others).

``attribution_patching`` estimates the same grid from one forward and one backward per input pair (Nanda
2023; Syed et al. 2023): ``delta m ≈ (a_source - a_base) · ∂m/∂a`` summed over the unit, exact for a
metric linear in the activation. Its ranking agrees with exact patching on the trained digits CNN
(Spearman 0.99) but only moderately on the digits ViT's residual tokens (0.52), and it is known to fail
where the first-order term misses the change (Kramár et al. 2024, "AtP*"): saturated nonlinearities (a
softmax, sigmoid or attention pattern in its flat region has a near-zero gradient even when the patch
moves it across the threshold), cancelling paths (direct and indirect effects of a unit that cancel to
first order, or gradients of opposite sign along two paths), and large activation differences through
normalisation layers. Check the top units with ``verify_topk``.

``path_patching`` measures a sender's effect through chosen receivers only (Wang et al. 2022;
Goldowsky-Dill et al. 2023). ``ablation_sweep`` replaces each unit by zero, its mean or a resampled
activation.

Every entry point goes through :mod:`interp_core.boundary`: a plain ``nn.Module`` is wrapped with its
registered adapter, data may be tensors, numpy arrays, Datasets or DataLoaders (converted to the model's
dtype and device; NaN / inf / empty data refused), the metric may be a class index, and the model runs in
eval mode with every flag and buffer restored. Values keep the model's floating dtype.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .boundary import as_hooked, as_inputs
from .errors import InputError
from .hooked import HookedModel
from .interventions import Ablate, Patch, Replace
from .metrics import Metric, as_metric
from .patch_engine import (
    AUTO_CHUNK_VALUES,
    AUTO_MAX_ROWS,
    Per,
    _base,
    _check_pair,
    _exact_site,
    _grid_dims,
    _metric_mean,
    _reduce_to_grid,
    _unit_masks,
)
from .progress import progress_bar
from .results import Result
from .sites import Site

__all__ = ["AUTO_CHUNK_VALUES", "AUTO_MAX_ROWS", "PatchingResult", "PathPatchingResult", "ablation_sweep",
           "attribution_patching", "patch_sweep", "path_patching"]

log = logging.getLogger(__name__)
# ---------------------------------------------------------------------------------------------- result
@dataclass
class PatchingResult(Result):
    """Effects per site on the site's own grid of units.

    Attributes:
        effects: ``{site: tensor}`` on the unit grid (e.g. ``[pos]`` for a ViT, ``[h, w]`` for a CNN,
            ``[feature]`` for a policy MLP); normalised (0 = corrupted, 1 = clean) unless
            ``normalize=False``; for ablations, ``m_ablated - m_base``.
        metric_values: ``{site: tensor}`` — the batch-mean metric of each patched run (or its estimate).
        grid_axes: ``{site: roles of the grid dims}``; ``no_op``: ``{site: bool tensor}`` units whose source
            and base activations are identical.
        clean_metric, corrupted_metric: batch-mean metric of the unpatched runs.
        config: method, mode, per, metric, batch size and so on.
    """

    effects: dict[str, torch.Tensor]
    metric_values: dict[str, torch.Tensor]
    grid_axes: dict[str, tuple[str, ...]]
    no_op: dict[str, torch.Tensor]
    clean_metric: float | None
    corrupted_metric: float | None
    config: dict[str, Any] = field(default_factory=dict)
    pos_names: dict[str, dict[str, int]] = field(default_factory=dict)
    verified: dict[str, Any] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        return list(self.effects)

    def table(self) -> list[dict[str, Any]]:
        """Tidy rows: site, unit (grid index tuple), effect, metric, no_op."""
        rows = []
        for s, e in self.effects.items():
            for flat in range(e.numel()):
                unit = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), e.shape)) if e.dim() else ()
                rows.append({"site": s, "unit": unit, "effect": float(e.reshape(-1)[flat]),
                             "metric": float(self.metric_values[s].reshape(-1)[flat]),
                             "no_op": bool(self.no_op[s].reshape(-1)[flat])})
        return rows

    def top(self, k: int = 10, by_abs: bool = True) -> list[dict[str, Any]]:
        rows = self.table()
        return sorted(rows, key=lambda r: -abs(r["effect"]) if by_abs else -r["effect"])[:k]

    def plot(self, ax: Any = None, title: str | None = None) -> Any:
        """Heatmap in the sites' geometry: sites × units for 1-D grids (tokens, heads, units), one (h, w)
        panel per site for spatial grids."""
        import matplotlib.pyplot as plt

        sites = self.sites
        grids = [self.effects[s].float() for s in sites]
        label = "normalised effect (0 = corrupted, 1 = clean)" if self.config.get("normalize", True) else "effect"
        if self.config.get("method") == "ablation":
            label = "metric change when ablated"
        vmax = max(float(g.abs().max()) for g in grids) or 1.0
        kw = dict(cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        title = title or f"{self.config.get('method', 'patching')} ({self.config.get('mode', '')}, " \
                         f"{self.config.get('metric', '')})"
        if all(g.dim() <= 1 for g in grids):
            width = max(g.numel() for g in grids)
            mat = torch.full((len(sites), width), float("nan"))
            for i, g in enumerate(grids):
                mat[i, :g.numel()] = g.reshape(-1)
            if ax is None:
                _, ax = plt.subplots(figsize=(min(14, 2 + 0.12 * width + 2), 1 + 0.35 * len(sites)))
            im = ax.imshow(mat.numpy(), aspect="auto", **kw)
            ax.set_yticks(range(len(sites)), sites, fontsize=7)
            ax.set_xlabel("/".join(self.grid_axes[sites[0]]) or "site")
            names = self.pos_names.get(sites[0], {})
            if names and width <= 64:
                ticks = list(range(width))
                inv = {v: k for k, v in names.items()}
                ax.set_xticks(ticks, [inv.get(t, str(t)) for t in ticks], fontsize=6)
            ax.figure.colorbar(im, ax=ax, label=label)
            ax.set_title(title)
            return ax.figure
        n = len(sites)
        cols = min(n, 6)
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
        for a, s, g in zip(axes.flat, sites, grids):
            im = a.imshow(g.reshape(g.shape[0], -1).numpy() if g.dim() > 1 else g[None].numpy(), **kw)
            a.set_title(s, fontsize=7)
            a.set_xticks([])
            a.set_yticks([])
        for a in list(axes.flat)[n:]:
            a.axis("off")
        fig.colorbar(im, ax=axes, label=label, shrink=0.8)
        fig.suptitle(title)
        return fig


def _sites(hm: HookedModel, sites: Sequence[str] | str, inputs: Any) -> list[Site]:
    """The site objects of ``sites`` (traced on ``inputs``), with the suite's errors for none or unknown."""
    hm._ensure_traced(inputs)
    names = [sites] if isinstance(sites, str) else list(sites)
    if not names:
        raise InputError("sites: none given; e.g. sites=model.sites.matching('blocks.*')")
    return [hm.sites[n] for n in names]


def _pair_inputs(hm: HookedModel, clean: Any, corrupted: Any) -> tuple[Any, Any]:
    """``clean`` and ``corrupted`` through the boundary (any data form; the model's dtype and device; NaN,
    inf and empty data refused), checked to pair up row by row."""
    clean, _ = as_inputs(clean, model=hm, argument="clean")
    corrupted, _ = as_inputs(corrupted, model=hm, argument="corrupted")
    _check_pair(clean, corrupted)
    return clean, corrupted


def _pair_setup(model: Any, clean: Any, corrupted: Any, sites: Sequence[str] | str, metric: Any,
                mode: str) -> tuple[HookedModel, Metric, list[Site], Any, Any]:
    """Checked arguments of a clean/corrupted method: the hooked model, the metric, the sites, and the
    (base, source) inputs."""
    if mode not in ("denoising", "noising"):
        raise InputError(f"mode must be 'denoising' or 'noising', got {mode!r}")
    hm = as_hooked(model)
    metric = as_metric(metric)
    clean, corrupted = _pair_inputs(hm, clean, corrupted)
    targets = _sites(hm, sites, clean)
    base, src = (corrupted, clean) if mode == "denoising" else (clean, corrupted)
    return hm, metric, targets, base, src


def _normalise(values: torch.Tensor, m_clean: float, m_corr: float, normalize: bool) -> torch.Tensor:
    if not normalize:
        return values
    denom = m_clean - m_corr
    if abs(denom) < 1e-8:
        raise InputError(f"clean and corrupted inputs give the same metric ({m_clean:.6g}); effects cannot be "
                         f"normalised. Choose inputs or a metric that differ, or pass normalize=False")
    return (values - m_corr) / denom


def _grid_shape(site_shape: Sequence[int], dims: Sequence[int]) -> tuple[int, ...]:
    return tuple(site_shape[d] for d in dims)


def patch_sweep(model: Any, clean: Any, corrupted: Any, sites: Sequence[str] | str,
                metric: Callable[[Any], torch.Tensor] | Metric | int, mode: str = "denoising", per: Per = "auto",
                normalize: bool = True, batch_size: int | None = None, reuse_prefix: bool = True,
                progress: bool | None = None) -> PatchingResult:
    """Exact activation patching of every unit of every site (see the module docstring).

    Args:
        model: a :class:`~interp_core.HookedModel` or any ``nn.Module`` (wrapped by the registered adapter).
        clean, corrupted: inputs of the same shape, paired row by row: tensors, numpy arrays, Datasets,
            DataLoaders or iterables of batches (:mod:`interp_core.boundary`).
        metric: ``output -> Tensor[batch]`` (see :mod:`interp_core.metrics`) or a class index (its logit).
        mode: ``"denoising"`` (corrupted run, clean patch) or ``"noising"`` (clean run, corrupted patch).
        batch_size: rows per stacked forward (patches × examples); ``None``: chosen per site (module doc).
        reuse_prefix: start each patched run after the patched site (reuse the base run's outputs of
            every module before it, and of the site's own module where the site is its output).
        progress: show a progress bar (``None``: only on a terminal).

    Runs in eval mode (``hm.analysis()``); values keep the model's dtype.
    """
    hm, metric, targets, base, src = _pair_setup(model, clean, corrupted, sites, metric, mode)
    names = [s.name for s in targets]
    with hm.analysis(), torch.no_grad():
        out_base, base_cache, base_outputs, cones = _base(hm, base, targets, reuse_prefix)
        if cones is not None:  # the cones' recording graph gives the source's site values too
            out_src, values, _ = hm._call(src, cones[0].record)
            src_cache = dict(zip(names, values))
        else:
            out_src, src_cache = hm.run_with_cache(src, sites=names)
        m_base, m_src = _metric_mean(out_base, metric), _metric_mean(out_src, metric)
        m_clean, m_corr = (m_src, m_base) if mode == "denoising" else (m_base, m_src)
        dims = {s.name: _grid_dims(s, per) for s in targets}
        total = sum(math.prod(_grid_shape(base_cache[s].shape[1:], dims[s])) for s in names)
        bar = progress_bar(total=total, desc="patching", unit="patch", progress=progress)
        effects, values, no_ops = {}, {}, {}
        for s in targets:
            shape = tuple(base_cache[s.name].shape[1:])
            v, no_op = _exact_site(hm, base, s, src_cache[s.name], base_cache[s.name], dims[s.name], metric,
                                   batch_size, base_outputs, bar, cones)
            g = _grid_shape(shape, dims[s.name])
            values[s.name] = v.reshape(g)
            no_ops[s.name] = no_op.reshape(g)
            effects[s.name] = _normalise(v, m_clean, m_corr, normalize).reshape(g)
            if no_op.any():
                log.warning("site %s: %d units have identical clean and corrupted activations (no-op patches)",
                            s.name, int(no_op.sum()))
        bar.close()
    return PatchingResult(effects, values, {s.name: tuple(s.axes[1:][d] for d in dims[s.name]) for s in targets},
                          no_ops, m_clean, m_corr,
                          {"method": "exact", "mode": mode, "per": per, "metric": metric.name,
                           "normalize": normalize, "batch_size": batch_size, "reuse_prefix": reuse_prefix},
                          {s.name: dict(s.pos_names) for s in targets})


def attribution_patching(model: Any, clean: Any, corrupted: Any, sites: Sequence[str] | str,
                         metric: Callable[[Any], torch.Tensor] | Metric | int, mode: str = "denoising",
                         per: Per = "auto", normalize: bool = True, verify_topk: int = 0) -> PatchingResult:
    """Linear (gradient) estimate of :func:`patch_sweep`'s grid: one forward and one backward.

    ``delta m(unit) ≈ sum_{unit entries, batch} (a_source - a_base) * d mean(m)/d a_base`` with the gradient
    taken on the base run (corrupted for denoising, clean for noising); Nanda 2023, "Attribution patching";
    Syed et al. 2023. Exact when the metric is linear in the activation. Works on frozen models
    (``requires_grad_(False)``) and under ``torch.no_grad()``: the gradient is taken with respect to the
    recorded activations, never the weights.

    Where it holds and where it fails: on trained models its ranking of units agrees with exact patching
    (Spearman 0.99 over the cells of the digits CNN, 0.52 over the residual tokens of the digits ViT;
    ``tests/vision/test_attribution_patching.py``). It is known to fail (Kramár et al. 2024, "AtP*") on
    saturated nonlinearities — a sigmoid, softmax or attention pattern in its flat region has almost no
    gradient, so a patch that moves it across the threshold is estimated near 0 — and on cancelling paths,
    where a unit's effects along two paths cancel to first order (or its gradients along them do) while the
    exact patch does not; large changes through LayerNorm are a milder case of the same. ``verify_topk=k``
    re-measures the k largest estimates per site by exact patching
    (``result.verified[site] = {"units": [...], "estimate": [...], "exact": [...]}``, the exact values equal
    to :func:`patch_sweep`'s for those units).
    """
    if not isinstance(verify_topk, int) or verify_topk < 0:
        raise InputError(f"verify_topk: a number of units >= 0, got {verify_topk!r}")
    hm, metric, targets, base, src = _pair_setup(model, clean, corrupted, sites, metric, mode)
    names = [s.name for s in targets]
    with hm.analysis():
        with torch.enable_grad():  # under an outer torch.no_grad() too: the metric must be on the graph
            out, base_cache = hm.run_with_cache(base, sites=names, grad=True)
            m = metric(out).mean()
            if not m.requires_grad:
                raise InputError(f"metric {metric.name!r} does not depend on the model's output through autograd "
                                 f"(it detaches or converts it); write it with torch operations on the output")
            grads = torch.autograd.grad(m, [base_cache[n] for n in names], allow_unused=True)
        with torch.no_grad():
            out_src, src_cache = hm.run_with_cache(src, sites=names)
        m_base, m_src = float(m.detach()), _metric_mean(out_src, metric)
        m_clean, m_corr = (m_src, m_base) if mode == "denoising" else (m_base, m_src)
        effects, values, no_ops, verified = {}, {}, {}, {}
        for s, g in zip(targets, grads):
            a_base = base_cache[s.name].detach()
            dims = _grid_dims(s, per)
            if g is None:
                g = torch.zeros_like(a_base)
            diff = src_cache[s.name] - a_base
            delta = _reduce_to_grid((diff * g).sum(0), dims)
            no_ops[s.name] = _reduce_to_grid((diff != 0).any(0).float(), dims) == 0
            values[s.name] = m_base + delta
            effects[s.name] = _normalise(values[s.name], m_clean, m_corr, normalize)
            if verify_topk:
                verified[s.name] = _verify(hm, base, s, src_cache[s.name], a_base, dims, effects[s.name], metric,
                                           verify_topk, mode, (m_clean, m_corr, normalize))
    return PatchingResult(effects, values, {s.name: tuple(s.axes[1:][d] for d in _grid_dims(s, per))
                                            for s in targets},
                          no_ops, m_clean, m_corr,
                          {"method": "attribution", "mode": mode, "per": per, "metric": metric.name,
                           "normalize": normalize, "verify_topk": verify_topk},
                          {s.name: dict(s.pos_names) for s in targets}, verified)


def _verify(hm: HookedModel, base: Any, site: Site, source: torch.Tensor, a_base: torch.Tensor,
            dims: tuple[int, ...], effects: torch.Tensor, metric: Metric, k: int, mode: str,
            norm: tuple[float, float, bool]) -> dict[str, list]:
    """Exact patching of the ``k`` units whose estimated effect is furthest from the base run's."""
    flat = effects.reshape(-1)
    base_eff = (0.0 if mode == "denoising" else 1.0) if norm[2] else (norm[1] if mode == "denoising" else norm[0])
    top = torch.argsort((flat - base_eff).abs(), descending=True)[:k]
    exact = []
    with torch.no_grad():
        for u in top.tolist():
            mask = _unit_masks(tuple(a_base.shape[1:]), dims, torch.tensor([u]))[0] if dims else True
            o = hm.run_with_interventions(
                base, {site.name: Replace(lambda a, m=mask: torch.where(torch.as_tensor(m, device=a.device),
                                                                         source.to(a.dtype), a))})
            exact.append(float(_normalise(metric(o).mean().reshape(1), *norm)))
    return {"units": top.tolist(), "estimate": flat[top].tolist(), "exact": exact}


def ablation_sweep(model: Any, inputs: Any, sites: Sequence[str] | str,
                   metric: Callable[[Any], torch.Tensor] | Metric | int, method: str = "zero", stats: Any = None,
                   per: Per = "auto", batch_size: int | None = None, seed: int = 0, reuse_prefix: bool = True,
                   progress: bool | None = None) -> PatchingResult:
    """Ablate each unit of each site (``"zero"``, ``"mean"`` or ``"resample"``, see
    :class:`~interp_core.interventions.Ablate`) and report ``m_ablated - m_base`` (batch means, in the
    model's dtype; eval mode).

    ``inputs``: any data form the boundary accepts. ``stats``: reference activations for mean/resample
    ablation (a cache or store over a dataset holding the sites, or a tensor for a single site).
    """
    hm = as_hooked(model)
    metric = as_metric(metric)
    inputs, _ = as_inputs(inputs, model=hm, argument="inputs")
    targets = _sites(hm, sites, inputs)
    ablation = Ablate(method, stats=stats, seed=seed)  # checks method and stats up front
    with hm.analysis(), torch.no_grad():
        out, base_cache, base_outputs, cones = _base(hm, inputs, targets, reuse_prefix)
        m_base = _metric_mean(out, metric)
        total = sum(math.prod(_grid_shape(base_cache[s.name].shape[1:], _grid_dims(s, per))) for s in targets)
        bar = progress_bar(total=total, desc=f"{method} ablation", unit="unit", progress=progress)
        effects, values, no_ops = {}, {}, {}
        for s in targets:
            dims = _grid_dims(s, per)
            a = base_cache[s.name]
            source = ablation._compute(a, s)
            v, no_op = _exact_site(hm, inputs, s, source, a, dims, metric, batch_size, base_outputs, bar, cones)
            g = _grid_shape(tuple(a.shape[1:]), dims)
            values[s.name] = v.reshape(g)
            effects[s.name] = (v - m_base).reshape(g)
            no_ops[s.name] = no_op.reshape(g)
        bar.close()
    return PatchingResult(effects, values, {s.name: tuple(s.axes[1:][d] for d in _grid_dims(s, per))
                                            for s in targets},
                          no_ops, None, m_base,
                          {"method": "ablation", "ablation": method, "per": per, "metric": metric.name,
                           "normalize": False, "batch_size": batch_size, "seed": seed},
                          {s.name: dict(s.pos_names) for s in targets})


@dataclass
class PathPatchingResult(Result):
    """Effect of a sender through the receivers only.

    ``metric``: batch-mean metric with the sender's effect passed along the receivers' paths;
    ``effect``: normalised as ``(m - m_corrupted) / (m_clean - m_corrupted)`` (1 = no effect through
    these paths, 0 = the whole corrupted effect); ``clean_metric``, ``corrupted_metric``; ``config``.
    """

    metric: float
    effect: float
    clean_metric: float
    corrupted_metric: float
    config: dict[str, Any] = field(default_factory=dict)

    def plot(self, ax: Any = None, title: str | None = None) -> Any:
        """Bars of the batch-mean metric: clean run, sender patched along the receivers' paths only, and the
        corrupted run; returns the figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4.2, 3.0))
        labels = ["clean", "path-patched", "corrupted"]
        ax.bar(labels, [self.clean_metric, self.metric, self.corrupted_metric], color=["C0", "C1", "C3"])
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_ylabel(str(self.config.get("metric", "metric")))
        receivers = ", ".join(self.config.get("receivers", []))
        ax.set_title(title or f"{self.config.get('sender', '')} -> {receivers} (effect {self.effect:.2f})",
                     fontsize=8)
        ax.figure.tight_layout()
        return ax.figure


def path_patching(model: Any, clean: Any, corrupted: Any, sender: str, receivers: Sequence[str] | str,
                  metric: Callable[[Any], torch.Tensor] | Metric | int, freeze: Sequence[str] = (),
                  sender_positions: Any = None, sender_heads: Any = None) -> PathPatchingResult:
    """Path patching (noising form; Wang et al. 2022, Goldowsky-Dill et al. 2023).

    1. Run the clean input with the sender (optionally some positions/heads of it) replaced by its corrupted
       activation, and every ``freeze`` site held at its clean activation; record the receivers.
    2. Run the clean input with only the receivers set to those recorded activations; measure the metric.

    The sender's effect therefore reaches the output only through the receivers, and only along paths that
    avoid the frozen sites (in a residual network: freeze the other components between sender and
    receivers to isolate the direct sender -> receiver path). Eval mode; any model and data form the
    boundary accepts.
    """
    hm = as_hooked(model)
    metric = as_metric(metric)
    clean, corrupted = _pair_inputs(hm, clean, corrupted)
    recv = [receivers] if isinstance(receivers, str) else list(receivers)
    if not recv:
        raise InputError("receivers: none given; name the sites the sender's effect must pass through")
    _sites(hm, [sender, *recv, *freeze], clean)
    overlap = set(recv) & set(freeze) | ({sender} & (set(recv) | set(freeze)))
    if overlap:
        raise InputError(f"sites {sorted(overlap)} are given more than one role (sender, receiver, frozen)")
    with hm.analysis(), torch.no_grad():
        out_clean, clean_cache = hm.run_with_cache(clean, sites=[sender, *freeze])
        out_corr, corr_cache = hm.run_with_cache(corrupted, sites=[sender])
        m_clean, m_corr = _metric_mean(out_clean, metric), _metric_mean(out_corr, metric)
        ivs: dict[str, Any] = {sender: Patch(corr_cache, positions=sender_positions, heads=sender_heads)}
        ivs.update({f: Patch(clean_cache) for f in freeze})
        _, recorded = hm.run_with_cache(clean, sites=recv, interventions=ivs)
        out = hm.run_with_interventions(clean, {r: Patch(recorded) for r in recv})
        m = float(metric(out).mean())
    effect = float(_normalise(torch.tensor([m], dtype=torch.float64), m_clean, m_corr, True))
    return PathPatchingResult(m, effect, m_clean, m_corr,
                              {"sender": sender, "receivers": recv, "freeze": list(freeze),
                               "sender_positions": sender_positions, "sender_heads": sender_heads,
                               "metric": metric.name})
