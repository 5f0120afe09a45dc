"""rl.envs: world-state labels and visibility flags checked against independent truths."""

from __future__ import annotations

import numpy as np
import pytest
from minigrid.core.constants import OBJECT_TO_IDX

from rl import envs


def _rollout(env, seed, steps, policy=None):
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    out = [(obs, info)]
    for _ in range(steps):
        a = policy(obs, info) if policy else int(rng.integers(env.action_space.n))
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, info))
        if term or trunc:
            obs, info = env.reset(seed=int(rng.integers(1 << 30)))
            out.append((obs, info))
    return out


def test_cartpole_world_is_the_observation():
    env = envs.make("CartPole-v1")
    for obs, info in _rollout(env, 0, 60):
        w = info["world"]
        np.testing.assert_allclose(obs, [w["x"], w["x_dot"], w["theta"], w["theta_dot"]], rtol=1e-6, atol=1e-6)
        assert all(info["world_visible"].values())
    assert [v.kind for v in env.variables] == ["continuous"] * 4


def test_empty_bfs_is_manhattan():
    # Empty-5x5: a 3x3 open room, no obstacles: the shortest path is the Manhattan distance
    env = envs.make("MiniGrid-Empty-5x5-v0")
    for obs, info in _rollout(env, 1, 80):
        w = info["world"]
        assert w["dist_to_goal"] == abs(w["agent_x"] - w["goal_x"]) + abs(w["agent_y"] - w["goal_y"])


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-8x8-v0"])
def test_doorkey_bfs_goes_through_the_door(env_id):
    # two convex rooms joined by one door: left of the wall the path is agent -> door -> goal in Manhattan
    # steps; right of it, straight Manhattan
    env = envs.make(env_id)
    for seed in range(5):
        for obs, info in _rollout(env, seed, 40):
            w = info["world"]
            ax, ay, gx, gy, dx, dy = (w[k] for k in ("agent_x", "agent_y", "goal_x", "goal_y", "door_x", "door_y"))
            if ax < dx:
                truth = abs(ax - dx) + abs(ay - dy) + abs(dx - gx) + abs(dy - gy)
            else:
                truth = abs(ax - gx) + abs(ay - gy)
            assert w["dist_to_goal"] == truth


def test_bfs_hand_layout():
    passable = np.ones((5, 5), dtype=bool)
    passable[2, 0:4] = False  # a wall with a gap at (2, 4)
    assert envs.bfs_distance(passable, (0, 0), (4, 0)) == 4 + 4 + 4  # down 4, across 4, up 4
    passable[2, 4] = False
    assert envs.bfs_distance(passable, (0, 0), (4, 0)) == -1


def _view_has(obs, type_name):
    return bool((obs[:, :, 0] == OBJECT_TO_IDX[type_name]).any())


