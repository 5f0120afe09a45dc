"""The attribution methods over captum (input methods and layer integrated gradients / conductance).

Each is one small class registered by name; see :mod:`interp_core.attribution` for the definitions.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..hooked import HookedModel
from ..sites import Site
from .base import AttributionMethod, Chunk, private_rng, register_method, rows_of

__all__ = ["IntegratedGradients", "Saliency", "DeepLift", "GradientShap", "LayerIntegratedGradients",
           "LayerConductance"]


def _split(res: Any, with_delta: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    return res if with_delta else (res, None)


@register_method
class IntegratedGradients(AttributionMethod):
    """Integrated gradients (captum ``IntegratedGradients``; Sundararajan et al. 2017):
    ``(x - x') * integral_0^1 grad F(x' + a (x - x')) da``, Gauss-Legendre quadrature of ``n_steps`` points.
    Attributions ``[batch, *input]`` with the input's axes."""

    name = "integrated_gradients"
    aliases = ("ig", "integratedgradients")
    path = True

    def _chunk(self, c: Chunk) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...]]:
        import captum.attr as ca

        res = ca.IntegratedGradients(c.forward).attribute(
            c.x, baselines=c.baselines, target=c.target, n_steps=c.n_steps,
            internal_batch_size=c.internal_batch_size, return_convergence_delta=c.return_convergence_delta,
            **c.kwargs)
        return (*_split(res, c.return_convergence_delta), self.input_axes_)


@register_method
class Saliency(AttributionMethod):
    """Saliency (captum ``Saliency``; Simonyan et al. 2014): ``|grad F(x)|``; ``abs=False`` keeps the sign.
    Attributions ``[batch, *input]``."""

    name = "saliency"
    aliases = ("gradient", "vanilla_gradient")
    uses_baselines = False

    def _chunk(self, c: Chunk) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...]]:
        import captum.attr as ca

        if c.return_convergence_delta:
            raise InputError("return_convergence_delta: saliency has no convergence delta; drop it")
        return ca.Saliency(c.forward).attribute(c.x, target=c.target, **c.kwargs), None, self.input_axes_


@register_method
class DeepLift(AttributionMethod):
    """DeepLIFT, rescale rule (captum ``DeepLift``; Shrikumar et al. 2017, "Learning Important Features
    Through Propagating Activation Differences"). Attributions ``[batch, *input]``; captum's per-module
    bookkeeping attributes are removed after the call."""

    name = "deeplift"
    aliases = ("deep_lift",)

    def _chunk(self, c: Chunk) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...]]:
        import captum.attr as ca

        with warnings.catch_warnings():  # captum announces the hooks it sets; we remove what it leaves
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks and attributes")
            res = ca.DeepLift(c.forward).attribute(c.x, baselines=c.baselines, target=c.target,
                                                   return_convergence_delta=c.return_convergence_delta, **c.kwargs)
        return (*_split(res, c.return_convergence_delta), self.input_axes_)


@register_method
class GradientShap(AttributionMethod):
    """GradientSHAP (captum ``GradientShap``; Lundberg & Lee 2017): expected gradients over baselines drawn
    from ``baselines`` (a distribution ``[k, *input]``, default one all-zero baseline) and Gaussian noise
    (``n_samples``, ``stdevs``). Stochastic: ``seed`` fixes the draws of each chunk, taken from a private fork
    of the global generators (so results equal captum's under the same global seeds when the batch is one
    chunk, and the caller's random state is unchanged)."""

    name = "gradient_shap"
    aliases = ("gradientshap", "shap")

    def _slice_baselines(self, baselines: Any, i: int, j: int, n: int) -> Any:
        return baselines  # a distribution to draw from, not one baseline per example

    def _chunk(self, c: Chunk) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...]]:
        import captum.attr as ca

        bl = torch.zeros_like(c.x[:1]) if c.baselines is None else c.baselines
        with private_rng(c.seed, c.x.device):
            res = ca.GradientShap(c.forward).attribute(c.x, baselines=bl, target=c.target,
                                                       return_convergence_delta=c.return_convergence_delta,
                                                       **c.kwargs)
        return (*_split(res, c.return_convergence_delta), self.input_axes_)


