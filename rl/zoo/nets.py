"""Network pieces of the zoo agents (importable so checkpoints can be rebuilt)."""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class _ConvExtractor(BaseFeaturesExtractor):
    """``layers`` (convolutions) -> flatten -> linear -> ReLU ``[batch, features_dim]``; the flattened size is
    found by running ``layers`` once on zeros of ``in_shape`` (default: the observation shape)."""

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int, layers: list[nn.Module],
                 in_shape: tuple[int, ...] | None = None):
        super().__init__(observation_space, features_dim)
        self.cnn = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            n = self.cnn(torch.zeros(1, *(in_shape or observation_space.shape))).shape[1]
        self.linear = nn.Sequential(nn.Linear(n, features_dim), nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(observations.float()))


def _minigrid_layers(c: int) -> list[nn.Module]:
    return [nn.Conv2d(c, 16, 2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 2), nn.ReLU(),
            nn.Conv2d(32, 64, 2), nn.ReLU()]


class MiniGridCNN(_ConvExtractor):
    """A 3-layer CNN for MiniGrid's 7x7x3 egocentric image (SB3's NatureCNN needs >= 36x36 inputs).

    ``[batch, 3, 7, 7]`` -> conv 2x2 (16) -> ReLU -> max-pool 2x2 -> conv 2x2 (32) -> ReLU -> conv 2x2 (64)
    -> ReLU -> flatten ``[batch, 64]`` -> linear -> ReLU ``[batch, features_dim]``. The layout follows the
    standard MiniGrid actor-critic of ``rl-starter-files`` (Willems et al.). Inputs are MiniGrid's integer
    codes (object, colour, state), used unnormalised.
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 64):
        super().__init__(observation_space, features_dim, _minigrid_layers(observation_space.shape[0]))


class PixelCNN(_ConvExtractor):
    """A small CNN for RGB frames of MiniGrid's partial view (``RGBImgPartialObsWrapper``, e.g. 28x28 at 4
    pixels per cell); SB3's NatureCNN needs >= 36x36 inputs and is larger than this task needs.

    ``[batch, 3, H, W]`` (SB3 scales uint8 pixels to [0, 1]) -> conv 3x3 (16) -> ReLU -> max-pool 2x2 ->
    conv 3x3 (32) -> ReLU -> max-pool 2x2 -> conv 3x3 (32) -> ReLU -> flatten -> linear -> ReLU
    ``[batch, features_dim]`` (28x28: 26 -> 13 -> 11 -> 5 -> 3, so 288 flattened features).
    """

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 64):
        c = observation_space.shape[0]
        super().__init__(observation_space, features_dim, [
            nn.Conv2d(c, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3), nn.ReLU()])


class MiniGridOneHotCNN(_ConvExtractor):
    """:class:`MiniGridCNN` on one-hot MiniGrid codes: each cell's (object, colour, state) integer codes become
    ``11 + 6 + 3 = 20`` indicator channels before the same 3-layer CNN.

    On raw codes a key and a ball of the same colour differ by 1 in one input of 147 (object codes 5 and 6),
    a signal a recurrent agent takes hundreds of thousands of steps to pick up (MemoryS7); one-hot codes make
    every object type its own channel. ``[batch, 3, 7, 7]`` -> ``[batch, 20, 7, 7]`` -> conv 2x2 (16) -> ReLU ->
    max-pool 2x2 -> conv 2x2 (32) -> ReLU -> conv 2x2 (64) -> ReLU -> flatten -> linear -> ReLU
    ``[batch, features_dim]``.
    """

    SIZES = (11, 6, 3)  # MiniGrid's OBJECT_TO_IDX, COLOR_TO_IDX, STATE_TO_IDX sizes

    def __init__(self, observation_space: gym.spaces.Box, features_dim: int = 64):
        c = sum(self.SIZES)
        super().__init__(observation_space, features_dim, _minigrid_layers(c), (c, *observation_space.shape[1:]))

    def one_hot(self, observations: torch.Tensor) -> torch.Tensor:
        """``[batch, 3, h, w]`` integer codes -> ``[batch, 20, h, w]`` indicators."""
        codes = observations.round().long()
        parts = [nn.functional.one_hot(codes[:, i].clamp(0, n - 1), n).permute(0, 3, 1, 2)
                 for i, n in enumerate(self.SIZES)]
        return torch.cat(parts, 1).to(torch.float32)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(self.one_hot(observations)))
