"""Loading image classifiers from timm / torchvision and wrapping them with the right adapter.

>>> vit = vision.load("timm:vit_tiny_patch16_224", img_size=32)       # random init, a HookedModel
>>> net = vision.load("torchvision:resnet18", weights="resnet18.safetensors")
>>> hm = vision.wrap(my_model)                                        # ViT or CNN adapter, chosen by type

Weights: random initialisation by default; ``weights=PATH`` loads a local safetensors file or a torch
checkpoint (read with ``torch.load(..., weights_only=True)``; a ``{"state_dict": ...}`` or ``{"model": ...}``
wrapper is unwrapped); ``pretrained=True`` asks timm / torchvision for their published weights (network).
Every problem with the file is the suite's error naming the file: missing or unreadable (:class:`StoreError`,
an ``OSError``), not a state dict (:class:`StoreError`), or weights that do not fit the architecture
(:class:`InputError`, listing the differing tensors and the constructor argument that would fit, e.g.
``num_classes=10``).

Adapters (:func:`claim`, the ``interp_suite.adapters`` entry point): timm ViT / DeiT / EVA -> ``vit``
(:mod:`vision.vit`), timm Swin -> ``swin`` (:mod:`vision.swin`, channels-last and per-window axes), any other
model with a 2-d convolution -> ``cnn`` (:mod:`vision.cnn`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from interp_core import HookedModel
from interp_core.errors import InputError, InputTypeError, StoreError
from interp_core.specs import read_state_dict

from .cnn import CNNAdapter, first_conv
from .swin import SwinAdapter, is_swin
from .vit import ViTAdapter, is_vit

__all__ = ["load", "wrap", "claim", "adapter_for", "default_input_size", "build"]

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


def adapter_for(model: nn.Module, example_input: Any = None) -> ViTAdapter | SwinAdapter | CNNAdapter:
    """The ViT adapter for timm's VisionTransformer family and EVA (and models built from their blocks), the
    Swin adapter for timm Swin Transformers, the CNN adapter otherwise."""
    if is_swin(model):
        return SwinAdapter(example_input)
    return ViTAdapter(example_input) if is_vit(model) else CNNAdapter(example_input)


def claim(model: Any) -> ViTAdapter | SwinAdapter | CNNAdapter | None:
    """The ``interp_suite.adapters`` entry point: the ViT adapter (priority 10) for timm's VisionTransformer
    family and EVA, the Swin adapter (priority 10) for timm Swin Transformers, the CNN adapter (priority 5) for
    other models with a 2-d convolution; ``None`` for anything else, which then gets the generic adapter.
    ``HookedModel(model)`` and :func:`wrap` therefore give the same sites."""
    if not isinstance(model, nn.Module):
        return None
    from_timm = any(type(m).__module__.startswith("timm.") for m in model.modules())
    if from_timm and (is_swin(model) or is_vit(model)):  # timm is imported only for models built from it
        adapter: ViTAdapter | SwinAdapter | CNNAdapter = adapter_for(model)
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
    finds shapes and reused modules; when the guessed input does not fit the model, the first real input is
    traced instead. The model is neither copied nor changed.
    """
    if isinstance(model, HookedModel):
        if example_input is None:
            example_input = model.adapter.example_input(model.model)
        model = model.model
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model: vision.wrap takes an nn.Module, got {type(model).__name__}")
    return HookedModel(model, adapter=adapter_for(model, example_input))


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


def _mismatch_message(model: nn.Module, state: dict[str, torch.Tensor], weights: Path, name: str,
                      kwargs: dict[str, Any]) -> str:
    """What differs between ``state`` and the model's own state dict, and the constructor argument to fix it."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
              if k in state and state[k].shape != own[k].shape]
    parts = []
    if shapes:
        parts.append("shape mismatch: " + "; ".join(f"{k} is {a} in the file, {b} in the model"
                                                    for k, a, b in shapes[:4]) + (" ..." if len(shapes) > 4 else ""))
    if missing:
        parts.append(f"{len(missing)} tensors missing from the file (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors in the file (e.g. {', '.join(unexpected[:3])})")
    hints = []
    head = _classifier(model)
    for k, a, b in shapes:
        if head is not None and k.startswith(head + ".") and a[:1] != b[:1]:
            hints.append(f"num_classes={a[0]}")
            break
    conv = first_conv(model)
    if conv is not None:
        for path, m in model.named_modules():
            if m is conv:
                key = f"{path}.weight"
                if key in state and state[key].dim() == 4 and state[key].shape[1] != conv.in_channels:
                    hints.append(f"in_chans={state[key].shape[1]}")
                break
    if any(k.endswith("pos_embed") for k, _, _ in shapes):
        hints.append("the checkpoint's img_size= (and patch_size=)")
    fix = (f"Pass {' and '.join(dict.fromkeys(hints))} to vision.load" if hints else
           "Pass the constructor arguments (num_classes=, img_size=, in_chans=, ...) the weights were trained with")
    used = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "default arguments"
    return f"weights file '{weights}' does not fit {name} built with {used}: {'; '.join(parts)}. {fix}"


def _classifier(model: nn.Module) -> str | None:
    """Module path of the final classifier layer (the last Linear / 1x1 conv), if any."""
    getter = getattr(model, "get_classifier", None)
    if callable(getter):
        try:
            clf = getter()
        except Exception:  # a model whose get_classifier needs arguments
            clf = None
        for path, m in model.named_modules():
            if clf is not None and m is clf and path:
                return path
    last = None
    for path, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = path
    return last


def load(name: str, weights: str | Path | None = None, pretrained: bool = False, example_input: Any = None,
         trust_pickle: bool = False, **kwargs: Any) -> HookedModel:
    """Create a timm / torchvision classifier, load weights if given, and wrap it (eval mode).

    Args:
        name: ``"timm:NAME"`` or ``"torchvision:NAME"``; unknown names raise an error listing close names.
        weights: a local ``.safetensors`` file or torch checkpoint with the model's state dict (strict);
            problems are reported with the file's name (module docstring).
        pretrained: download the library's published weights (``timm.create_model(pretrained=True)`` /
            torchvision ``weights="DEFAULT"``); needs network access.
        example_input: input for the shape trace (default: zeros at the model's input size).
        trust_pickle: allow a weights file that holds pickled objects (a whole saved model); loading such a
            file runs code from it (:func:`interp_core.specs.read_state_dict`).
        **kwargs: passed to the constructor (``img_size=32``, ``num_classes=10``, ``in_chans=1``, ...).
    """
    if weights is not None and pretrained:
        raise InputError("weights: give either weights=PATH or pretrained=True, not both")
    path = None
    if weights is not None:
        if not isinstance(weights, (str, Path)):
            raise InputTypeError(f"weights: expected a file path (str or Path), got {type(weights).__name__}")
        path = Path(weights)
        if not path.exists():  # before building the model: a typo should not cost a model construction
            raise StoreError(f"weights file '{path}' does not exist; give the path of a .safetensors file or a "
                             f"torch checkpoint")
    model = build(name, pretrained=pretrained, **kwargs)
    if path is not None:
        state = read_state_dict(path, trust_pickle=trust_pickle)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError:
            raise InputError(_mismatch_message(model, state, path, name, kwargs)) from None
    model.eval()
    return wrap(model, example_input=example_input)