# ------------------------------------------------------------------------------------------------ layers
@contextlib.contextmanager
def inplace_safe(module: nn.Module) -> Iterator[None]:
    """Let in-place operations follow a layer that captum replaces.

    captum's layer hooks return, as the layer's output, a leaf tensor that requires grad; an in-place op on it
    right after (ResNet's ``ReLU(inplace=True)`` after a BatchNorm, ``out += identity``) then fails with "a
    leaf Variable that requires grad is being used in an in-place operation". A pre-hook appends, at each
    call, a one-shot forward hook that runs after captum's and hands on a copy (same values, same gradient).
    """
    pending: list[Any] = []

    def pre(mod: nn.Module, args: tuple) -> None:
        def post(mod: nn.Module, args: tuple, out: Any) -> Any:
            handle.remove()
            if isinstance(out, torch.Tensor) and out.is_leaf and out.requires_grad:
                return out.clone()
            return None
        handle = mod.register_forward_hook(post)
        pending.append(handle)

    first = module.register_forward_pre_hook(pre)
    try:
        yield
    finally:
        first.remove()
        for h in pending:
            h.remove()


def _captum_layer(hm: HookedModel, site: Site, method: str) -> tuple[nn.Module, bool]:
    if site.kind == "virtual" or site.call_index is not None or site.read is not None:
        why = ("a virtual site" if site.kind == "virtual" else
               "one call of a module that runs several times" if site.call_index is not None else
               "a site that reads a part of its module's output")
        raise InputError(f"site '{site.name}' is {why}; captum's {method} hooks whole modules. Use "
                         f"method='layer_integrated_gradients' or 'layer_gradcam' (computed with the core's "
                         f"hooks for such sites), or a plain module site")
    return hm._modules[site.module_path], site.kind == "input"


def _needs_hooks(site: Site) -> bool:
    return site.kind == "virtual" or site.call_index is not None or site.read is not None


@register_method
class LayerIntegratedGradients(AttributionMethod):
    """Layer integrated gradients (captum ``LayerIntegratedGradients``): integrated gradients with respect to
    the site's activation, along the straight path from its value on the baselines ``a'`` to its value on the
    inputs ``a``: ``(a - a') * integral_0^1 dF/da (a' + t (a - a')) dt``. Attributions have the site's shape
    and axes. Module sites use captum (``backend="captum"``); virtual sites, per-call sites of reused modules
    and ``backend="hooks"`` use the core's hooks (the same quadrature). In-place operations after the site
    (ResNet's BatchNorm -> ``ReLU(inplace=True)``) work with both."""

    name = "layer_integrated_gradients"
    aliases = ("lig", "layerintegratedgradients")
    layer = True
    path = True
    backends = ("captum", "hooks")

    def _backend_used(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "hooks" if _needs_hooks(self.hm.sites[self.site]) else "captum"

    def _chunk(self, c: Chunk) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...]]:
        import captum.attr as ca

        site = self.site_obj
        if self._backend_used() == "hooks":
            if c.return_convergence_delta:
                raise InputError("return_convergence_delta: not available with the hooks backend; use a module "
                                 "site with backend='captum'")
            extra = set(c.kwargs) - {"method"}
            if extra:
                raise InputError(f"{sorted(extra)}: not taken by layer integrated gradients on the hooks backend "
                                 f"(only method=, the quadrature rule)")
            attr = _lig_hooks(self.hm, site, c, c.kwargs.get("method", "gausslegendre"))
            return attr, None, site.axes
        layer, to_input = _captum_layer(self.hm, site, self.name)
        with inplace_safe(layer):
            res = ca.LayerIntegratedGradients(c.forward, layer).attribute(
                c.x, baselines=c.baselines, target=c.target, n_steps=c.n_steps,
                internal_batch_size=c.internal_batch_size, return_convergence_delta=c.return_convergence_delta,
                attribute_to_layer_input=to_input, **c.kwargs)
        return (*_split(res, c.return_convergence_delta), site.axes)


