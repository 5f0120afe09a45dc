"""A small T-maze memory task in gymnasium's API.

The agent starts at the bottom of a corridor where a cue (left or right) is shown **only at the first
step**. It then walks ``corridor_length`` cells in which the observation carries no cue, and reaches a
junction where it must turn: turning towards the cued side gives ``+1`` and ends the episode, the other side
gives ``-1`` and ends it. Solving it above chance requires carrying the cue in memory across the corridor
(Bakker 2001, "Reinforcement learning with long short-term memory", NeurIPS, simplified).

Layout and timing, for a corridor of length ``L``:

======== =========================== =================================
step t   position                    observation ``[cue_l, cue_r, corridor, junction]``
======== =========================== =================================
0        0 (start)                   ``[1,0,0,0]`` (cue left) or ``[0,1,0,0]`` (cue right)
1 .. L   1 .. L (corridor)           ``[0,0,1,0]``
L + 1    L + 1 (junction)            ``[0,0,0,1]``
======== =========================== =================================

With ``distractors=n`` the observation has ``n`` more entries, fresh random bits (0 or 1 with equal
probability) at every step: noise the agent must learn to ignore while it holds the cue, and which washes the
cue out of an untrained recurrent net's state over the corridor.

Actions are ``0`` (left) and ``1`` (right). Before the junction every action moves the agent one cell
forward (the choice only matters at the junction), so an episode lasts ``L + 2`` steps. ``L`` is drawn per
episode from ``corridor_length`` (an int or an inclusive ``(low, high)`` range), so the agent cannot solve
the task by counting steps alone.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from interp_core.errors import InputError, InputTypeError

from .base import Variable, WorldWrapper
from .registry import EnvSpec

CUES = ("left", "right")


class TMazeEnv(gym.Env):
    """The T-maze memory task (see the module docstring).

    Args:
        corridor_length: number of cue-less corridor cells, an int or an inclusive ``(low, high)`` range
            drawn per episode.
        distractors: number of random-bit observation entries added at every step.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, corridor_length: int | tuple[int, int] = (3, 6), distractors: int = 0):
        lo, hi = (corridor_length, corridor_length) if isinstance(corridor_length, int) else corridor_length
        if not (1 <= lo <= hi):
            raise InputError(f"corridor_length must be >= 1 (an int or a (low, high) range), got {corridor_length}")
        self.length_range = (int(lo), int(hi))
        if distractors < 0:
            raise InputError(f"distractors must be >= 0, got {distractors}")
        self.distractors = int(distractors)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(4 + self.distractors,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.cue = 0
        self.length = lo
        self.position = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(4 + self.distractors, dtype=np.float32)
        if self.distractors:
            obs[4:] = self.np_random.integers(0, 2, size=self.distractors)
        if self.position == 0:
            obs[self.cue] = 1.0
        elif self.position <= self.length:
            obs[2] = 1.0
        else:
            obs[3] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(2))
        lo, hi = self.length_range
        self.length = int(self.np_random.integers(lo, hi + 1))
        if options and "cue" in options:
            self.cue = int(options["cue"])
        if options and "corridor_length" in options:
            self.length = int(options["corridor_length"])
        self.position = 0
        return self._obs(), {}

    def step(self, action: Any):
        action = int(action)
        if not self.action_space.contains(action):
            raise InputError(f"T-maze actions are 0 (left) and 1 (right), got {action}")
        if self.position <= self.length:
            self.position += 1
            return self._obs(), 0.0, False, False, {}
        success = action == self.cue
        return self._obs(), (1.0 if success else -1.0), True, False, {"success": success, "turn": action}

    @property
    def at_junction(self) -> bool:
        return self.position == self.length + 1


class TMazeWorld(WorldWrapper):
    """Records the T-maze's state.

    ============== =========== ==========================================================
    name           kind        meaning; visible when ...
    ============== =========== ==========================================================
    cue            categorical 0 left, 1 right; ... at the start (step 0) only
    position       ordinal     cells walked from the start; ... at the start only (the
                               corridor cells look alike and the length varies)
    at_junction    categorical 0 no, 1 yes; always visible (the junction bit)
    corridor_len   ordinal     this episode's corridor length; never visible
    ============== =========== ==========================================================
    """

    variables = (
        Variable("cue", "categorical", "side of the cue = the rewarded turn", CUES),
        Variable("position", "ordinal", "cells walked from the start"),
        Variable("at_junction", "categorical", "the agent stands at the junction", ("no", "yes")),
        Variable("corridor_len", "ordinal", "this episode's corridor length (cells)"),
    )

    def __init__(self, env: gym.Env):
        super().__init__(env)
        if not isinstance(env.unwrapped, TMazeEnv):
            raise InputTypeError(f"TMazeWorld wraps a TMazeEnv, got {type(env.unwrapped).__name__}")

    def world(self) -> tuple[dict[str, Any], dict[str, bool]]:
        u: TMazeEnv = self.env.unwrapped
        start = u.position == 0
        values = {"cue": u.cue, "position": u.position, "at_junction": int(u.at_junction),
                  "corridor_len": u.length}
        visible = {"cue": start, "position": start, "at_junction": True, "corridor_len": False}
        return values, visible


def _make(env_id: str, **kwargs: Any) -> TMazeWorld:
    return TMazeWorld(TMazeEnv(**kwargs))


SPECS = (EnvSpec("TMaze-v0", make=_make, action_names=CUES, variables=TMazeWorld.variables,
                 description="T-maze memory task (cue at the first step only)"),)
