"""rl.collect: rollouts aligned with world labels and with activations recomputed independently."""

from __future__ import annotations

import gymnasium as gym
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


# ---------------------------------------------------------------------------------------------- any env, registry
class _CounterEnv(gym.Env):
    """A new env for the registry test: advance (1) or stay (0) along 5 cells; obs [pos / 5, 1]."""

    observation_space = gym.spaces.Box(0.0, 1.0, (2,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return np.array([0.0, 1.0], dtype=np.float32), {}

    def step(self, action):
        self.pos += int(action)
        done = self.pos >= 5
        return np.array([self.pos / 5, 1.0], dtype=np.float32), float(done), done, False, {}


def _counter_world(env):
    from rl.envs import Variable, WorldWrapper

    class CounterWorld(WorldWrapper):
        variables = (Variable("pos", "ordinal", "cells advanced"),)

        def world(self):
            return {"pos": self.env.unwrapped.pos}, {"pos": True}

    return CounterWorld(env)


class _TinyPolicy(torch.nn.Module):
    def __init__(self, n_in=2, n_actions=2):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(n_in, 8), torch.nn.Tanh())
        self.actor = torch.nn.Linear(8, n_actions)


def test_a_new_env_is_one_registration():
    from rl import agents, envs

    spec = envs.register(envs.EnvSpec("Counter-v0", make=lambda env_id, **kw: _counter_world(_CounterEnv()),
                                      action_names=("stay", "advance")))
    try:
        torch.manual_seed(0)
        agent = agents.wrap(_TinyPolicy(), obs_shape=(2,), env_id="Counter-v0")
        assert agent.action_names == ["stay", "advance"] and agent.action_index("advance") == 1
        ro = rl.collect(agent, episodes=3, sites=["logits"], seed=0, deterministic=False)
        assert [v.name for v in ro.variables] == ["pos"] and spec.examples == ("Counter-v0",)
        for e in ro.episode_ids:  # truth: the position is the number of 'advance' actions taken before the row
            rows = np.flatnonzero(ro.episode == e)
            before = np.concatenate([[0], np.cumsum(ro.actions[rows])[:-1]])
            np.testing.assert_array_equal(ro.world["pos"][rows], before)
            assert ro.world["pos"][rows[-1]] + ro.actions[rows[-1]] == 5
        np.testing.assert_allclose(ro.obs[:, 0] * 5, ro.world["pos"], atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(ro.activations["logits"], agent(ro.obs).logits)
    finally:
        envs.unregister("Counter-v0")
    with pytest.raises(ValueError, match="no world-state recorder"):
        envs.make("Counter-v0")


def test_collect_on_a_plain_gymnasium_env_with_and_without_world_function():
    agent = rl.zoo.load("cartpole-ppo")
    wrapped = rl.collect(agent, "CartPole-v1", steps=60, seed=4)
    plain = rl.collect(agent, gym.make("CartPole-v1"), steps=60, sites=["obs", "logits"], seed=4)
    assert plain.world == {} and plain.visible == {} and plain.variables == ()
    np.testing.assert_array_equal(plain.obs, wrapped.obs)  # the world wrapper changes nothing the agent sees
    np.testing.assert_array_equal(plain.actions, wrapped.actions)
    with torch.no_grad():
        torch.testing.assert_close(plain.activations["logits"], agent(plain.obs).logits)
    torch.testing.assert_close(plain.activations["obs"], torch.as_tensor(plain.obs))
    assert plain.to_dict()["visible_rate"] == {}

    ro = rl.collect(agent, gym.make("CartPole-v1"), steps=60, seed=4,
                    world=lambda env: {"theta": float(env.unwrapped.state[2]),
                                       "leaning_right": bool(env.unwrapped.state[2] > 0)})
    assert [(v.name, v.kind) for v in ro.variables] == [("theta", "continuous"), ("leaning_right", "categorical")]
    np.testing.assert_allclose(ro.world["theta"], ro.obs[:, 2], rtol=1e-6, atol=1e-7)  # obs is the state
    np.testing.assert_array_equal(ro.world["leaning_right"], (ro.obs[:, 2] > 0).astype(int))
    # a world function adds to a registered env's own variables
    both = rl.collect(agent, steps=20, seed=4, world=lambda env: {"speed": abs(float(env.unwrapped.state[1]))})
    assert list(both.world) == ["x", "x_dot", "theta", "theta_dot", "speed"]
    np.testing.assert_allclose(both.world["speed"], np.abs(both.world["x_dot"]), rtol=1e-6)
    # any gymnasium id that is not registered: built with gym.make, activations only
    torch.manual_seed(0)
    acro = rl.agents.wrap(_TinyPolicy(6, 3), obs_shape=(6,), env_id="Acrobot-v1")
    ro = rl.collect(acro, steps=15, sites=["encoder.out"], seed=0)
    assert ro.variables == () and ro.activations["encoder.out"].shape == (15, 8) and acro.action_names is None
    with pytest.raises(ValueError, match="neither registered"):
        rl.collect(acro, "NoSuchEnv-v9", steps=5)
    with pytest.raises(ValueError, match="n_envs"):
        rl.collect(agent, gym.make("CartPole-v1"), steps=5, n_envs=2)


def test_collect_runs_in_eval_mode_and_restores_flags():
    torch.manual_seed(0)
    net = torch.nn.Module()
    net.encoder = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.ReLU(), torch.nn.Dropout(0.5))
    net.actor = torch.nn.Linear(64, 2)
    net.train()
    agent = rl.agents.wrap(net, obs_shape=(4,), env_id="CartPole-v1")
    ro = rl.collect(agent, steps=40, sites=["encoder.2", "logits"], seed=0)
    with torch.no_grad():
        net.eval()
        ref = net.actor(net.encoder(torch.as_tensor(ro.obs)))
        net.train()
    torch.testing.assert_close(ro.activations["logits"], ref)  # dropout was off during the rollout
    assert all(m.training for m in net.modules()) and agent.model.training
    replayed = rl.rollouts.replay(agent, ro, ["logits"], progress=False)
    torch.testing.assert_close(replayed["logits"], ref)
    assert all(m.training for m in net.modules())


def test_progress_bar_only_when_asked(capsys):
    agent = rl.zoo.load("cartpole-ppo")
    rl.collect(agent, steps=20, seed=0, progress=True)
    assert "rl.collect" in capsys.readouterr().err
    rl.collect(agent, episodes=1, seed=0, progress=False)
    rl.collect(agent, steps=20, seed=0)  # None: only on a terminal, and pytest's capture is not one
    assert capsys.readouterr().err == ""


def test_continuous_agent_rollout_replay_and_save(tmp_path):
    """A SAC agent (continuous actions): [N, action_dim] actions, as SB3's predict gives them; replaying the
    recorded observations gives the recorded means; the arrays save."""
    from stable_baselines3 import SAC

    from rl.rollouts import replay

    model = SAC("MlpPolicy", "Pendulum-v1", seed=0, device="cpu", buffer_size=100, policy_kwargs=dict(net_arch=[8]))
    agent = rl.agents.wrap(model)
    ro = rl.collect(agent, "Pendulum-v1", steps=10, sites=["logits", "critic.q0"])
    assert ro.actions.shape == (10, 1) and ro.activations["critic.q0"].shape == (10, 1)
    np.testing.assert_allclose(ro.actions, model.predict(ro.obs, deterministic=True)[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(replay(agent, ro, ["logits"])["logits"].numpy(), ro.logits, rtol=1e-6, atol=1e-6)
    saved = np.load(ro.save(tmp_path / "ro"))
    np.testing.assert_array_equal(saved["actions"], ro.actions)


@pytest.mark.parametrize("name,sites", [("cartpole-ppo", ["obs", "policy.1", "logits", "value"]),
                                        ("tmaze-recurrent", ["memory.h", "memory.c", "policy.1", "logits"])])
def test_replayed_recording_equals_recording_during_the_rollout(name, sites):
    """Activations are recorded by replaying the logged inputs (and recurrent states) in batches after the
    rollout; an identity intervention forces the per-step hook path. Same rows, same values."""
    from interp_core.interventions import Replace

    agent = rl.zoo.load(name)
    replayed = rl.collect(agent, steps=300, n_envs=3, sites=sites, seed=4)
    hooked = rl.collect(agent, steps=300, n_envs=3, sites=sites, seed=4,
                        interventions={sites[-1]: Replace(lambda a, s: a)})
    np.testing.assert_array_equal(replayed.actions, hooked.actions)
    for s in sites:
        assert replayed.activations[s].shape == hooked.activations[s].shape
        torch.testing.assert_close(replayed.activations[s], hooked.activations[s], atol=1e-5, rtol=1e-5)
