"""Environments with ground-truth world state (``rl.envs``).

Every env built here records, in the ``info`` of ``reset`` and ``step``, the true world state as named typed
variables (``info["world"]``) and whether the current observation shows each one
(``info["world_visible"]``); see :mod:`rl.envs.base`.

>>> env = make("MiniGrid-DoorKey-5x5-v0")
>>> obs, info = env.reset(seed=0)
>>> info["world"]["dist_to_goal"], info["world_visible"]["dist_to_goal"]

Envs come from a registry (:mod:`rl.envs.registry`): each module listed in :data:`ENV_MODULES` declares its
:class:`EnvSpec` objects (id or id pattern, constructor, action names, world variables) in a ``SPECS`` tuple.
Built in: ``CartPole-*`` (:class:`CartPoleWorld`), any ``MiniGrid-*`` id such as ``MiniGrid-Empty-5x5-v0``,
``MiniGrid-DoorKey-5x5-v0``, ``MiniGrid-DoorKey-8x8-v0``, ``MiniGrid-MemoryS7-v0`` (:class:`MiniGridWorld`,
image observation via ``ImgObsWrapper``; the Memory envs record the cue and the matching side instead of a
goal), ``TMaze-v0`` (:class:`TMazeEnv` + :class:`TMazeWorld`) and ``MiniGrid-CueMaze-v0`` (a MiniGrid T-maze
whose cue is out of view at the decision, :mod:`rl.envs.cuemaze`). MiniGrid ids take ``pixels=TILE`` for
RGB frames of the partial view (``7 * TILE`` pixels square) instead of the integer codes. :func:`register`
adds a user's own env.

Any other gymnasium env works with :func:`rl.collect` too, without world variables or with those of a
function of the env (:class:`FunctionWorld`).
"""

from __future__ import annotations

from typing import Any

from interp_core.errors import InputError

from .base import FunctionWorld, Variable, WorldWrapper, find_world_wrapper, world_wrapper
from .cartpole import CartPoleWorld
from .cuemaze import CueMazeEnv, CueMazeWorld
from .gridworld import MiniGridWorld, bfs_distance, visible_cells
from .registry import EnvRegistry, EnvSpec
from .tmaze import TMazeEnv, TMazeWorld

__all__ = ["Variable", "WorldWrapper", "FunctionWorld", "find_world_wrapper", "world_wrapper", "CartPoleWorld",
           "MiniGridWorld", "CueMazeEnv", "CueMazeWorld", "TMazeEnv", "TMazeWorld", "bfs_distance", "visible_cells",
           "make", "ENV_IDS",
           "ENV_MODULES", "EnvSpec", "EnvRegistry", "REGISTRY", "register", "unregister", "spec", "find_spec",
           "variables", "action_names", "registered_ids", "make_any"]

#: The modules whose ``SPECS`` make the built-in registry (a new env file is added here, once).
ENV_MODULES = ("cartpole", "gridworld", "tmaze", "cuemaze")

REGISTRY = EnvRegistry(ENV_MODULES, package=__name__)

#: Concrete ids of the built-in envs (the specs' examples).
ENV_IDS = REGISTRY.examples()


def register(spec: EnvSpec, replace: bool = False) -> EnvSpec:
    """Register a user's env: ``register(EnvSpec("Toy-v0", make=..., action_names=(...)))`` (see
    :class:`EnvSpec`). Then :func:`make`, :func:`rl.collect` and agents' action names know the id."""
    return REGISTRY.register(spec, replace=replace)


def unregister(env_id: str) -> EnvSpec:
    """Remove the spec registered under exactly ``env_id`` (and return it)."""
    return REGISTRY.unregister(env_id)


def spec(env_id: str) -> EnvSpec:
    """The :class:`EnvSpec` that builds ``env_id`` (raises :class:`~interp_core.errors.InputError` if none)."""
    return REGISTRY.spec(env_id)


def find_spec(env_id: str) -> EnvSpec | None:
    """The :class:`EnvSpec` that builds ``env_id``, or ``None``."""
    return REGISTRY.find(env_id)


def registered_ids() -> list[str]:
    """The registered ids and id patterns."""
    return REGISTRY.ids()


def variables(env_id: str, **kwargs: Any) -> tuple[Variable, ...]:
    """The world variables ``env_id`` records (from its spec, or from a built env where they depend on it)."""
    return REGISTRY.variables(env_id, **kwargs)


def action_names(env_id: str | None) -> list[str] | None:
    """The action names of ``env_id``'s spec (``None`` for an unknown id or a spec without names)."""
    if env_id is None:
        return None
    found = REGISTRY.find(env_id)
    return list(found.action_names) if found is not None and found.action_names is not None else None


def make(env_id: str, **kwargs: Any) -> Any:
    """Build ``env_id`` wrapped so that it records its world state (by its registered :class:`EnvSpec`).

    Args:
        env_id: a registered id: ``CartPole-v1``, a ``MiniGrid-*`` id, ``TMaze-v0``, or one added with
            :func:`register`.
        **kwargs: passed to the spec's constructor: ``image_only=False`` for MiniGrid (keep the dict
            observation; then ``agent_dir`` counts as visible), ``corridor_length=4`` for the T-maze,
            ``max_steps=...`` for MiniGrid.
    """
    return REGISTRY.spec(env_id).make(env_id, **kwargs)


def make_any(env_id: str, **kwargs: Any) -> Any:
    """:func:`make` for a registered id; otherwise gymnasium's own ``gym.make(env_id, **kwargs)``, with no world
    variables (enough to record activations)."""
    found = REGISTRY.find(env_id)
    if found is not None:
        return found.make(env_id, **kwargs)
    import gymnasium as gym

    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as e:
        raise InputError(f"env: {env_id!r} is neither registered in rl.envs ({', '.join(REGISTRY.ids())}) nor a "
                         f"gymnasium id ({e}); register it with rl.envs.register(EnvSpec(...)) or pass an env "
                         f"instance") from None
