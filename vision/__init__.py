"""vision: the interp-suite adapter for image classifiers (timm / torchvision CNNs and ViTs).

- :func:`load` (``"timm:NAME"`` / ``"torchvision:NAME"``, random init, local weights or ``pretrained=True``)
  and :func:`wrap` (any ``nn.Module``) return an :class:`interp_core.HookedModel` with the right adapter;
- :mod:`vision.vit` — canonical ViT sites (``embed``, ``blocks.{i}.resid_pre|resid_mid|resid_post``,
  exact per-head ``blocks.{i}.attn.q|k|v|pattern|z``, ``attn.out``, ``mlp.hidden|out``, ``final_norm``,
  ``logits``); :mod:`vision.cnn` — stage/block outputs of ResNets, ConvNeXt, VGG, MobileNets, with channels
  as features and spatial cells as positions;
- :func:`logit_lens` (:mod:`vision.lens`) — the ViT logit lens (per-layer decoding through the final norm and
  head);
- :mod:`vision.attribution` — image attribution maps (captum), attention rollout, overlays, and the
  parameter-randomisation sanity check;
- :mod:`vision.data` (digits, synthetic shapes with a planted shortcut), :mod:`vision.zoo` (tiny trained
  models), :mod:`vision.featvis`, :mod:`vision.exemplars`; :mod:`vision.swin` — Swin Transformer sites
  (channels-last maps, per-window attention).

Submodules are imported lazily (``vision.zoo`` costs nothing until used).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load", "wrap", "logit_lens", "attribution", "cnn", "data", "exemplars", "featvis", "lens", "loading",
           "swin", "vit", "zoo"]

_SUBMODULES = {"attribution", "cnn", "data", "exemplars", "featvis", "lens", "loading", "swin", "vit", "zoo"}


def load(name: str, weights: Any = None, pretrained: bool = False, **kwargs: Any) -> Any:
    """See :func:`vision.loading.load`."""
    from .loading import load as _load

    return _load(name, weights=weights, pretrained=pretrained, **kwargs)


def wrap(model: Any, example_input: Any = None) -> Any:
    """See :func:`vision.loading.wrap`."""
    from .loading import wrap as _wrap

    return _wrap(model, example_input=example_input)


def logit_lens(model: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
    """The ViT logit lens; see :func:`vision.lens.logit_lens`."""
    from .lens import logit_lens as _logit_lens

    return _logit_lens(model, data, *args, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'vision' has no attribute {name!r}")
