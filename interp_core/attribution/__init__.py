"""Attribution: one interface over captum for input and layer attributions of any hooked model.

Each method is one small class, registered by name, with captum's shape::

    IntegratedGradients(model).attribute(inputs, target=3)
    LayerGradCam(model, site="layer4.1").attribute(images, metric=logit_diff(3, 5))

and ``attribute(model, inputs, method="integrated_gradients", site=None, target=/metric=, ...)`` builds the
class from its name (an unknown name lists the closest ones) and calls it. Every result is an
:class:`AttributionResult` whose tensor carries axis roles (``batch``, ``pos``, ``head``, ``feature``): the
input's axes for input methods (a policy's channels-last observations are labelled from its ``obs`` site,
see :func:`~interp_core.attribution.base.input_axes`), the site's axes for layer methods.

Methods (captum class, paper):

- ``"integrated_gradients"`` — ``IntegratedGradients``; Sundararajan et al. 2017, "Axiomatic Attribution for
  Deep Networks": ``(x - x') * integral_0^1 grad F(x' + a (x - x')) da`` (Gauss-Legendre quadrature).
- ``"saliency"`` — ``Saliency``; Simonyan et al. 2014: ``|grad F(x)|`` (``abs=False`` keeps the sign).
- ``"deeplift"`` — ``DeepLift`` (rescale rule); Shrikumar et al. 2017.
- ``"gradient_shap"`` — ``GradientShap``; Lundberg & Lee 2017: expected gradients over random baselines from
  ``baselines`` and noisy inputs (stochastic: ``seed`` fixes the draws; the caller's global generators are
  never reseeded).
- ``"layer_integrated_gradients"`` — ``LayerIntegratedGradients``: IG with respect to the site's activation,
  from its value on the baselines to its value on the inputs (captum, or the core's hooks for virtual and
  per-call sites; in-place operations after the site work with both).
- ``"layer_conductance"`` — ``LayerConductance``; Dhamdhere et al. 2018, "How Important Is a Neuron?".
- ``"layer_gradcam"`` — Grad-CAM (Selvaraju et al. 2017) on any site with a position selection
  (:class:`LayerGradCam`): ``sum_c mean_{p in P}(dF/dA_{p,c}) A_c`` over channels ``c``, by default over the
  unnamed positions ``P`` (a CNN block's cells; a ViT's patch tokens, CLS excluded). ``vision``'s Grad-CAM
  maps are this map placed on the patch grid.

What is attributed: ``target`` (an output index per example, as in captum; the logits are found in a
policy's tuple output) or ``metric(output) -> Tensor[batch]`` (a logit difference, an action log-prob, a
value), by the one rule of :func:`~interp_core.metrics.as_metric`. Everything runs in ``hm.analysis()`` with
gradients on, so frozen models and ``torch.no_grad()`` blocks work; no attribute is left on any module.

Memory stays bounded: inputs are processed ``batch_size`` examples at a time, and path methods pass
``internal_batch_size`` (rows per forward, steps included) to captum. The numbers are the same as calling
captum directly on the whole batch (tested to 1e-6).
"""

from __future__ import annotations

from typing import Any

from .base import AttributionMethod, input_axes, method_class, register_method, registered_methods
from .gradcam import LayerGradCam, select_positions
from .methods import (
    DeepLift,
    GradientShap,
    IntegratedGradients,
    LayerConductance,
    LayerIntegratedGradients,
    Saliency,
)
from .result import AttributionResult

__all__ = ["attribute", "AttributionResult", "AttributionMethod", "register_method", "method_class",
           "registered_methods", "input_axes", "select_positions", "IntegratedGradients", "Saliency", "DeepLift",
           "GradientShap", "LayerIntegratedGradients", "LayerConductance", "LayerGradCam", "INPUT_METHODS",
           "LAYER_METHODS", "PATH_METHODS", "integrated_gradients", "saliency", "deeplift", "gradient_shap",
           "layer_integrated_gradients", "layer_conductance", "layer_gradcam"]

INPUT_METHODS = ("integrated_gradients", "saliency", "deeplift", "gradient_shap")
LAYER_METHODS = ("layer_integrated_gradients", "layer_conductance", "layer_gradcam")
PATH_METHODS = ("integrated_gradients", "layer_integrated_gradients", "layer_conductance")


def attribute(model: Any, inputs: Any, method: str | type[AttributionMethod] = "integrated_gradients",
              site: str | None = None, target: Any = None, metric: Any = None, *, backend: str = "auto",
              **kwargs: Any) -> AttributionResult:
    """``method_class(method)(model, site, backend).attribute(inputs, target=target, metric=metric, **kwargs)``.

    Args:
        model: a :class:`~interp_core.HookedModel` or an ``nn.Module`` (adapted by the registry).
        inputs: ``[batch, ...]`` inputs (a tensor, array, ``(x, y)`` pair, Dataset or DataLoader).
        method: a registered name (:func:`registered_methods`; aliases such as ``"ig"``, ``"gradcam"`` and
            captum's class names work) or an :class:`AttributionMethod` subclass.
        site: the site for layer methods.
        target: output index (int, or one per example) as in captum; or ``metric``.
        metric: ``metric(output) -> Tensor[batch]`` (:mod:`interp_core.metrics`); replaces ``target``.
        backend: ``"auto"``, ``"captum"`` or ``"hooks"`` (layer integrated gradients and Grad-CAM).
        **kwargs: :meth:`AttributionMethod.attribute`'s settings (``baselines``, ``n_steps``, ``batch_size``,
            ``internal_batch_size``, ``seed``, ``return_convergence_delta``, ``input_axes``, ``positions``,
            ``progress``, ``train``) and the captum method's own (``abs=False``, ``n_samples``, ``stdevs``,
            ``relu_attributions``).
    """
    cls = method_class(method)
    return cls(model, site=site, backend=backend).attribute(inputs, target=target, metric=metric, **kwargs)


def integrated_gradients(model: Any, inputs: Any, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="integrated_gradients"``."""
    return attribute(model, inputs, "integrated_gradients", **kwargs)


def saliency(model: Any, inputs: Any, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="saliency"``."""
    return attribute(model, inputs, "saliency", **kwargs)


def deeplift(model: Any, inputs: Any, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="deeplift"``."""
    return attribute(model, inputs, "deeplift", **kwargs)


def gradient_shap(model: Any, inputs: Any, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="gradient_shap"``."""
    return attribute(model, inputs, "gradient_shap", **kwargs)


def layer_integrated_gradients(model: Any, inputs: Any, site: str, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="layer_integrated_gradients"``."""
    return attribute(model, inputs, "layer_integrated_gradients", site=site, **kwargs)


def layer_conductance(model: Any, inputs: Any, site: str, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="layer_conductance"``."""
    return attribute(model, inputs, "layer_conductance", site=site, **kwargs)


def layer_gradcam(model: Any, inputs: Any, site: str, **kwargs: Any) -> AttributionResult:
    """:func:`attribute` with ``method="layer_gradcam"``."""
    return attribute(model, inputs, "layer_gradcam", site=site, **kwargs)



