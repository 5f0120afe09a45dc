"""MiniGrid Memory: the world variables (cue, matching side) and the ``memory-recurrent`` zoo agent."""

from __future__ import annotations

import numpy as np

import rl
from rl import envs, zoo
from rl import worldmodel as wm

ENV_ID = "MiniGrid-MemoryS7-v0"


def _walk_to(env, side: int):
    """Scripted: forward to the split, turn up (0) or down (1), step in; returns the last step."""
    u = env.unwrapped
    while int(u.agent_pos[0]) < int(u.success_pos[0]):
        env.step(2)
    env.step(0 if side == 0 else 1)
    return env.step(2)


def test_memory_world_records_cue_and_matching_side():
    env = envs.make(ENV_ID)
    assert env.variable_names == ["agent_x", "agent_y", "agent_dir", "cue", "match_side"]
    assert env.variable("cue").categories == ("key", "ball")
    assert env.variable("match_side").categories == ("up", "down")
    seen = set()
    for seed in range(20):
        _, info = env.reset(seed=seed)
        w = info["world"]
        u = env.unwrapped
        h = u.height
        assert u.grid.get(1, h // 2 - 1).type == ("key", "ball")[w["cue"]]
        match_y = h // 2 - 2 if w["match_side"] == 0 else h // 2 + 2
        assert u.grid.get(int(u.success_pos[0]), match_y).type == ("key", "ball")[w["cue"]]
        seen.add((w["cue"], w["match_side"]))
        # the env's reward agrees: the matching side pays, the other one does not
        side = w["match_side"] if seed % 2 == 0 else 1 - w["match_side"]
        _, reward, terminated, _, info = _walk_to(env, side)
        assert terminated and (reward > 0) == (side == w["match_side"])
        assert info["world"]["cue"] == w["cue"] and info["world"]["match_side"] == w["match_side"]
    assert seen == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_memory_cue_visibility_follows_the_view():
    env = envs.make(ENV_ID)
    for seed in range(20):
        _, info = env.reset(seed=seed)
        x = info["world"]["agent_x"]
        # facing right, the cue (top-left of the start room) is beside the agent only from column 1
        assert info["world_visible"]["cue"] == (x == 1)
        if info["world_visible"]["match_side"]:
            assert info["world_visible"]["cue"]
        _, _, _, _, info = _walk_to(env, 0)
        assert not info["world_visible"]["cue"]  # at the split the cue is out of sight: it must be remembered


def _cue_remembered(ro):
    """Rows where the cue was seen earlier in the episode but is out of view now, before the split."""
    return ro.remembered("cue") & (ro.world["agent_x"] <= 4)


def test_memory_agent_keeps_the_cue_in_memory_not_in_the_observation():
    agent = zoo.load("memory-recurrent")
    assert agent.card["evaluation"]["success_rate"] >= 0.9 and agent.card["target"]["reached"]
    res = wm.probe(agent, variables=["cue"], sites=["memory.h"], episodes=150,
                   when=_cue_remembered)
    mem = res.row("memory.h", "cue")
    # the cue is in none of these observations, yet memory.h holds it; the random-init twin is reported beside
    assert mem["visible_rate"] == 0.0 and mem["score"] >= 0.95 and mem["obs_baseline"] <= mem["chance"] + 0.1
    assert mem["verdict"].startswith("evidence of memory") and mem["random_init"] is not None


def test_memory_agent_that_has_not_seen_the_cue_looks_back_from_the_split():
    # the S7 hallway is short: from the split, facing back, the cue is in view, and the agent uses that
    agent = zoo.load("memory-recurrent@seed0")
    ro = rl.collect(agent, episodes=60, seed=3)
    looked = []
    for e in ro.episode_ids:
        rows = np.flatnonzero(ro.episode == e)
        if not ro.visible["cue"][rows[ro.world["agent_x"][rows] < 5]].any():
            looked.append(bool(ro.visible["cue"][rows[ro.world["agent_x"][rows] == 5]].any()))
    assert len(looked) >= 20 and all(looked)
