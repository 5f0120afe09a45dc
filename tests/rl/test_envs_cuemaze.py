"""MiniGrid-CueMaze-v0: the cue is out of view at the decision (checked on the observations themselves), the
arms reward by the cue, and the pixel option of the MiniGrid envs."""

from __future__ import annotations

import numpy as np
import pytest
from minigrid.core.constants import OBJECT_TO_IDX

from interp_core.errors import InputError
from rl import envs

CUE_CODES = (OBJECT_TO_IDX["key"], OBJECT_TO_IDX["ball"])
ENV = "MiniGrid-CueMaze-v0"


def _shows_cue(obs: np.ndarray) -> bool:
    return bool(np.isin(obs[..., 0], CUE_CODES).any())


def _to_junction(env, seed):
    obs, info = env.reset(seed=seed)
    first = (obs, info)
    for _ in range(info["world"]["corridor_length"]):
        obs, reward, term, trunc, info = env.step(2)
    return first, (obs, info)


def test_registered_with_variables_and_actions():
    assert ENV in envs.registered_ids()
    assert envs.action_names(ENV) == ["left", "right", "forward"]
    names = [v.name for v in envs.variables(ENV)]
    assert {"cue", "match_side", "at_junction", "corridor_length"} <= set(names)
    env = envs.make(ENV)
    assert env.action_space.n == 3 and env.observation_space.shape == (7, 7, 3)


def test_cue_in_view_at_start_and_nowhere_in_the_decision_observation():
    env = envs.make(ENV)
    seen_lengths, decision = set(), {}
    for seed in range(40):
        (obs0, info0), (obs, info) = _to_junction(env, seed)
        w = info0["world"]
        # at the start the cue is in the observation: its object code, and the world says it is visible
        assert info0["world_visible"]["cue"] and _shows_cue(obs0)
        code = obs0[..., 0][np.isin(obs0[..., 0], CUE_CODES)]
        assert list(code) == [CUE_CODES[w["cue"]]]
        # at the decision step (first step on the junction) no observation cell shows the cue
        assert info["world"]["at_junction"] == 1
        assert not _shows_cue(obs) and not info["world_visible"]["cue"]
        seen_lengths.add(w["corridor_length"])
        decision.setdefault((w["corridor_length"], w["cue"]), obs)
    assert seen_lengths == {2, 3, 4, 5}
    # stronger: the decision observation is the same array whichever the cue (nothing in it depends on the cue)
    for length in seen_lengths:
        if (length, 0) in decision and (length, 1) in decision:
            np.testing.assert_array_equal(decision[(length, 0)], decision[(length, 1)])


def test_no_observation_after_leaving_the_start_shows_the_cue():
    env = envs.make(ENV)
    rng = np.random.default_rng(0)
    checked = 0
    for seed in range(30):
        obs, info = env.reset(seed=seed)
        start = (info["world"]["agent_x"], info["world"]["agent_y"])
        left_start, done = False, False
        while not done:
            obs, r, term, trunc, info = env.step(int(rng.integers(3)))
            done = term or trunc
            left_start |= (info["world"]["agent_x"], info["world"]["agent_y"]) != start
            if left_start:  # even turning around afterwards: the alcove is a wall now
                assert not _shows_cue(obs) and not info["world_visible"]["cue"]
                checked += 1
    assert checked > 50


@pytest.mark.parametrize("right_arm", [True, False])
def test_arms_reward_by_the_cue(right_arm):
    env = envs.make(ENV)
    for seed in range(6):
        (_, info0), _ = _to_junction(env, seed)
        cue = info0["world"]["cue"]
        turn = (0 if cue == 0 else 1) if right_arm else (1 if cue == 0 else 0)  # key: left turn = up
        env.step(turn)
        _, reward, term, trunc, info = env.step(2)
        assert term and not trunc and info["success"] is right_arm
        length = info0["world"]["corridor_length"]
        expected = 1 - 0.9 * (length + 2) / env.unwrapped.max_steps if right_arm else 0.0
        assert reward == pytest.approx(expected)


def test_bad_corridor_length_is_refused():
    with pytest.raises(InputError, match="corridor_length"):
        envs.make(ENV, corridor_length=(3, 1))
    with pytest.raises(InputError, match="corridor_length"):
        envs.make(ENV, corridor_length="long")


def test_pixel_observation_option():
    env = envs.make("MiniGrid-DoorKey-5x5-v0", pixels=4)
    obs, info = env.reset(seed=0)
    assert obs.shape == (28, 28, 3) and obs.dtype == np.uint8
    codes = envs.make("MiniGrid-DoorKey-5x5-v0")
    _, info_codes = codes.reset(seed=0)
    assert info["world"] == info_codes["world"]  # same world, other rendering
    with pytest.raises(InputError, match="pixels"):
        envs.make("MiniGrid-DoorKey-5x5-v0", pixels=0)


def test_distractors_recolour_the_corridor_walls_and_never_show_the_cue():
    env = envs.make(ENV, corridor_length=(2, 4), distractors=True)
    changed = 0
    for seed in range(10):
        (obs0, info0), (obs, info) = _to_junction(env, seed)
        assert _shows_cue(obs0) and not _shows_cue(obs) and not info["world_visible"]["cue"]
        prev = obs
        obs, *_ = env.step(0)  # turn on the junction: the view rotates, the walls are recoloured
        assert not _shows_cue(obs)
        changed += int((prev[..., 1] != obs[..., 1]).any())
    plain = envs.make(ENV, corridor_length=(2, 4))
    a, _ = plain.reset(seed=3)
    b, _ = envs.make(ENV, corridor_length=(2, 4), distractors=True).reset(seed=3)
    assert changed == 10 and (a[..., 0] == b[..., 0]).all()  # same objects, other colours
