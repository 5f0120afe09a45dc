"""MiniGrid envs with their true world state and per-variable visibility.

Variables (those that exist in the env; ``DoorKey`` has all of them, ``Empty`` has no key or door,
``Memory`` has no goal cell and records the memory-task variables of the second table instead of the goal
ones):

============== =========== ===============================================================================
name           kind        meaning; visible in the current observation when ...
============== =========== ===============================================================================
agent_x/_y     ordinal     agent cell; ... a cell of the outer boundary wall on that axis (column ``0`` or
                           ``width-1`` for x, row ``0`` or ``height-1`` for y) is in the visible view, which
                           pins the coordinate down
agent_dir      categorical 0 right, 1 down, 2 left, 3 up; ... the observation carries MiniGrid's
                           ``direction`` entry (not with ``ImgObsWrapper``)
goal_x/_y      ordinal     goal cell; ... the goal cell is visible
dist_to_goal   ordinal     BFS shortest-path length (moves between 4-connected cells, turns not counted)
                           from the agent to the goal, walls and lava blocking, doors and objects passable
                           (they can be opened / picked up); ... the BFS over visible cells alone gives the
                           same length
carrying_key   categorical 0 no, 1 yes; always visible (MiniGrid draws the carried object on the agent's
                           own cell of the view)
key_x/_y       ordinal     key cell (the agent's cell while carried); ... the key is visible or carried
door_x/_y      ordinal     door cell; ... the door cell is visible
door_open      categorical 0 closed, 1 open; ... the door cell is visible
door_locked    categorical 0 unlocked, 1 locked; ... the door cell is visible
============== =========== ===============================================================================

The ``Memory`` envs (``MiniGrid-MemoryS7-v0`` ...: a cue object in the start room, a hallway, then a split
with a key and a ball at its two ends; reaching the end object of the cue's type gives the reward) record,
besides the agent pose:

============== =========== ===============================================================================
name           kind        meaning; visible in the current observation when ...
============== =========== ===============================================================================
cue            categorical 0 key, 1 ball: the type of the start-room object, the thing to remember; ... the
                           cue's cell is visible
match_side     categorical 0 up, 1 down: which end of the split holds the object matching the cue (the
                           side to go to); ... the cue's cell and at least one end object's cell are
                           visible together (one end object fixes the other: they are a key and a ball)
============== =========== ===============================================================================

A cell is visible when it lies in the agent's egocentric ``agent_view_size`` x ``agent_view_size`` view and
MiniGrid's occlusion mask (``Grid.process_vis`` in ``gen_obs_grid``) marks it seen; cells outside the grid are
never visible. Visibility is a rule about what the observation *shows*; whether a probe can *decode* the
variable from the observation is measured separately (the observation baseline of ``rl.worldmodel``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gymnasium as gym
import numpy as np

from interp_core.errors import InputError, InputTypeError

from .base import Variable, WorldWrapper
from .registry import EnvSpec

_DIRS = ("right", "down", "left", "up")
# MiniGrid's ``Actions`` enum, by index
ACTIONS = ("left", "right", "forward", "pickup", "drop", "toggle", "done")
_BLOCKING = ("wall", "lava")
_CUES = ("key", "ball")
_SIDES = ("up", "down")


def bfs_distance(passable: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> int:
    """Shortest 4-connected path length from ``start`` to ``goal`` over ``passable[x, y]`` cells.

    Returns ``-1`` when the goal cannot be reached. ``start`` and ``goal`` count as passable.
    """
    w, h = passable.shape
    if tuple(start) == tuple(goal):
        return 0
    seen = np.zeros_like(passable, dtype=bool)
    seen[start] = True
    queue = deque([(tuple(start), 0)])
    while queue:
        (x, y), d = queue.popleft()
        for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if 0 <= nx < w and 0 <= ny < h and not seen[nx, ny]:
                if (nx, ny) == tuple(goal):
                    return d + 1
                if passable[nx, ny]:
                    seen[nx, ny] = True
                    queue.append(((nx, ny), d + 1))
    return -1


def visible_cells(env: Any) -> np.ndarray:
    """Boolean ``[width, height]`` mask of the grid cells the agent currently sees.

    Maps MiniGrid's egocentric visibility mask (``gen_obs_grid``) back to absolute coordinates with the
    same geometry as ``MiniGridEnv.get_full_render``: view cell ``(i, j)`` is the absolute cell
    ``top_left - f * j + r * i`` with ``top_left = agent + f * (view - 1) - r * (view // 2)``.
    """
    u = env.unwrapped
    _, vis = u.gen_obs_grid()
    view = u.agent_view_size
    f, r = np.asarray(u.dir_vec), np.asarray(u.right_vec)
    top_left = np.asarray(u.agent_pos) + f * (view - 1) - r * (view // 2)
    mask = np.zeros((u.width, u.height), dtype=bool)
    for j in range(view):
        for i in range(view):
            if not vis[i, j]:
                continue
            x, y = top_left - f * j + r * i
            if 0 <= x < u.width and 0 <= y < u.height:
                mask[x, y] = True
    return mask


class MiniGridWorld(WorldWrapper):
    """Records a MiniGrid env's true state (agent pose, goal, key, door, BFS distance) and visibility.

    Wrap the env *after* observation wrappers such as ``ImgObsWrapper`` so the wrapper knows what the agent
    observes: ``MiniGridWorld(ImgObsWrapper(gym.make("MiniGrid-DoorKey-5x5-v0")))`` (``rl.envs.make`` does
    this). See the module docstring for every variable and its visibility rule.

    Args:
        env: a (wrapped) MiniGrid env.
        objects: which object variables to record among ``"key"`` and ``"door"``; by default from the env
            class (``DoorKeyEnv`` has both, other envs have none unless given).

    A ``MemoryEnv`` (no goal cell) records the agent pose and ``cue`` / ``match_side`` instead of the goal
    variables.
    """

    def __init__(self, env: gym.Env, objects: tuple[str, ...] | None = None):
        super().__init__(env)
        u = env.unwrapped
        if not hasattr(u, "gen_obs_grid"):
            raise InputTypeError(f"MiniGridWorld wraps a MiniGrid env, got {type(u).__name__}")
        if objects is None:
            objects = ("key", "door") if type(u).__name__ == "DoorKeyEnv" else ()
        unknown = set(objects) - {"key", "door"}
        if unknown:
            raise InputError(f"objects must be among ('key', 'door'), got {sorted(unknown)}")
        self.objects = tuple(objects)
        self.memory_task = type(u).__name__ == "MemoryEnv"
        variables = [
            Variable("agent_x", "ordinal", "agent column (cells)"),
            Variable("agent_y", "ordinal", "agent row (cells)"),
            Variable("agent_dir", "categorical", "agent direction", _DIRS),
        ]
        if self.memory_task:
            variables += [
                Variable("cue", "categorical", "type of the start-room object (the thing to remember)", _CUES),
                Variable("match_side", "categorical", "end of the split holding the object matching the cue",
                         _SIDES),
            ]
        else:
            variables += [
                Variable("goal_x", "ordinal", "goal column (cells)"),
                Variable("goal_y", "ordinal", "goal row (cells)"),
                Variable("dist_to_goal", "ordinal", "BFS shortest-path length to the goal (moves)"),
            ]
        if "key" in self.objects:
            variables += [
                Variable("carrying_key", "categorical", "agent carries the key", ("no", "yes")),
                Variable("key_x", "ordinal", "key column (cells; the agent's while carried)"),
                Variable("key_y", "ordinal", "key row (cells; the agent's while carried)"),
            ]
        if "door" in self.objects:
            variables += [
                Variable("door_x", "ordinal", "door column (cells)"),
                Variable("door_y", "ordinal", "door row (cells)"),
                Variable("door_open", "categorical", "door is open", ("closed", "open")),
                Variable("door_locked", "categorical", "door is locked", ("unlocked", "locked")),
            ]
        self.variables = tuple(variables)
        space = self.observation_space
        self._obs_has_direction = isinstance(space, gym.spaces.Dict) and "direction" in space.spaces

    def _find(self, type_name: str) -> tuple[tuple[int, int] | None, Any]:
        grid = self.env.unwrapped.grid
        for x in range(grid.width):
            for y in range(grid.height):
                cell = grid.get(x, y)
                if cell is not None and cell.type == type_name:
                    return (x, y), cell
        return None, None

    def world(self) -> tuple[dict[str, Any], dict[str, bool]]:
        u = self.env.unwrapped
        grid = u.grid
        ax, ay = (int(c) for c in u.agent_pos)
        seen = visible_cells(self.env)
        values: dict[str, Any] = {"agent_x": ax, "agent_y": ay, "agent_dir": int(u.agent_dir)}
        visible: dict[str, bool] = {
            "agent_x": bool(seen[0, :].any() or seen[u.width - 1, :].any()),
            "agent_y": bool(seen[:, 0].any() or seen[:, u.height - 1].any()),
            "agent_dir": self._obs_has_direction,
        }
        if self.memory_task:
            self._memory_world(seen, values, visible)
            return values, visible
        goal, _ = self._find("goal")
        if goal is None:
            raise InputTypeError(f"env: {type(u).__name__} has no goal cell; MiniGridWorld records goal_x/_y and "
                                 "dist_to_goal, so it needs one (or record your own variables with "
                                 "rl.envs.FunctionWorld / rl.collect(..., world=...))")
        values["goal_x"], values["goal_y"] = goal
        visible["goal_x"] = visible["goal_y"] = bool(seen[goal])
        passable = np.ones((grid.width, grid.height), dtype=bool)
        for x in range(grid.width):
            for y in range(grid.height):
                cell = grid.get(x, y)
                if cell is not None and cell.type in _BLOCKING:
                    passable[x, y] = False
        dist = bfs_distance(passable, (ax, ay), goal)
        values["dist_to_goal"] = dist
        seen_path = passable & seen
        visible["dist_to_goal"] = bool(seen[goal]) and bfs_distance(seen_path, (ax, ay), goal) == dist
        if "key" in self.objects:
            carrying = u.carrying is not None and u.carrying.type == "key"
            values["carrying_key"] = int(carrying)
            visible["carrying_key"] = True
            if carrying:
                kx, ky = ax, ay
                key_seen = True
            else:
                pos, _ = self._find("key")
                if pos is None:  # the key was dropped somewhere unreachable to the scan (should not happen)
                    raise RuntimeError("the key is neither on the grid nor carried")
                kx, ky = pos
                key_seen = bool(seen[pos])
            values["key_x"], values["key_y"] = kx, ky
            visible["key_x"] = visible["key_y"] = key_seen
        if "door" in self.objects:
            pos, door = self._find("door")
            if pos is None:
                raise InputTypeError(f"objects: {type(u).__name__} has no door; build MiniGridWorld(env, objects=()) "
                                     "or without 'door'")
            values["door_x"], values["door_y"] = pos
            values["door_open"] = int(door.is_open)
            values["door_locked"] = int(door.is_locked)
            for k in ("door_x", "door_y", "door_open", "door_locked"):
                visible[k] = bool(seen[pos])
        return values, visible

    def _memory_world(self, seen: np.ndarray, values: dict[str, Any], visible: dict[str, bool]) -> None:
        """``cue`` and ``match_side`` of a ``MemoryEnv`` (layout of ``MemoryEnv._gen_grid``: cue at
        ``(1, h // 2 - 1)``, end objects beside the success / failure cells of the split)."""
        u = self.env.unwrapped
        cue_pos = (1, u.height // 2 - 1)
        cue = u.grid.get(*cue_pos)
        if cue is None or cue.type not in _CUES:
            raise InputTypeError(f"env: no cue object at {cue_pos} of the {type(u).__name__} grid; MiniGridWorld "
                                 "reads the Memory envs' layout (MemoryEnv._gen_grid)")
        sx, sy = (int(c) for c in u.success_pos)
        fx, fy = (int(c) for c in u.failure_pos)
        up = sy < fy
        # the end objects sit one cell beyond the success / failure cells, away from the split's centre
        match_pos = (sx, sy - 1) if up else (sx, sy + 1)
        other_pos = (fx, fy + 1) if up else (fx, fy - 1)
        values["cue"] = _CUES.index(cue.type)
        values["match_side"] = 0 if up else 1
        visible["cue"] = bool(seen[cue_pos])
        visible["match_side"] = visible["cue"] and bool(seen[match_pos] or seen[other_pos])


def _make(env_id: str, image_only: bool = True, pixels: int | None = None, **kwargs: Any) -> MiniGridWorld:
    """``env_id`` with ``MiniGridWorld`` outside ``ImgObsWrapper`` (``image_only``: observe only the egocentric
    image, as the zoo agents do; ``False`` keeps MiniGrid's dict observation, then ``agent_dir`` is visible).

    ``pixels=TILE``: observe RGB frames of the same partial view instead of the integer codes
    (``RGBImgPartialObsWrapper``: ``[7 * TILE, 7 * TILE, 3]`` uint8, ``TILE`` pixels per cell); the world
    variables and their visibility are unchanged (the frames show the same cells)."""
    try:
        import minigrid  # noqa: F401  (registers the MiniGrid ids)
        from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("MiniGrid envs need the 'minigrid' package: pip install 'interp-suite[rl]'") from e
    if pixels is not None and (isinstance(pixels, bool) or not isinstance(pixels, (int, np.integer)) or pixels < 1):
        raise InputError(f"pixels: the tile size in pixels per cell (an int >= 1, e.g. 4 for 28x28 frames), got "
                         f"{pixels!r}")
    env = gym.make(env_id, **kwargs)
    if pixels is not None:
        env = RGBImgPartialObsWrapper(env, tile_size=int(pixels))
    return MiniGridWorld(ImgObsWrapper(env) if image_only else env)


SPECS = (EnvSpec("MiniGrid-*", make=_make, action_names=ACTIONS, variables=None,
                 examples=("MiniGrid-Empty-5x5-v0", "MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-8x8-v0",
                           "MiniGrid-MemoryS7-v0"),
                 description="any MiniGrid env; variables depend on the env (agent pose, goal, key, door, cue)"),)
