"""Shared test fixtures: small real models of the three kinds every core method must handle."""

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("MPLBACKEND", "Agg")
# Most test models are tiny and overhead-bound: one intra-op thread is much faster than two on a shared
# 2-core machine (threads wait on each other), and results are reproducible run to run.
torch.set_num_threads(1)


class Residual(nn.Module):
    """A ResNet-style block: in-place ReLU used twice and an in-place residual add (the hard cases)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


def make_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential()
    m.add_module("stem", nn.Conv2d(3, 8, 3, padding=1))
    m.add_module("block", Residual(8))
    m.add_module("drop", nn.Dropout(0.2))
    m.add_module("pool", nn.AdaptiveAvgPool2d(1))
    m.add_module("flat", nn.Flatten())
    m.add_module("head", nn.Linear(8, 4))
    for bn in (m.block.bn1, m.block.bn2):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def make_policy(seed: int = 0, obs: int = 6, actions: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(obs, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, actions))
    return m.eval()


def make_vit(seed: int = 0, **kwargs) -> nn.Module:
    """A real timm VisionTransformer at a tiny size (16x16 RGB images, 4x4 patches: CLS + 16 tokens)."""
    import timm

    torch.manual_seed(seed)
    config = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=3) | kwargs
    return timm.models.VisionTransformer(**config).eval()


@pytest.fixture
def cnn():
    return make_cnn()


@pytest.fixture
def policy():
    return make_policy()


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures a test made are closed after it (``.plot()`` returns open figures, as matplotlib does)."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
