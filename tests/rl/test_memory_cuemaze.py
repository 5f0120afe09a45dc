"""The ``cuemaze-recurrent`` and ``cuemaze-noisy-recurrent`` zoo agents need their memory: on MiniGrid-CueMaze-v0
no observation at the decision shows the cue (tests/rl/test_envs_cuemaze.py), yet the agents turn the right way;
with their LSTM state reset at every step, or untrained, they are at chance or worse; memory.h holds the cue at
the decision step where the observation holds none; and setting memory.h's cue coordinate to the other cue sends
them into the other arm."""

from __future__ import annotations

import numpy as np
import pytest

import rl
from rl import worldmodel as wm
from rl import zoo
from rl.zoo.train import EVAL_SEED, evaluate_policy_episodes

NAMES = ("cuemaze-recurrent", "cuemaze-noisy-recurrent")  # corridors of 1-2 cells; 2-4 cells with distractors


def _decision_rows(ro) -> np.ndarray:
    """The decision step of each episode: its first step on the junction (just arrived, before any turn)."""
    at = np.flatnonzero(np.asarray(ro.world["at_junction"]) == 1)
    order = at[np.lexsort((ro.step[at], ro.episode[at]))]
    _, first = np.unique(ro.episode[order], return_index=True)
    rows = np.zeros(len(ro.episode), dtype=bool)
    rows[order[first]] = True
    return rows


@pytest.fixture(scope="module", params=NAMES)
def agent(request):
    return zoo.load(request.param)


def test_card_says_the_target_was_reached(agent):
    card = agent.card
    assert card["target"]["reached"] and card["evaluation"]["success_rate"] >= 0.95
    assert card["evaluation"]["n_episodes"] == 100 and card["train_time_s"] > 0
    assert card["env"] == "MiniGrid-CueMaze-v0" and card["steps"] <= card["max_steps"]


def test_success_needs_the_memory(agent):
    spec = zoo.get_spec(agent.card["name"])
    trained = zoo.evaluate(agent, n_episodes=40, progress=False)

    def amnesic(obs, state, start):  # the same agent, its LSTM state reset at every step
        return agent.act(obs, None, np.array([True]))

    with agent.analysis():
        reset_each_step = evaluate_policy_episodes(spec, amnesic, 40, EVAL_SEED)
    twin = zoo.evaluate(zoo.load(agent.card["name"], random_init=True), n_episodes=40, progress=False)
    assert trained["success_rate"] >= 0.95
    # without memory the best possible is a guess at the junction: 50% in expectation (40 episodes: <= 0.7)
    assert reset_each_step["success_rate"] <= 0.7
    assert twin["success_rate"] <= 0.7
    assert trained["success_rate"] - reset_each_step["success_rate"] >= 0.3


def test_cue_is_decodable_from_memory_at_the_decision_not_from_the_observation(agent):
    res = wm.probe(agent, variables=["cue"], sites=["memory.h"], episodes=80, when=_decision_rows,
                   progress=False)
    row = res.row("memory.h", "cue")
    assert row["visible_rate"] == 0.0  # no decision observation shows the cue
    # the decision observation is the same array for both cues (given the corridor length): chance exactly
    assert row["obs_baseline"] <= row["chance"] + 0.05
    assert row["score"] >= 0.95
    assert row["verdict"].startswith("evidence of memory")
    assert row["random_init"] is not None


def test_setting_the_cue_in_memory_flips_the_turn(agent):
    # edit memory.h on the junction (the decision step and the step after the turn, the cue out of view in both)
    # along the probe's cue direction to the other cue's mean: the agent takes the other arm; a random direction of
    # the same norm must rarely change the outcome
    res = wm.causal_check(agent, "memory.h", "cue", episodes=30, seeds=(0, 1), probe_episodes=80,
                          probe_when=_decision_rows, when=lambda w: w["at_junction"] == 1)
    probe, rand = res.summary["probe"], res.summary["random"]
    assert res.baseline_success_rate >= 0.95
    assert probe["outcome_flip_rate"]["mean"] >= 0.6 and rand["outcome_flip_rate"]["mean"] <= 0.2
    assert probe["decoded_target_rate"]["mean"] >= 0.95


def test_rollout_labels_line_up_with_the_agent(agent):
    ro = rl.collect(agent, episodes=20, seed=1)
    rows = _decision_rows(ro)
    assert rows.sum() == 20  # one decision step per episode
    assert not ro.visible["cue"][rows].any() and (ro.world["agent_dir"][rows] == 0).all()
    # every episode ends with a step forward from the junction into the cued arm: facing up (3) for a key, down
    # (1) for a ball (rows record the state each action was taken in)
    last = np.r_[ro.episode[1:] != ro.episode[:-1], True]
    assert ro.terminated[last].all() and (ro.actions[last] == 2).all() and (ro.world["at_junction"][last] == 1).all()
    np.testing.assert_array_equal(ro.world["agent_dir"][last], np.where(ro.world["cue"][last] == 0, 3, 1))
