"""Attribution: one interface over captum for input and layer attributions of any hooked model.

``attribute(model, inputs, method, site=None, target=None, metric=None, ...)`` runs a captum method and
returns an :class:`AttributionResult` whose tensor carries axis roles (``batch``, ``pos``, ``head``,
``feature``): the input's axes for input methods, the site's axes for layer methods.

Methods (captum class, paper):

- ``"integrated_gradients"`` — ``IntegratedGradients``; Sundararajan et al. 2017, "Axiomatic Attribution for
  Deep Networks": ``(x - x') * integral_0^1 grad F(x' + a (x - x')) da`` (Gauss-Legendre quadrature).
- ``"saliency"`` — ``Saliency``; Simonyan et al. 2014: ``|grad F(x)|`` (``abs=False`` keeps the sign).
- ``"deeplift"`` — ``DeepLift`` (rescale rule); Shrikumar et al. 2017, "Learning Important Features Through
  Propagating Activation Differences".
- ``"gradient_shap"`` — ``GradientShap``; Lundberg & Lee 2017: expected gradients over random baselines from
  ``baselines`` and noisy inputs (stochastic: ``seed`` fixes the draw per chunk, so results equal captum's
  for the same seeds when the batch is one chunk).
- ``"layer_integrated_gradients"`` — ``LayerIntegratedGradients``: IG with respect to the site's activation,
  from the activation on the baseline inputs to the one on the inputs.
- ``"layer_conductance"`` — ``LayerConductance``; Dhamdhere et al. 2018, "How Important Is a Neuron?".
- ``"layer_gradcam"`` — ``LayerGradCam``; Selvaraju et al. 2017: ``sum_c mean_pos(dF/dA_c) * A_c`` over
  channels ``c``. captum takes dim 1 as channels, which is right for ``(batch, feature, pos, pos)`` CNN sites
  and ``(batch, feature)`` layers; for token sites ``(batch, pos, feature)`` (ViTs) channels are the feature
  axis, so the map is computed with the core's hooks instead (the usual ViT Grad-CAM, e.g. pytorch-grad-cam's
  reshape transform), giving one value per position. ``relu_attributions=True`` applies Grad-CAM's ReLU.

What is attributed: ``target`` (an output index per example, as in captum) or ``metric(output) -> Tensor[
batch]`` (any scalar per example: a logit difference, an action log-prob, a value). Layer methods take a
``site`` name; captum hooks the site's module (``hm.sites[site].module_path``); virtual sites and per-call
sites of reused modules go through the core's hooks (layer integrated gradients, Grad-CAM) or raise an error
naming what works.

Memory stays bounded: inputs are processed ``batch_size`` examples at a time, and path methods pass
``internal_batch_size`` (rows per forward, steps included) to captum. The numbers are the same as calling
captum directly on the whole batch (tested to 1e-6).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError, InputTypeError
from .hooked import HookedModel
from .sites import Site, infer_axes

Metric = Callable[[Any], torch.Tensor]

INPUT_METHODS = ("integrated_gradients", "saliency", "deeplift", "gradient_shap")
LAYER_METHODS = ("layer_integrated_gradients", "layer_conductance", "layer_gradcam")
ALIASES = {
    "ig": "integrated_gradients", "integratedgradients": "integrated_gradients",
    "deep_lift": "deeplift", "gradientshap": "gradient_shap", "shap": "gradient_shap",
    "lig": "layer_integrated_gradients", "layerintegratedgradients": "layer_integrated_gradients",
    "layerconductance": "layer_conductance", "conductance": "layer_conductance",
    "gradcam": "layer_gradcam", "grad_cam": "layer_gradcam", "layergradcam": "layer_gradcam",
}
PATH_METHODS = ("integrated_gradients", "layer_integrated_gradients", "layer_conductance")


def _method_name(method: str) -> str:
    key = method.lower().replace("-", "_")
    key = ALIASES.get(key.replace("_", ""), ALIASES.get(key, key))
    if key not in INPUT_METHODS + LAYER_METHODS:
        raise InputError(f"unknown attribution method {method!r}; choose one of "
                         f"{list(INPUT_METHODS + LAYER_METHODS)}")
    return key


class _MetricModule(nn.Module):
    """``metric(model(x))`` as a module (DeepLift needs a module; captum then sees one number per row)."""

    def __init__(self, model: nn.Module, metric: Metric):
        super().__init__()
        self.model = model
        self.metric = metric

    def forward(self, *args: Any) -> torch.Tensor:
        out = self.metric(self.model(*args))
        if not isinstance(out, torch.Tensor) or out.dim() != 1 or out.shape[0] != args[0].shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"metric returned {shape} for a batch of {args[0].shape[0]}; it must return one "
                             f"number per example, a 1-D Tensor[batch]")
        return out


@dataclass
class AttributionResult:
    """Attributions with axis roles.

    Attributes:
        attributions: the tensor ``[batch, ...]`` (input shape for input methods, site shape for layer
            methods, positions only for Grad-CAM).
        axes: one role per dimension.
        method: the canonical method name; ``site``: the site (layer methods) or ``None``.
        delta: captum's convergence delta ``[batch]`` when requested (IG-family, DeepLift, GradientShap).
        config: the settings that produced it.
    """

    attributions: torch.Tensor
    axes: tuple[str, ...]
    method: str
    site: str | None = None
    delta: torch.Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> torch.Size:
        return self.attributions.shape

    def sum_over(self, *roles: str) -> tuple[torch.Tensor, tuple[str, ...]]:
        """Sum the axes with the given roles, e.g. ``sum_over("feature")`` → a per-position map."""
        dims = [i for i, a in enumerate(self.axes) if a in roles]
        t = self.attributions.sum(dim=dims) if dims else self.attributions
        return t, tuple(a for a in self.axes if a not in roles)

    def per_position(self) -> torch.Tensor:
        """Attributions summed over head and feature axes: ``[batch, *pos]`` (``[batch]`` without pos)."""
        return self.sum_over("head", "feature")[0]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "site": self.site, "axes": list(self.axes),
                "shape": list(self.attributions.shape), "attributions": self.attributions.tolist(),
                "delta": None if self.delta is None else self.delta.tolist(), "config": self.config}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), default=str))

    def plot(self, index: int = 0, ax: Any = None) -> Any:
        """The per-position map of example ``index``: an image for two pos axes (a CNN cell grid, or a ViT
        token grid without a leading CLS token), bars for one pos axis or for features; returns the figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(4, 3.4))
        else:
            fig = ax.figure
        m, axes = self.sum_over("head", "feature")
        m = m[index].detach().cpu().numpy() if m.dim() > 0 else m.detach().cpu().numpy()
        if m.ndim == 2:
            lim = float(np.abs(m).max()) or 1.0
            im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
            fig.colorbar(im, ax=ax)
            ax.set_xlabel("pos (w)")
            ax.set_ylabel("pos (h)")
        elif m.ndim == 1:
            ax.bar(np.arange(len(m)), m)
            ax.set_xlabel("position")
        else:  # no pos axis: show the features
            f = self.attributions[index].detach().cpu().reshape(-1).numpy()
            ax.bar(np.arange(len(f)), f)
            ax.set_xlabel("feature")
        ax.set_title(f"{self.method}" + (f" at {self.site}" if self.site else ""))
        fig.tight_layout()
        return fig


