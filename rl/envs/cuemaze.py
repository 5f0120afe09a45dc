"""A MiniGrid T-maze whose cue is out of view at the decision: ``MiniGrid-CueMaze-v0``.

MiniGrid's ``MemoryS7`` keeps its cue in view from the split, so an agent can look back at it rather than
remember it. Here the cue is shown only while the agent stands on its start cell; once the agent leaves it,
the cue's alcove becomes a wall, so **no observation after the first move shows the cue** (in particular not
the one at the junction, where the agent must turn). Solving the task above chance needs memory (the
T-maze of Bakker 2001, "Reinforcement learning with long short-term memory", NeurIPS, in a MiniGrid grid).

Layout (``L`` = corridor length, drawn per episode from ``corridor_length``; ``J = L_max + 1``)::

    row 0   # # # # # # # #
    row 1   # # c # # # U #      c: cue alcove (a key or a ball) above the start cell, at (J - L, 1)
    row 2   # # > . . . + #      >: agent at (J - L, 2) facing east; +: junction (J, 2)
    row 3   # # # # # # D #      U / D: the up / down arm ends (J, 1) / (J, 3)
    row 4   # # # # # # # #

A (yellow) key means "up", a (blue) ball means "down". Stepping onto the matching arm end gives MiniGrid's
reward ``1 - 0.9 * steps / max_steps`` and ends the episode with ``info["success"] = True``; the other arm end gives
``0`` and ends it with ``info["success"] = False``. Actions: ``0`` turn left, ``1`` turn right, ``2`` forward
(MiniGrid's first three). Observation: the egocentric ``7 x 7 x 3`` MiniGrid image (object, colour, state
codes). The shortest solution takes ``L + 2`` steps (``L`` forward, one turn, one forward). With
``distractors=True`` the corridor's side walls take fresh random colours at every step (noise in the view
that the agent must ignore while it holds the cue, and that washes the cue out of an untrained LSTM).

World variables (``info["world"]``, visibility in ``info["world_visible"]``):

================ =========== =========================================================================
name             kind        meaning; visible when ...
================ =========== =========================================================================
agent_x/_y       ordinal     agent cell; ... as in :class:`~rl.envs.MiniGridWorld` (a boundary wall of
                             that axis is in view)
agent_dir        categorical 0 right, 1 down, 2 left, 3 up; never (the image has no direction entry)
cue              categorical 0 key ("go up"), 1 ball ("go down"); ... the cue object is on the grid and its
                             cell is in the agent's visible view
match_side       categorical 0 up, 1 down: the arm to take (a function of the cue); visible like ``cue``
at_junction      categorical 0 no, 1 yes: the agent stands on the junction (the decision cell); always
                             visible (the arms open beside the agent's cell there and nowhere else)
corridor_length  ordinal     ``L`` of this episode; never (the view does not reach back to the start)
================ =========== =========================================================================

The decision step of an episode is its first step with ``at_junction == 1``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from interp_core.errors import InputError

from .base import Variable, WorldWrapper
from .gridworld import ACTIONS, visible_cells
from .registry import EnvSpec

__all__ = ["CueMazeEnv", "CueMazeWorld", "CUES", "ENV_ID"]

ENV_ID = "MiniGrid-CueMaze-v0"
CUES = ("key", "ball")
_DIRS = ("right", "down", "left", "up")


def _minigrid():
    try:
        from minigrid.core.grid import Grid
        from minigrid.core.mission import MissionSpace
        from minigrid.core.world_object import Ball, Key, Wall
        from minigrid.minigrid_env import MiniGridEnv
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("MiniGrid envs need the 'minigrid' package: pip install 'interp-suite[rl]'") from e
    return Grid, MissionSpace, Ball, Key, Wall, MiniGridEnv


def _env_class():
    Grid, MissionSpace, Ball, Key, Wall, MiniGridEnv = _minigrid()

    class CueMazeEnv(MiniGridEnv):
        """The cue maze (module docstring). ``corridor_length``: an int or an inclusive ``(low, high)`` range
        (``low >= 1``); ``max_steps`` defaults to ``4 * (L_max + 2)``."""

        def __init__(self, corridor_length: int | tuple[int, int] = (2, 5), max_steps: int | None = None,
                     distractors: bool = False, **kwargs: Any):
            if isinstance(corridor_length, (int, np.integer)):
                lo = hi = int(corridor_length)
            else:
                try:
                    lo, hi = (int(v) for v in corridor_length)
                except (TypeError, ValueError):
                    raise InputError(f"corridor_length: an int or a (low, high) pair, got {corridor_length!r}") \
                        from None
            if not 1 <= lo <= hi:
                raise InputError(f"corridor_length: needs 1 <= low <= high, got {corridor_length!r}")
            self.length_range = (lo, hi)
            self.distractors = bool(distractors)
            self.junction = (hi + 1, 2)
            self.corridor_length = lo
            self.cue = 0
            self.start_pos = (self.junction[0] - lo, 2)
            self.cue_pos = (self.start_pos[0], 1)
            self.cue_shown = True
            super().__init__(mission_space=MissionSpace(mission_func=lambda: "remember the cue, turn to its arm"),
                             width=hi + 3, height=5, see_through_walls=False,
                             max_steps=int(max_steps) if max_steps is not None else 4 * (hi + 2), **kwargs)
            self.action_space = gym.spaces.Discrete(3)

        def _gen_grid(self, width: int, height: int) -> None:
            self.grid = Grid(width, height)
            for x in range(width):
                for y in range(height):
                    self.grid.set(x, y, Wall())
            lo, hi = self.length_range
            self.corridor_length = int(self._rand_int(lo, hi + 1))
            jx, jy = self.junction
            sx = jx - self.corridor_length
            for x in range(sx, jx + 1):
                self.grid.set(x, jy, None)
            self.grid.set(jx, jy - 1, None)
            self.grid.set(jx, jy + 1, None)
            self.cue = int(self._rand_int(0, 2))
            self.start_pos = (sx, jy)
            self.cue_pos = (sx, jy - 1)
            self.grid.set(*self.cue_pos, Key("yellow") if self.cue == 0 else Ball("blue"))
            self.cue_shown = True
            self._recolour()
            self.agent_pos = np.array(self.start_pos)
            self.agent_dir = 0
            self.mission = "remember the cue, turn to its arm"

        def _recolour(self) -> None:
            """With ``distractors``: fresh random colours for the corridor's side walls (noise in the view)."""
            if not self.distractors:
                return
            colours = ("red", "green", "blue", "purple", "yellow", "grey")
            jx, jy = self.junction
            for x in range(1, jx):
                for y in (jy - 1, jy + 1):
                    if (x, y) != self.cue_pos or not self.cue_shown:
                        self.grid.set(x, y, Wall(colours[int(self._rand_int(0, len(colours)))]))

        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            pos = tuple(int(c) for c in self.agent_pos)
            changed = self.distractors
            if self.cue_shown and pos != self.start_pos:
                self.grid.set(*self.cue_pos, Wall())
                self.cue_shown = False
                changed = True
            self._recolour()
            if changed:
                obs = self.gen_obs()
            jx, jy = self.junction
            if pos in ((jx, jy - 1), (jx, jy + 1)):
                success = (pos[1] < jy) == (self.cue == 0)
                reward = self._reward() if success else 0.0
                terminated = True
                info = {**info, "success": bool(success)}
            return obs, reward, terminated, truncated, info

    return CueMazeEnv


