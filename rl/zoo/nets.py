"""Network pieces of the zoo agents (importable so checkpoints can be rebuilt)."""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class MiniGridCNN(BaseFeaturesExtractor):
    """A 3-layer CNN for MiniGrid's 7x7x3 egocentric image (SB3's NatureCNN needs >= 36x36 inputs).

    ``[batch, 3, 7, 7]`` -> conv 2x2 (16) -> ReLU -> max-pool 2x2 -> conv 2x2 (32) -> ReLU -> conv 2x2 (64)
    -> ReLU -> flatten ``[batch, 64]`` -> linear -> ReLU ``[batch, features_dim]``. The layout follows the
    standard MiniGrid actor-critic of ``rl-starter-files`` (Willems et al.). Inputs are MiniGrid's integer
    codes (object, colour, state), used unnormalised.
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 64):
        super().__init__(observation_space, features_dim)
        c = observation_space.shape[0]
        self.cnn = nn.Sequential(
            nn.Conv2d(c, 16, 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 2), nn.ReLU(),
            nn.Conv2d(32, 64, 2), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.cnn(torch.zeros(1, *observation_space.shape)).shape[1]
        self.linear = nn.Sequential(nn.Linear(n, features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(observations.float()))