def _slice_target(target: Any, i: int, j: int, n: int) -> Any:
    if isinstance(target, torch.Tensor) and target.dim() > 0 and target.shape[0] == n:
        return target[i:j]
    if isinstance(target, list) and len(target) == n:
        return target[i:j]
    return target


def _slice_baselines(baselines: Any, i: int, j: int, n: int) -> Any:
    if isinstance(baselines, torch.Tensor) and baselines.dim() > 0 and baselines.shape[0] == n and n > 1:
        return baselines[i:j]
    return baselines


def _site_for_captum(hm: HookedModel, site: Site, method: str) -> tuple[nn.Module, bool]:
    if site.kind == "virtual" or site.call_index is not None or site.read is not None:
        why = ("a virtual site" if site.kind == "virtual" else
               "one call of a module that runs several times" if site.call_index is not None else
               "a site that reads a part of its module's output")
        raise InputError(f"site '{site.name}' is {why}; captum's {method} hooks whole modules. Use "
                         f"method='layer_integrated_gradients' or 'layer_gradcam' (computed with the core's "
                         f"hooks for such sites), or a plain module site")
    return hm._modules[site.module_path], site.kind == "input"


def _lig_hooks(hm: HookedModel, site: Site, inputs: torch.Tensor, baselines: Any,
               select: Callable[[Any], torch.Tensor], n_steps: int, method: str,
               internal_batch_size: int | None) -> torch.Tensor:
    """Layer integrated gradients through the core's hooks (works for virtual sites too).

    The site's activation is replaced by ``a' + alpha (a - a')`` (``a``, ``a'``: the activation on the
    inputs and on the baselines) for each quadrature point ``alpha`` of captum's rule, and the weighted
    gradients are summed: the same computation as captum's ``LayerIntegratedGradients``.
    """
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes_fn, alphas_fn = approximation_parameters(method)
    step_sizes, alphas = step_sizes_fn(n_steps), alphas_fn(n_steps)
    b = inputs.shape[0]
    base = torch.zeros_like(inputs) if baselines is None else (
        torch.as_tensor(baselines, dtype=inputs.dtype).expand_as(inputs)
        if not isinstance(baselines, torch.Tensor) or baselines.shape != inputs.shape else baselines)
    with torch.no_grad():
        _, c_in = hm.run_with_cache(inputs, sites=[site.name])
        _, c_base = hm.run_with_cache(base, sites=[site.name])
    a, a0 = c_in[site.name], c_base[site.name]
    bdim = c_in.axes(site.name).index("batch")
    per_chunk = max(1, (internal_batch_size or b * n_steps) // b)
    total = torch.zeros_like(a)
    for s in range(0, n_steps, per_chunk):
        chunk = list(range(s, min(n_steps, s + per_chunk)))
        scaled = torch.cat([a0 + alphas[k] * (a - a0) for k in chunk], dim=bdim).requires_grad_(True)
        x = torch.cat([inputs] * len(chunk), dim=0)

        def replace(act: torch.Tensor, scaled: torch.Tensor = scaled) -> torch.Tensor:
            return scaled

        with hm.hooks({site.name: replace}):
            out = select(hm.model(x))
        grad, = torch.autograd.grad(out.sum(), scaled)
        for n, k in enumerate(chunk):
            total += step_sizes[k] * grad.narrow(bdim, n * b, b)
    return (total * (a - a0)).detach()


def attribute(model: Any, inputs: torch.Tensor, method: str, site: str | None = None, target: Any = None,
              metric: Metric | None = None, baselines: Any = None, n_steps: int = 50,
              batch_size: int = 32, internal_batch_size: int | None = None, seed: int = 0,
              return_convergence_delta: bool = False, input_axes: tuple[str, ...] | None = None,
              backend: str = "auto", **kwargs: Any) -> AttributionResult:
    """Attribute ``target`` (or ``metric``) to the inputs or to a site's activation with a captum method.

    Args:
        model: a :class:`~interp_core.hooked.HookedModel` (an ``nn.Module`` is wrapped).
        inputs: ``[batch, ...]`` input tensor.
        method: one of :data:`INPUT_METHODS` + :data:`LAYER_METHODS` (captum class names and short aliases
            such as ``"ig"``, ``"gradcam"`` work too).
        site: the site for layer methods.
        target: output index (int, or one per example) as in captum; or ``metric``.
        metric: ``metric(output) -> Tensor[batch]``; replaces ``target``.
        baselines: as in captum (default zeros); required distribution for ``gradient_shap`` (default a
            single all-zero baseline).
        n_steps: path steps for integrated gradients and conductance.
        batch_size: examples per captum call (bounds memory).
        internal_batch_size: rows (examples x steps) per forward for path methods; default ``batch_size *
            min(n_steps, 8)``.
        seed: ``torch.manual_seed`` and ``np.random.seed`` (captum draws from both) before each chunk of
            ``gradient_shap``.
        return_convergence_delta: also return captum's completeness gap (methods that support it).
        input_axes: axis roles of ``inputs`` (default: inferred from the shape).
        backend: ``"auto"`` (captum where it applies), ``"captum"`` or ``"hooks"`` (the core's hooks; layer
            integrated gradients and Grad-CAM only).
        **kwargs: passed to the captum method (e.g. ``abs=False`` for saliency, ``n_samples``/``stdevs`` for
            gradient_shap, ``relu_attributions`` for Grad-CAM).
    """
    import captum.attr as ca

    name = _method_name(method)
    if not isinstance(inputs, torch.Tensor):
        raise InputTypeError(f"inputs must be a tensor [batch, ...], got {type(inputs).__name__}")
    if (target is None) == (metric is None):
        raise InputError("give exactly one of target= (an output index, as in captum) or metric= "
                         "(a function output -> Tensor[batch])")
    if backend not in ("auto", "captum", "hooks"):
        raise InputError(f"backend must be 'auto', 'captum' or 'hooks', got {backend!r}")
    hm = model if isinstance(model, HookedModel) else HookedModel(model)
    net = hm.model
    forward = net if metric is None else _MetricModule(net, metric)
    n = inputs.shape[0]
    if n == 0:
        raise InputError("inputs are empty")
    site_obj = None
    if name in LAYER_METHODS:
        if site is None:
            raise InputError(f"{name} attributes to a site's activation; pass site= (e.g. one of "
                             f"{hm.sites.names[:5]})")
        hm._ensure_traced(inputs[:1])
        site_obj = hm.sites[site]
        if site_obj.axes is None:
            raise InputError(f"site '{site}' has unknown axes; give the adapter axes for it")
    elif site is not None:
        raise InputError(f"{name} attributes to the inputs; drop site= or use a layer method "
                         f"{list(LAYER_METHODS)}")
    use_hooks = backend == "hooks" or (
        backend == "auto" and site_obj is not None and (
            site_obj.kind == "virtual" or site_obj.call_index is not None or site_obj.read is not None
            or (name == "layer_gradcam" and site_obj.axes.index("feature") != 1
                if "feature" in site_obj.axes else False)))
    if use_hooks and name not in ("layer_integrated_gradients", "layer_gradcam"):
        if backend == "auto":
            _site_for_captum(hm, site_obj, name)  # raises the error that says what works for this site
        raise InputError(f"backend='hooks' supports layer_integrated_gradients and layer_gradcam, not {name}")
    if use_hooks and site_obj is None:
        raise InputError("backend='hooks' is for layer methods")
    ibs = internal_batch_size

    def select_fn(t: Any) -> Callable[[Any], torch.Tensor]:
        def select(out: Any) -> torch.Tensor:
            if metric is not None:
                return _check_metric(metric(out), out)
            idx = t if isinstance(t, torch.Tensor) else torch.as_tensor(t)
            rows = out.shape[0]
            if idx.dim() == 0:
                return out[:, int(idx)]
            reps = rows // idx.shape[0]
            return out.gather(1, idx.repeat(reps).reshape(-1, 1).to(out.device))[:, 0]
        return select

    parts, deltas = [], []
    out_axes: tuple[str, ...] | None = None
    with hm.evaluating():
        for i in range(0, n, batch_size):
            j = min(n, i + batch_size)
            x = inputs[i:j]
            t = _slice_target(target, i, j, n)
            # gradient_shap's baselines are a distribution to draw from, not one baseline per example
            bl = baselines if name == "gradient_shap" else _slice_baselines(baselines, i, j, n)
            chunk_ibs = ibs if ibs is not None else (j - i) * min(n_steps, 8)
            delta = None
            if use_hooks:
                if name == "layer_gradcam":
                    relu = bool(kwargs.get("relu_attributions", False))
                    # grad=True keeps the cached activation in the graph on the path to the output
                    a_out, cache = hm.run_with_cache(x, sites=[site_obj.name], grad=True)
                    act = cache[site_obj.name]
                    grad, = torch.autograd.grad(select_fn(t)(a_out).sum(), act)
                    axes = cache.axes(site_obj.name)
                    chan = [k for k, a in enumerate(axes) if a in ("head", "feature")]
                    pos = [k for k, a in enumerate(axes) if a == "pos"]
                    weights = grad.mean(dim=pos, keepdim=True) if pos else grad
                    attr = (weights * act).sum(dim=chan)
                    attr = torch.relu(attr) if relu else attr
                    attr = attr.detach()
                    out_axes = tuple(a for a in axes if a not in ("head", "feature"))
                else:
                    attr = _lig_hooks(hm, site_obj, x, bl, select_fn(t), n_steps,
                                      kwargs.get("method", "gausslegendre"), chunk_ibs)
                    out_axes = site_obj.axes
            elif name in INPUT_METHODS:
                if name == "integrated_gradients":
                    res = ca.IntegratedGradients(forward).attribute(
                        x, baselines=bl, target=t, n_steps=n_steps, internal_batch_size=chunk_ibs,
                        return_convergence_delta=return_convergence_delta, **kwargs)
                elif name == "saliency":
                    res = ca.Saliency(forward).attribute(x, target=t, **kwargs)
                elif name == "deeplift":
                    res = ca.DeepLift(forward).attribute(x, baselines=bl, target=t,
                                                         return_convergence_delta=return_convergence_delta,
                                                         **kwargs)
                else:
                    if bl is None:
                        bl = torch.zeros_like(x[:1])
                    torch.manual_seed(seed)  # captum draws the noise with torch and the baselines with numpy
                    np.random.seed(seed)
                    res = ca.GradientShap(forward).attribute(x, baselines=bl, target=t,
                                                             return_convergence_delta=return_convergence_delta,
                                                             **kwargs)
                attr, delta = res if (return_convergence_delta and name != "saliency") else (res, None)
                out_axes = tuple(input_axes) if input_axes is not None else infer_axes(x.shape)
            else:
                layer, to_input = _site_for_captum(hm, site_obj, name)
                if name == "layer_integrated_gradients":
                    res = ca.LayerIntegratedGradients(forward, layer).attribute(
                        x, baselines=bl, target=t, n_steps=n_steps, internal_batch_size=chunk_ibs,
                        return_convergence_delta=return_convergence_delta, attribute_to_layer_input=to_input,
                        **kwargs)
                    out_axes = site_obj.axes
                elif name == "layer_conductance":
                    res = ca.LayerConductance(forward, layer).attribute(
                        x, baselines=bl, target=t, n_steps=n_steps, internal_batch_size=chunk_ibs,
                        return_convergence_delta=return_convergence_delta, attribute_to_layer_input=to_input,
                        **kwargs)
                    out_axes = site_obj.axes
                else:
                    res = ca.LayerGradCam(forward, layer).attribute(x, target=t,
                                                                    attribute_to_layer_input=to_input, **kwargs)
                    res = res[:, 0] if res.dim() > 1 else res  # captum keeps a size-1 channel axis
                    out_axes = tuple(a for k, a in enumerate(site_obj.axes) if k != 1)
                attr, delta = res if (return_convergence_delta and name != "layer_gradcam") else (res, None)
            parts.append(attr.detach())
            if delta is not None:
                deltas.append(delta.detach())
    attributions = torch.cat(parts)
    if out_axes is None or len(out_axes) != attributions.dim():
        out_axes = infer_axes(attributions.shape) or tuple(["batch"] + ["feature"] * (attributions.dim() - 1))
    config = {"method": name, "site": site, "n_steps": n_steps, "batch_size": batch_size,
              "internal_batch_size": internal_batch_size, "backend": "hooks" if use_hooks else "captum",
              "target": target if isinstance(target, (int, type(None))) else "per-example",
              "metric": getattr(metric, "__name__", None) if metric is not None else None, "seed": seed,
              "kwargs": {k: repr(v) for k, v in kwargs.items()}}
    return AttributionResult(attributions=attributions, axes=tuple(out_axes), method=name, site=site,
                             delta=torch.cat(deltas) if deltas else None, config=config)


def _check_metric(value: Any, out: Any) -> torch.Tensor:
    rows = out.shape[0] if isinstance(out, torch.Tensor) else None
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or (rows is not None and value.shape[0] != rows):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InputError(f"metric returned {shape}; it must return one number per example, a 1-D "
                         f"Tensor[batch]")
    return value


def integrated_gradients(model: Any, inputs: torch.Tensor, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="integrated_gradients"``."""
    return attribute(model, inputs, "integrated_gradients", **kwargs)


def saliency(model: Any, inputs: torch.Tensor, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="saliency"``."""
    return attribute(model, inputs, "saliency", **kwargs)


def deeplift(model: Any, inputs: torch.Tensor, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="deeplift"``."""
    return attribute(model, inputs, "deeplift", **kwargs)


def gradient_shap(model: Any, inputs: torch.Tensor, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="gradient_shap"``."""
    return attribute(model, inputs, "gradient_shap", **kwargs)


def layer_integrated_gradients(model: Any, inputs: torch.Tensor, site: str, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="layer_integrated_gradients"``."""
    return attribute(model, inputs, "layer_integrated_gradients", site=site, **kwargs)


def layer_conductance(model: Any, inputs: torch.Tensor, site: str, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="layer_conductance"``."""
    return attribute(model, inputs, "layer_conductance", site=site, **kwargs)


def layer_gradcam(model: Any, inputs: torch.Tensor, site: str, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="layer_gradcam"``."""
    return attribute(model, inputs, "layer_gradcam", site=site, **kwargs)
