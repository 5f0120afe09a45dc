"""rl.collect: rollouts aligned with world labels and with activations recomputed independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rl
from interp_core import ActivationStore


def test_cartpole_rows_align_world_obs_and_activations():
    agent = rl.zoo.load("cartpole-ppo")
    ro = rl.collect(agent, steps=200, sites=["obs", "logits"], seed=0, n_envs=4)
    assert len(ro) == 200
    np.testing.assert_allclose(ro.obs, np.stack([ro.world[k] for k in ("x", "x_dot", "theta", "theta_dot")], 1),
                               rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        ref = agent(ro.obs).logits
    torch.testing.assert_close(ro.activations["logits"], ref)
    np.testing.assert_allclose(ro.logits, ref.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ro.actions, ref.argmax(-1).numpy())


def test_recurrent_state_is_carried_per_env_and_reset_per_episode():
    agent = rl.zoo.load("tmaze-recurrent")
    ro = rl.collect(agent, episodes=24, sites=["memory.h"], seed=3, n_envs=4)
    assert ro.num_episodes == 24 and ro.episode_complete.all()
    h = ro.features("memory.h")
    for e in ro.episode_ids:
        rows = np.flatnonzero(ro.episode == e)
        assert list(ro.step[rows]) == list(range(len(rows)))
        assert len(rows) == ro.world["corridor_len"][rows[0]] + 2  # start + corridor + junction
        assert ro.terminated[rows[-1]] and not ro.terminated[rows[:-1]].any()
        assert ro.rewards[rows[-1]] == 1.0  # the trained agent turns to the cue
        state = agent.initial_state(1)  # reference: this episode alone, stepped one observation at a time
        for r in rows:
            out, cache = agent.run_with_cache((ro.obs[r], state, None), sites=["memory.h"])
            torch.testing.assert_close(h[r], cache["memory.h"][0])
            state = out.state


def test_seeded_and_store_equals_memory(tmp_path):
    agent = rl.zoo.load("doorkey-ppo")
    a = rl.collect(agent, steps=120, sites=["encoder.1", "logits"], seed=7, n_envs=3)
    b = rl.collect(agent, steps=120, sites=["encoder.1", "logits"], seed=7, n_envs=3, store=tmp_path / "st")
    c = rl.collect(agent, steps=120, seed=8, n_envs=3)
    np.testing.assert_array_equal(a.obs, b.obs)
    assert isinstance(b.activations, ActivationStore)
    torch.testing.assert_close(a.features("encoder.1"), b.features("encoder.1"))
    assert a.activations["encoder.1"].shape == (120, 16, 6, 6)
    assert not np.array_equal(a.obs, c.obs)
    pooled = rl.collect(agent, steps=30, sites=["encoder.1"], pool="mean", seed=7, n_envs=3)
    torch.testing.assert_close(pooled.activations["encoder.1"], a.activations["encoder.1"][:30].mean((2, 3)))


def test_future_labels_and_summary(tmp_path):
    agent = rl.zoo.load("doorkey-ppo")
    ro = rl.collect(agent, episodes=6, seed=1)
    vals, valid = ro.future("agent_x", 2)
    for i in range(len(ro)):
        j = np.flatnonzero((ro.episode == ro.episode[i]) & (ro.step == ro.step[i] + 2))
        assert valid[i] == (j.size == 1)
        if j.size:
            assert vals[i] == ro.world["agent_x"][j[0]]
    d = ro.to_dict()
    assert d["episodes"] == 6 and 0.9 < d["mean_return"] <= 1.0
    path = ro.save(tmp_path / "ro")
    assert np.load(path)["world/agent_x"].shape == (len(ro),)


def test_remembered_rows_follow_visibility_per_episode():
    # T-maze: the cue is in view at position 0 only, so it is "remembered" on every later row; with 4 envs the
    # episodes' rows interleave, which the per-episode order must undo
    ro = rl.collect(rl.zoo.load("tmaze-recurrent"), episodes=12, seed=2, n_envs=4)
    assert ro.visible["cue"].any()
    np.testing.assert_array_equal(ro.remembered("cue"), ro.world["position"] >= 1)
    # DoorKey: a row is remembered exactly when the key is out of view now but was in view at an earlier step
    ro = rl.collect(rl.zoo.load("doorkey-ppo"), episodes=4, seed=0)
    want = [not ro.visible["key_x"][i] and any(ro.visible["key_x"][(ro.episode == ro.episode[i])
                                                                     & (ro.step < ro.step[i])])
            for i in range(len(ro))]
    np.testing.assert_array_equal(ro.remembered("key_x"), want)


def test_errors():
    agent = rl.zoo.load("cartpole-ppo")
    with pytest.raises(ValueError, match="exactly one"):
        rl.collect(agent)
    with pytest.raises(KeyError, match="closest"):
        rl.collect(agent, steps=10, sites=["memory.hh"])


def test_collect_leaves_no_hooks_and_interventions_apply():
    from interp_core.interventions import Ablate

    agent = rl.zoo.load("tmaze-recurrent")

    def hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in agent.model.modules())

    before = hooks()
    ro = rl.collect(agent, episodes=10, sites=["memory.h"], seed=0,
                    interventions={"memory.h": Ablate("zero")})
    assert hooks() == before
    assert torch.count_nonzero(ro.activations["memory.h"]) == 0  # the recorder sees the edited activation
    assert ro.to_dict()["mean_return"] < 1.0  # without memory the agent cannot follow the cue every time
    with pytest.raises(KeyError):
        rl.collect(agent, steps=5, sites=["nope"])
    assert hooks() == before
