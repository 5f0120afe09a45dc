"""Environments with ground-truth world state (``rl.envs``).

Every env built here records, in the ``info`` of ``reset`` and ``step``, the true world state as named typed
variables (``info["world"]``) and whether the current observation shows each one
(``info["world_visible"]``); see :mod:`rl.envs.base`.

>>> env = make("MiniGrid-DoorKey-5x5-v0")
>>> obs, info = env.reset(seed=0)
>>> info["world"]["dist_to_goal"], info["world_visible"]["dist_to_goal"]

Supported ids: ``CartPole-v1`` (:class:`CartPoleWorld`), any MiniGrid id such as ``MiniGrid-Empty-5x5-v0``,
``MiniGrid-DoorKey-5x5-v0``, ``MiniGrid-DoorKey-8x8-v0``, ``MiniGrid-MemoryS7-v0`` (:class:`MiniGridWorld`,
image observation via ``ImgObsWrapper``; the Memory envs record the cue and the matching side instead of a
goal), and ``TMaze-v0`` (:class:`TMazeEnv` + :class:`TMazeWorld`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from interp_core.errors import InputError

from .base import Variable, WorldWrapper, find_world_wrapper
from .cartpole import CartPoleWorld
from .gridworld import MiniGridWorld, bfs_distance, visible_cells
from .tmaze import TMazeEnv, TMazeWorld

__all__ = ["Variable", "WorldWrapper", "find_world_wrapper", "CartPoleWorld", "MiniGridWorld", "TMazeEnv",
           "TMazeWorld", "bfs_distance", "visible_cells", "make", "ENV_IDS"]

ENV_IDS = ("CartPole-v1", "MiniGrid-Empty-5x5-v0", "MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-8x8-v0",
           "MiniGrid-MemoryS7-v0", "TMaze-v0")


def make(env_id: str, image_only: bool = True, **kwargs: Any) -> WorldWrapper:
    """Build ``env_id`` wrapped so that it records its world state.

    Args:
        env_id: ``CartPole-v1``, a ``MiniGrid-*`` id, or ``TMaze-v0``.
        image_only: MiniGrid only: observe only the egocentric image (``ImgObsWrapper``), as the zoo agents
            do; ``False`` keeps MiniGrid's dict observation (then ``agent_dir`` counts as visible).
        **kwargs: passed to the env constructor (e.g. ``corridor_length=4`` for the T-maze,
            ``max_steps=...`` for MiniGrid).
    """
    if env_id == "TMaze-v0":
        return TMazeWorld(TMazeEnv(**kwargs))
    if env_id.startswith("MiniGrid-"):
        try:
            import minigrid  # noqa: F401  (registers the MiniGrid ids)
            from minigrid.wrappers import ImgObsWrapper
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("MiniGrid envs need the 'minigrid' package: pip install 'interp-suite[rl]'") from e
        env = gym.make(env_id, **kwargs)
        return MiniGridWorld(ImgObsWrapper(env) if image_only else env)
    if env_id.startswith("CartPole"):
        return CartPoleWorld(gym.make(env_id, **kwargs))
    raise InputError(f"no world-state recorder for {env_id!r}; supported: {', '.join(ENV_IDS)} "
                     "(any MiniGrid-* id works); or wrap your env in a WorldWrapper subclass")
