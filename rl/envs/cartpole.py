"""CartPole with its physical state recorded as world variables."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from interp_core.errors import InputTypeError

from .base import Variable, WorldWrapper
from .registry import EnvSpec


class CartPoleWorld(WorldWrapper):
    """Records CartPole's physical state: ``x``, ``x_dot``, ``theta``, ``theta_dot`` (all continuous).

    CartPole's observation *is* this state, so every variable is visible at every step; a probe that
    decodes them is a sanity check of the pipeline, never evidence of a world model.
    """

    variables = (
        Variable("x", "continuous", "cart position (m)"),
        Variable("x_dot", "continuous", "cart velocity (m/s)"),
        Variable("theta", "continuous", "pole angle from vertical (rad)"),
        Variable("theta_dot", "continuous", "pole angular velocity (rad/s)"),
    )

    def __init__(self, env: gym.Env):
        super().__init__(env)
        if not hasattr(env.unwrapped, "state") or "CartPole" not in type(env.unwrapped).__name__:
            raise InputTypeError(f"CartPoleWorld wraps a CartPole env, got {type(env.unwrapped).__name__}")

    def world(self) -> tuple[dict[str, Any], dict[str, bool]]:
        state = self.env.unwrapped.state
        values = {v.name: float(s) for v, s in zip(self.variables, state)}
        return values, {v.name: True for v in self.variables}


def _make(env_id: str, **kwargs: Any) -> CartPoleWorld:
    return CartPoleWorld(gym.make(env_id, **kwargs))


SPECS = (EnvSpec("CartPole-*", make=_make, action_names=("push_left", "push_right"),
                 variables=CartPoleWorld.variables, examples=("CartPole-v1",),
                 description="gymnasium CartPole with its physical state as world variables"),)
