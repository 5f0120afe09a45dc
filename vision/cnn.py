"""The CNN adapter: torchvision / timm ResNets, ConvNeXt, VGG-style nets, MobileNets and generic conv nets.

Sites: every submodule's output by module path (as with the generic adapter) plus ``logits`` (the model's
output, ``[batch, classes]``). Conv activations ``[batch, channels, h, w]`` have axes
``("batch", "feature", "pos", "pos")``: channels are features, ``(h, w)`` cells are positions, so
``Patch(src, positions=[(0, 0), (0, 1)])`` patches two cells of the top-left corner.

Default sites are the stage / block outputs:

- ResNets (torchvision, timm, and any model with ``layer1``... ``Sequential`` stages): ``layer1.0`` ...
  ``layer4.1`` (the blocks of each stage);
- ConvNeXt (timm): ``stages.{i}.blocks.{j}``;
- VGG / MobileNet / AlexNet-style (a ``features`` ``Sequential``): ``features.{i}``;
- anything else: the model's top-level children;

followed by ``logits``.

Channels-last internals: in timm's ConvNeXt block (``conv_mlp=False``) the LayerNorm and MLP run on
``[batch, h, w, channels]``; those sites get axes ``("batch", "pos", "pos", "feature")``.

Reused modules and in-place activations follow the core (:mod:`interp_core.sites`): torchvision's
``BasicBlock`` calls one ``relu`` twice, so its sites are ``layer1.0.relu#0`` and ``layer1.0.relu#1``; cached
activations are copied when the hook fires, so ``ReLU(inplace=True)`` cannot change them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from interp_core.sites import GenericAdapter, Site

__all__ = ["CNNAdapter", "block_sites"]

CONV = ("batch", "feature", "pos", "pos")
CHANNELS_LAST = ("batch", "pos", "pos", "feature")


def block_sites(model: nn.Module) -> list[str]:
    """Module paths of the stage/block outputs of ``model`` (see the module docstring)."""
    children = dict(model.named_children())
    stages = [n for n in ("layer1", "layer2", "layer3", "layer4", "layer5") if n in children]
    if stages:
        out = []
        for n in stages:
            stage = children[n]
            subs = [c for c, _ in stage.named_children()]
            out.extend(f"{n}.{c}" for c in subs) if subs else out.append(n)
        return out
    if "stages" in children:
        out = []
        for si, stage in children["stages"].named_children():
            blocks = getattr(stage, "blocks", None)
            if isinstance(blocks, nn.Module) and len(list(blocks.children())):
                out.extend(f"stages.{si}.blocks.{j}" for j, _ in blocks.named_children())
            else:
                out.append(f"stages.{si}")
        return out
    if isinstance(children.get("features"), nn.Sequential):
        return [f"features.{i}" for i, _ in children["features"].named_children()]
    return [n for n in children]


def _channels_last_paths(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Sites inside timm ConvNeXt blocks that run channels-last (``conv_mlp=False``)."""
    try:
        from timm.models.convnext import ConvNeXtBlock
    except ImportError:  # pragma: no cover - timm is a dependency
        return {}
    axes: dict[str, tuple[str, ...]] = {}
    for path, m in model.named_modules():
        if isinstance(m, ConvNeXtBlock) and not getattr(m, "use_conv_mlp", True):
            axes[f"{path}.norm"] = CHANNELS_LAST
            for sub, _ in m.mlp.named_modules():
                axes[f"{path}.mlp" + (f".{sub}" if sub else "")] = CHANNELS_LAST
    return axes


def first_conv(model: nn.Module) -> nn.Conv2d | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    return None


class CNNAdapter:
    """Every module path + ``logits``; block outputs as default sites (see the module docstring).

    Args:
        example_input: optional input for the trace; default zeros ``[1, C, H, W]`` at the model's
            pretrained input size (timm's ``pretrained_cfg["input_size"]``) or 224x224, with ``C`` the first
            convolution's input channels.
    """

    name = "cnn"

    def __init__(self, example_input: Any = None):
        self._example = example_input
        self.trace_lazily = False  # True: no guessed example input (the trace runs on the first real input)

    def sites(self, model: nn.Module) -> list[Site]:
        out = GenericAdapter(axes=_channels_last_paths(model), include_root=False).sites(model)
        out.append(Site("logits", "", axes=("batch", "feature"), description="class logits (model output)"))
        return out

    def default_sites(self, model: nn.Module) -> list[str]:
        return block_sites(model) + ["logits"]

    def example_input(self, model: nn.Module) -> Any | None:
        if self._example is not None:
            return self._example
        if self.trace_lazily:
            return None
        from .loading import default_input_size

        c, h, w = default_input_size(model)
        return torch.zeros(1, c, h, w)