@register_method
class LayerConductance(AttributionMethod):
    """Layer conductance (captum ``LayerConductance``; Dhamdhere et al. 2018, "How Important Is a Neuron?"):
    the flow of integrated gradients through each unit of the site. Module sites only; attributions have the
    site's shape and axes."""

    name = "layer_conductance"
    aliases = ("conductance", "layerconductance")
    layer = True
    path = True

    def _chunk(self, c: Chunk) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...]]:
        import captum.attr as ca

        layer, to_input = _captum_layer(self.hm, self.site_obj, self.name)
        with inplace_safe(layer):
            res = ca.LayerConductance(c.forward, layer).attribute(
                c.x, baselines=c.baselines, target=c.target, n_steps=c.n_steps,
                internal_batch_size=c.internal_batch_size, return_convergence_delta=c.return_convergence_delta,
                attribute_to_layer_input=to_input, **c.kwargs)
        return (*_split(res, c.return_convergence_delta), self.site_obj.axes)


def _lig_hooks(hm: HookedModel, site: Site, c: Chunk, rule: str) -> torch.Tensor:
    """Layer integrated gradients through the core's hooks (works for virtual sites too).

    The site's activation is replaced by ``a' + alpha (a - a')`` for each quadrature point ``alpha`` of
    captum's rule, and the weighted gradients of the metric are summed: captum's computation.
    """
    from captum.attr._utils.approximation_methods import approximation_parameters

    step_sizes_fn, alphas_fn = approximation_parameters(rule)
    step_sizes, alphas = step_sizes_fn(c.n_steps), alphas_fn(c.n_steps)
    x = c.x
    b = x.shape[0]
    bl = c.baselines
    if bl is None:
        base = torch.zeros_like(x)
    elif isinstance(bl, torch.Tensor) and bl.shape == x.shape:
        base = bl
    else:
        try:
            base = torch.as_tensor(bl, dtype=x.dtype, device=x.device).expand_as(x)
        except RuntimeError:
            raise InputError(f"baselines: shape {tuple(torch.as_tensor(bl).shape)} does not broadcast to the "
                             f"inputs {tuple(x.shape)}") from None
    with torch.no_grad():
        _, c_in = hm.run_with_cache(x, sites=[site.name])
        _, c_base = hm.run_with_cache(base, sites=[site.name])
    a, a0 = c_in[site.name], c_base[site.name]
    bdim = site.axes.index("batch")
    per_chunk = max(1, c.internal_batch_size // b)
    total = torch.zeros_like(a)
    for s in range(0, c.n_steps, per_chunk):
        steps = list(range(s, min(c.n_steps, s + per_chunk)))
        scaled = torch.cat([a0 + alphas[k] * (a - a0) for k in steps], dim=bdim).requires_grad_(True)
        xs = torch.cat([x] * len(steps), dim=0)

        def replace(act: torch.Tensor, scaled: torch.Tensor = scaled) -> torch.Tensor:
            return scaled.clone()  # a non-leaf copy: in-place ops after the site must not touch the leaf

        with hm.hooks({site.name: replace}):
            out = hm._run(xs)
        rows = len(steps) * b
        score = sum(c.metric(rows_of(out, k * b, (k + 1) * b, rows)).sum() for k in range(len(steps)))
        grad, = torch.autograd.grad(score, scaled)
        for k, step in enumerate(steps):
            total += step_sizes[step] * grad.narrow(bdim, k * b, b)
    return (total * (a - a0)).detach()
