"""Loading image classifiers from timm / torchvision and wrapping them with the right adapter.

>>> vit = vision.load("timm:vit_tiny_patch16_224", img_size=32)       # random init, a HookedModel
>>> net = vision.load("torchvision:resnet18", weights="resnet18.safetensors")
>>> hm = vision.wrap(my_model)                                        # ViT or CNN adapter, chosen by type

Weights: random initialisation by default; ``weights=PATH`` loads a local safetensors file or a torch
checkpoint (read with ``torch.load(..., weights_only=True)``; a ``{"state_dict": ...}`` or ``{"model": ...}``
wrapper is unwrapped); ``pretrained=True`` asks timm / torchvision for their published weights (network).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from interp_core import HookedModel
from interp_core.errors import InputError, InputTypeError

from .cnn import CNNAdapter, first_conv
from .vit import ViTAdapter, is_vit

__all__ = ["load", "wrap", "claim", "adapter_for", "default_input_size", "build"]

log = logging.getLogger(__name__)
SOURCES = ("timm", "torchvision")


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` the model expects: its patch embedding's image size (ViTs), timm's
    ``pretrained_cfg["input_size"]``, else 224x224; ``C`` from the first convolution when there is one."""
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    c, h, w = tuple(cfg.get("input_size", (3, 224, 224)))
    if size is not None:
        h, w = int(size[0]), int(size[1])
    conv = first_conv(model)
    if conv is not None:
        c = conv.in_channels
    return int(c), int(h), int(w)


def adapter_for(model: nn.Module, example_input: Any = None) -> ViTAdapter | CNNAdapter:
    """The ViT adapter for timm's VisionTransformer family (and models built from timm's ``Block`` /
    ``Attention``), the CNN adapter otherwise."""
    return ViTAdapter(example_input) if is_vit(model) else CNNAdapter(example_input)


def claim(model: Any) -> ViTAdapter | CNNAdapter | None:
    """The ``interp_suite.adapters`` entry point: the ViT adapter (priority 10) for timm's VisionTransformer
    family, the CNN adapter (priority 5) for models with a 2-d convolution; ``None`` for anything else, which
    then gets the generic adapter. ``HookedModel(model)`` and :func:`wrap` therefore give the same sites."""
    if not isinstance(model, nn.Module):
        return None
    if is_vit(model):
        adapter: ViTAdapter | CNNAdapter = ViTAdapter()
        adapter.priority = 10
        return adapter
    if first_conv(model) is not None:
        adapter = CNNAdapter()
        adapter.priority = 5
        return adapter
    return None


def wrap(model: nn.Module, example_input: Any = None) -> HookedModel:
    """``HookedModel(model, adapter=...)`` with the adapter chosen by :func:`adapter_for`.

    ``example_input`` (default: zeros at :func:`default_input_size`) is used for the one trace that
    finds shapes and reused modules. The model is neither copied nor changed.
    """
    if isinstance(model, HookedModel):
        if example_input is None:
            example_input = model.adapter.example_input(model.model)
        model = model.model
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"vision.wrap takes an nn.Module, got {type(model).__name__}")
    adapter = adapter_for(model, example_input)
    if example_input is not None:
        return HookedModel(model, adapter=adapter)
    try:
        return HookedModel(model, adapter=adapter)
    except (RuntimeError, ValueError, TypeError) as e:
        # the guessed input does not fit this model: trace on the first real input instead
        log.info("default example input does not fit %s (%s); tracing on first use", type(model).__name__, e)
        adapter.trace_lazily = True
        return HookedModel(model, adapter=adapter)


def _names(source: str) -> list[str]:
    if source == "timm":
        import timm

        return list(timm.list_models())
    import torchvision

    return list(torchvision.models.list_models())


def _parse(name: str) -> tuple[str, str]:
    if not isinstance(name, str) or ":" not in name:
        raise InputError(f"model name {name!r} must be 'timm:NAME' or 'torchvision:NAME', e.g. "
                         f"'timm:vit_tiny_patch16_224' or 'torchvision:resnet18'")
    source, arch = name.split(":", 1)
    if source not in SOURCES:
        close = difflib.get_close_matches(source, SOURCES, n=1)
        raise InputError(f"unknown model source {source!r} in {name!r}; use one of {SOURCES}"
                         + (f" (did you mean '{close[0]}:{arch}'?)" if close else ""))
    known = _names(source)
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        hint = ", ".join(f"'{source}:{c}'" for c in close) if close else "none"
        raise InputError(f"unknown {source} model {arch!r}; closest: {hint} ({source} lists {len(known)} "
                         f"models)")
    return source, arch


def build(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The bare ``nn.Module`` for ``"timm:NAME"`` / ``"torchvision:NAME"`` (random init unless ``pretrained``)."""
    source, arch = _parse(name)
    if source == "timm":
        import timm

        return timm.create_model(arch, pretrained=pretrained, **kwargs)
    import torchvision

    if pretrained:
        kwargs.setdefault("weights", "DEFAULT")
    return torchvision.models.get_model(arch, **kwargs)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{str(path)!r} does not hold a state dict (name -> tensor); save one with "
                         f"torch.save(model.state_dict(), path) or safetensors.torch.save_file")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load(name: str, weights: str | Path | None = None, pretrained: bool = False, example_input: Any = None,
         **kwargs: Any) -> HookedModel:
    """Create a timm / torchvision classifier, load weights if given, and wrap it (eval mode).

    Args:
        name: ``"timm:NAME"`` or ``"torchvision:NAME"``; unknown names raise an error listing close names.
        weights: a local ``.safetensors`` file or torch checkpoint with the model's state dict (strict).
        pretrained: download the library's published weights (``timm.create_model(pretrained=True)`` /
            torchvision ``weights="DEFAULT"``); needs network access.
        example_input: input for the shape trace (default: zeros at the model's input size).
        **kwargs: passed to the constructor (``img_size=32``, ``num_classes=10``, ``in_chans=1``, ...).
    """
    if weights is not None and pretrained:
        raise InputError("give either weights=PATH or pretrained=True, not both")
    model = build(name, pretrained=pretrained, **kwargs)
    if weights is not None:
        state = _read_state_dict(Path(weights))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise InputError(f"weights {str(weights)!r} do not fit {name} built with {kwargs or 'defaults'}: "
                             f"{e}. Pass the same constructor arguments (num_classes=, img_size=, ...) the "
                             f"weights were trained with") from e
    model.eval()
    return wrap(model, example_input=example_input)
