"""Architectures and recipes of the model zoo: small enough to train in a minute on one CPU thread.

- :class:`SmallResNet` — a torchvision-style ResNet in miniature: ``stem`` (conv-bn-relu), ``layer1``,
  ``layer2`` (each a ``Sequential`` of :class:`BasicBlock`), ``avgpool``, ``flatten``, ``fc``. Unlike
  torchvision's block, each ReLU is its own module (``relu1``, ``relu2``), so every activation is a
  distinct site (``layer1.0.relu1``) with no per-call suffixes.
- ``digits-vit`` — timm's :class:`~timm.models.vision_transformer.VisionTransformer` itself, at a tiny size,
  so the vision adapter's canonical ViT sites (``blocks.{i}.attn.z`` ...) apply unchanged.

:data:`RECIPES` maps a zoo family name (``digits-cnn``, ``digits-vit``, ``shapes-cnn-shortcut``) to its
:class:`Recipe`: architecture, data and training hyper-parameters. Nothing here trains or reads files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["BasicBlock", "SmallResNet", "Recipe", "RECIPES", "build", "tiny_vit", "checkpoint_paths"]

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
DEFAULT_SEEDS = {"digits-cnn": (0, 1, 2), "digits-vit": (0, 1, 2), "shapes-cnn-shortcut": (0,)}


def checkpoint_paths(family: str, seed: int, directory: Path | None = None) -> tuple[Path, Path]:
    """``(weights .safetensors, card .json)`` of ``family@seed{seed}``."""
    d = Path(directory) if directory is not None else CHECKPOINT_DIR
    stem = f"{family}-seed{seed}"
    return d / f"{stem}.safetensors", d / f"{stem}.json"


class BasicBlock(nn.Module):
    """``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))`` — the ResNet basic block (He et al., 2016)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A two-stage ResNet: ``[B, in_chans, H, W]`` → logits ``[B, num_classes]``.

    Sites (module paths): ``stem`` ``[B, w0, H, W]``; ``layer1`` ``[B, w0, H/s1, W/s1]``; ``layer2``
    ``[B, w1, H/(s1 s2), W/(s1 s2)]``; ``avgpool``; ``fc`` (logits).
    """

    def __init__(self, in_chans: int = 1, num_classes: int = 10, widths: tuple[int, int] = (16, 32),
                 strides: tuple[int, int] = (1, 2)):
        super().__init__()
        w0, w1 = widths
        self.stem = nn.Sequential(nn.Conv2d(in_chans, w0, 3, padding=1, bias=False), nn.BatchNorm2d(w0),
                                  nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(w0, w0, strides[0]))
        self.layer2 = nn.Sequential(BasicBlock(w0, w1, strides[1]))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w1, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.layer1(self.stem(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.avgpool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def tiny_vit(img_size: int = 8, patch_size: int = 2, in_chans: int = 1, num_classes: int = 10,
             embed_dim: int = 48, depth: int = 3, num_heads: int = 3, mlp_ratio: float = 2.0) -> nn.Module:
    """A timm ``VisionTransformer`` with a CLS token, learned position embeddings and token pooling."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                             num_classes=num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                             mlp_ratio=mlp_ratio, global_pool="token", class_token=True)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"SmallResNet": SmallResNet, "tiny_vit": tiny_vit}


@dataclass(frozen=True)
class Recipe:
    """How a zoo family is built and trained.

    ``data`` names the dataset (``kind`` = ``"digits"`` or ``"shapes"``) and its arguments for the train and
    test sets; ``arch`` / ``arch_kwargs`` name the constructor in :data:`ARCHITECTURES`.
    """

    name: str
    arch: str
    arch_kwargs: dict[str, Any]
    data: dict[str, Any]
    epochs: int
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    augment_shift: int = 0  # random translation by up to this many pixels (zero fill), train only
    label_smoothing: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES: dict[str, Recipe] = {
    "digits-cnn": Recipe(
        name="digits-cnn", arch="SmallResNet",
        arch_kwargs={"in_chans": 1, "num_classes": 10, "widths": (16, 32), "strides": (1, 2)},
        data={"kind": "digits", "size": 8}, epochs=30, batch_size=64, lr=3e-3, weight_decay=1e-4,
        augment_shift=1),
    "digits-vit": Recipe(
        name="digits-vit", arch="tiny_vit",
        arch_kwargs={"img_size": 8, "patch_size": 2, "in_chans": 1, "num_classes": 10, "embed_dim": 64,
                     "depth": 3, "num_heads": 4, "mlp_ratio": 2.0},
        data={"kind": "digits", "size": 8}, epochs=150, batch_size=64, lr=2e-3, weight_decay=0.05,
        augment_shift=1, label_smoothing=0.1),
    "shapes-cnn-shortcut": Recipe(
        name="shapes-cnn-shortcut", arch="SmallResNet",
        arch_kwargs={"in_chans": 3, "num_classes": 3, "widths": (16, 32), "strides": (2, 2)},
        data={"kind": "shapes", "image_size": 32,
              "train": {"n": 3000, "seed": 0, "shortcut": 1.0},
              "test": {"n": 600, "seed": 100, "shortcut": 1.0},
              "test_uninformative": {"n": 600, "seed": 101, "shortcut": 0.5}},
        epochs=8, batch_size=64, lr=3e-3, weight_decay=1e-4),
}


def build(recipe: Recipe) -> nn.Module:
    """A freshly initialised model of the recipe's architecture (uses the global torch RNG)."""
    kwargs = dict(recipe.arch_kwargs)
    if "widths" in kwargs:
        kwargs["widths"] = tuple(kwargs["widths"])
    if "strides" in kwargs:
        kwargs["strides"] = tuple(kwargs["strides"])
    return ARCHITECTURES[recipe.arch](**kwargs)