_CLASS: Any = None


def CueMazeEnv(**kwargs: Any):  # noqa: N802 - a class built lazily (minigrid is imported on first use)
    """Build the cue-maze MiniGrid env (the class is created on first use so importing :mod:`rl.envs` does not
    import minigrid)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _env_class()
    return _CLASS(**kwargs)


class CueMazeWorld(WorldWrapper):
    """Records the cue maze's world state (module docstring) around its (image-observation) env."""

    variables = (
        Variable("agent_x", "ordinal", "agent column (cells)"),
        Variable("agent_y", "ordinal", "agent row (cells)"),
        Variable("agent_dir", "categorical", "agent direction", _DIRS),
        Variable("cue", "categorical", "cue object shown at the start (key: go up, ball: go down)", CUES),
        Variable("match_side", "categorical", "the arm to take", ("up", "down")),
        Variable("at_junction", "categorical", "the agent stands on the junction (decision cell)", ("no", "yes")),
        Variable("corridor_length", "ordinal", "corridor length of this episode (cells)"),
    )

    def world(self) -> tuple[dict[str, Any], dict[str, bool]]:
        u = self.env.unwrapped
        ax, ay = (int(c) for c in u.agent_pos)
        seen = visible_cells(self.env)
        cue_seen = bool(u.cue_shown and seen[u.cue_pos])
        values = {"agent_x": ax, "agent_y": ay, "agent_dir": int(u.agent_dir), "cue": int(u.cue),
                  "match_side": int(u.cue), "at_junction": int((ax, ay) == tuple(u.junction)),
                  "corridor_length": int(u.corridor_length)}
        visible = {"agent_x": bool(seen[0, :].any() or seen[u.width - 1, :].any()),
                   "agent_y": bool(seen[:, 0].any() or seen[:, u.height - 1].any()),
                   "agent_dir": False, "cue": cue_seen, "match_side": cue_seen, "at_junction": True,
                   "corridor_length": False}
        return values, visible


def _make(env_id: str, image_only: bool = True, **kwargs: Any) -> CueMazeWorld:
    """The cue maze with :class:`CueMazeWorld` outside ``ImgObsWrapper`` (``image_only=False`` keeps the dict
    observation)."""
    from minigrid.wrappers import ImgObsWrapper

    env = CueMazeEnv(**kwargs)
    return CueMazeWorld(ImgObsWrapper(env) if image_only else env)


SPECS = (EnvSpec(ENV_ID, make=_make, action_names=ACTIONS[:3], variables=CueMazeWorld.variables,
                 description="MiniGrid T-maze; the cue vanishes when the agent leaves the start (memory needed)"),)