@pytest.mark.parametrize("env_id", ["MiniGrid-DoorKey-5x5-v0", "MiniGrid-DoorKey-8x8-v0"])
def test_visibility_matches_the_encoded_observation(env_id):
    # independent truth: an object is visible iff its type code appears in the encoded 7x7x3 image
    env = envs.make(env_id)
    seen = {"door": set(), "key": set()}
    for seed in range(6):
        for obs, info in _rollout(env, seed, 60):
            v, w = info["world_visible"], info["world"]
            assert v["goal_x"] == _view_has(obs, "goal")
            assert v["door_open"] == _view_has(obs, "door")
            assert v["key_x"] == _view_has(obs, "key")
            # the carried key is drawn on the agent's own cell (bottom centre of the view)
            agent_cell = obs[obs.shape[0] // 2, obs.shape[1] - 1, 0]
            assert (agent_cell == OBJECT_TO_IDX["key"]) == bool(w["carrying_key"])
            seen["door"].add(v["door_open"])
            seen["key"].add(v["key_x"])
            assert v["agent_dir"] is False  # image-only observation has no compass
    assert seen == {"door": {True, False}, "key": {True, False}}  # both cases were exercised


def test_visibility_carrying_key_with_scripted_pickup():
    env = envs.make("MiniGrid-DoorKey-5x5-v0")
    obs, info = env.reset(seed=0)
    u = env.unwrapped
    # place the agent facing the key and pick it up: the world must record carrying + key at the agent
    kx, ky = info["world"]["key_x"], info["world"]["key_y"]
    for d, (dx, dy) in enumerate([(1, 0), (0, 1), (-1, 0), (0, -1)]):
        x, y = kx - dx, ky - dy
        if u.grid.get(x, y) is None and (x, y) != tuple(u.agent_pos):
            u.agent_pos, u.agent_dir = np.array([x, y]), d
            break
    obs, _, _, _, info = env.step(u.actions.pickup)
    w = info["world"]
    assert w["carrying_key"] == 1 and (w["key_x"], w["key_y"]) == tuple(int(c) for c in u.agent_pos)
    assert info["world_visible"]["key_x"]


def test_dict_observation_shows_direction():
    env = envs.make("MiniGrid-Empty-5x5-v0", image_only=False)
    _, info = env.reset(seed=0)
    assert info["world_visible"]["agent_dir"] is True
    assert info["world"]["agent_dir"] == int(env.unwrapped.agent_dir)


def test_dist_visibility_means_the_visible_path_suffices():
    env = envs.make("MiniGrid-DoorKey-8x8-v0")
    flags = []
    for obs, info in _rollout(env, 3, 100):
        if info["world_visible"]["dist_to_goal"]:
            assert info["world_visible"]["goal_x"]
        flags.append(info["world_visible"]["dist_to_goal"])
    assert 0 < sum(flags) < len(flags) or sum(flags) == 0


def test_tmaze_cue_only_at_start_and_reward_follows_cue():
    env = envs.make("TMaze-v0", corridor_length=(3, 6))
    lengths = set()
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        cue = info["world"]["cue"]
        assert obs[cue] == 1 and obs[1 - cue] == 0 and info["world_visible"]["cue"]
        lengths.add(info["world"]["corridor_len"])
        t, done = 0, False
        while not done:
            turn = seed % 2
            obs, r, done, _, info = env.step(turn)
            t += 1
            if not done:
                assert obs[0] == obs[1] == 0  # the cue is never shown again
                assert not info["world_visible"]["cue"]
                assert info["world"]["position"] == t
                assert obs[3] == info["world"]["at_junction"]
        assert t == info["world"]["corridor_len"] + 2
        assert r == (1.0 if turn == cue else -1.0) and info["success"] == (turn == cue)
    assert lengths == {3, 4, 5, 6}


def test_variables_are_typed_and_complete():
    for env_id in envs.ENV_IDS:
        env = envs.make(env_id)
        _, info = env.reset(seed=0)
        assert set(info["world"]) == set(env.variable_names) == set(info["world_visible"])
        for v in env.variables:
            val = info["world"][v.name]
            assert isinstance(val, float) if v.kind == "continuous" else isinstance(val, int)
    with pytest.raises(ValueError, match="no world-state recorder"):
        envs.make("Pendulum-v1")


def test_tmaze_distractors_are_fresh_random_bits():
    env = envs.make("TMaze-v0", corridor_length=5, distractors=4)
    obs, info = env.reset(seed=0)
    assert obs.shape == (8,) and info["world_visible"]["cue"]
    bits = [obs[4:]]
    for _ in range(6):
        obs, *_ = env.step(0)
        bits.append(obs[4:])
        assert obs[0] == obs[1] == 0
    bits = np.stack(bits)
    assert set(np.unique(bits)) <= {0.0, 1.0} and 0.2 < bits.mean() < 0.8
    assert len({tuple(b) for b in bits}) > 1


# ---------------------------------------------------------------------------------------------- the registry
def test_action_names_and_variables_come_from_the_registered_specs():
    from minigrid.core.actions import Actions

    from rl.agents import default_action_names

    # MiniGrid's own action enum is the truth for every MiniGrid id
    assert default_action_names("MiniGrid-DoorKey-8x8-v0") == [a.name for a in sorted(Actions, key=int)]
    assert default_action_names("CartPole-v1") == ["push_left", "push_right"]
    assert default_action_names("TMaze-v0") == ["left", "right"] and default_action_names("Pong-v5") is None
    assert envs.variables("CartPole-v1") == envs.CartPoleWorld.variables
    assert envs.variables("TMaze-v0") == envs.TMazeWorld.variables
    # variables that depend on the env are read from a built one
    empty = envs.make("MiniGrid-Empty-5x5-v0")
    assert [v.name for v in envs.variables("MiniGrid-Empty-5x5-v0")] == empty.variable_names
    assert "key_x" in {v.name for v in envs.variables("MiniGrid-DoorKey-5x5-v0")}
    assert set(envs.ENV_IDS) == {e for s in envs.REGISTRY for e in s.examples}


def test_registry_lookup_rules_and_errors():
    reg = envs.EnvRegistry()
    general = reg.register(envs.EnvSpec("Toy-*", make=lambda env_id, **kw: None, action_names=("a", "b")))
    narrow = reg.register(envs.EnvSpec("Toy-Big-*", make=lambda env_id, **kw: None, action_names=("x",)))
    exact = reg.register(envs.EnvSpec("Toy-Big-v1", make=lambda env_id, **kw: None))
    assert reg.spec("Toy-Small-v0") is general and reg.spec("Toy-Big-v0") is narrow  # most specific pattern
    assert reg.spec("Toy-Big-v1") is exact and "Toy-Big-v1" in reg and "Other-v0" not in reg
    with pytest.raises(ValueError, match="registered already"):
        reg.register(envs.EnvSpec("Toy-*", make=lambda env_id, **kw: None))
    reg.register(envs.EnvSpec("Toy-*", make=lambda env_id, **kw: None), replace=True)
    assert reg.unregister("Toy-Big-v1") is exact and reg.spec("Toy-Big-v1") is narrow
    with pytest.raises(ValueError, match="no world-state recorder.*Toy-\\*"):
        reg.spec("Other-v0")
    with pytest.raises(TypeError, match="make"):
        envs.EnvSpec("Toy-v0", make=None)
    with pytest.raises(TypeError, match="EnvSpec"):
        reg.register("Toy-v0")
    # the built-in registry is built from the listed modules only
    assert envs.registered_ids()[:3] == ["CartPole-*", "MiniGrid-*", "TMaze-v0"]


def test_function_world_types_values_and_errors():
    import gymnasium as gym

    calls = []

    def fn(e):
        calls.append(1)
        return {"x": float(e.unwrapped.state[0]), "left": bool(e.unwrapped.state[0] < 0), "calls": len(calls)}

    env = envs.FunctionWorld(gym.make("CartPole-v1"), fn)
    obs, info = env.reset(seed=0)
    assert [(v.name, v.kind) for v in env.variables] == [("x", "continuous"), ("left", "categorical"),
                                                         ("calls", "ordinal")]
    for t in range(5):
        assert info["world"]["x"] == pytest.approx(float(obs[0]))  # CartPole's observation is its state
        assert info["world"]["left"] == int(obs[0] < 0) and info["world"]["calls"] == t + 1
        assert all(info["world_visible"].values())  # no visibility rule given: conservatively visible
        obs, _, _, _, info = env.step(0)
    # on top of a world wrapper: both sets of variables, a clash refused
    both = envs.FunctionWorld(envs.make("TMaze-v0"), lambda e: ({"double": 2 * e.unwrapped.position},
                                                                {"double": e.unwrapped.position == 0}))
    _, info = both.reset(seed=0)
    assert both.variable_names == [*envs.TMazeWorld(envs.TMazeEnv()).variable_names, "double"]
    assert info["world"]["double"] == 0 and info["world_visible"]["double"] is True
    _, _, _, _, info = both.step(0)
    assert info["world"]["double"] == 2 * info["world"]["position"] and info["world_visible"]["double"] is False
    with pytest.raises(ValueError, match="recorded by the env's world wrapper"):
        envs.FunctionWorld(envs.make("TMaze-v0"), lambda e: {"cue": 1}).reset(seed=0)
    with pytest.raises(TypeError, match="numbers"):
        envs.FunctionWorld(gym.make("CartPole-v1"), lambda e: {"name": "left"}).reset(seed=0)
    changing = envs.FunctionWorld(gym.make("CartPole-v1"), lambda e: {f"v{np.random.randint(1 << 30)}": 1.0})
    with pytest.raises(ValueError, match="same names"):
        changing.reset(seed=0)
        changing.step(0)
    with pytest.raises(TypeError, match="world state"):
        envs.find_world_wrapper(gym.make("CartPole-v1"))
