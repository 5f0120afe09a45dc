"""Every stable-baselines3 algorithm as an Agent: the wrapped sites equal SB3's own outputs (q-values, action
means, log-stds, critics, predict actions), continuous actions in rollouts and metrics, random-init twins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_contrib import QRDQN, TQC, TRPO, MaskablePPO, RecurrentPPO
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
from torch import nn

import rl
from interp_core import HookedModel
from interp_core.boundary import as_hooked
from interp_core.errors import InputError
from interp_core.interventions import Replace
from rl import metrics
from rl.agents import Agent, random_twin, wrap


def small() -> dict:
    return dict(net_arch=[16])  # a fresh dict each time: SB3 writes into policy_kwargs


def _algo(cls, env: str, **kw):
    policy = "MlpLstmPolicy" if cls is RecurrentPPO else "MlpPolicy"
    kwargs = dict(policy_kwargs=small() if cls is not RecurrentPPO else dict(net_arch=[16], lstm_hidden_size=8))
    if cls in (SAC, TD3, DDPG, TQC, DQN, QRDQN):
        kwargs["buffer_size"] = 1000
    return cls(policy, env, seed=0, device="cpu", **kwargs, **kw)


def _obs(model, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo = torch.as_tensor(np.maximum(model.observation_space.low, -3), dtype=torch.float32)
    hi = torch.as_tensor(np.minimum(model.observation_space.high, 3), dtype=torch.float32)
    return lo + (hi - lo) * torch.rand(n, *model.observation_space.shape, generator=g)


@pytest.mark.parametrize("cls", [PPO, A2C, TRPO])
def test_gaussian_policy_sites_equal_sb3(cls):
    model = _algo(cls, "Pendulum-v1")
    agent = as_hooked(model)
    assert isinstance(agent, Agent) and agent.action_kind == "gaussian" and agent.continuous
    obs = _obs(model)
    with agent.analysis(), torch.no_grad():
        out, cache = agent.run_with_cache((obs, None, None), sites=["logits", "log_std", "value"])
        dist = model.policy.get_distribution(obs)
        ref_value = model.policy.predict_values(obs)
    torch.testing.assert_close(cache["logits"], dist.distribution.mean)
    torch.testing.assert_close(cache["log_std"], dist.distribution.stddev.log())
    torch.testing.assert_close(out.value, ref_value[:, 0])
    actions, _ = agent.act(obs.numpy())
    ref, _ = model.predict(obs.numpy(), deterministic=True)
    np.testing.assert_allclose(actions, ref, rtol=1e-6, atol=1e-6)
    # metrics on actions: the Gaussian log-prob of SB3's own distribution
    a = torch.randn(obs.shape[0], 1)
    torch.testing.assert_close(metrics.gaussian_log_prob(a)(out), dist.log_prob(a))
    torch.testing.assert_close(metrics.action_mean(0)(out), dist.distribution.mean[:, 0])
    torch.testing.assert_close(metrics.action_log_std(0)(out), dist.distribution.stddev.log()[:, 0])
    torch.testing.assert_close(metrics.chosen_action_log_prob()(out), dist.log_prob(dist.distribution.mean))


def test_continuous_outputs_refuse_discrete_metrics():
    agent = wrap(_algo(PPO, "Pendulum-v1"))
    out = agent(torch.zeros(3, 3))
    for m in (metrics.action_log_prob(0), metrics.action_logit_diff(0, 1), metrics.action_prob(0), metrics.q_value(0)):
        with pytest.raises(InputError, match="continuous|Q-network"):
            m(out)
    with pytest.raises(IndexError, match="out of range"):
        metrics.action_mean(3)(out)


@pytest.mark.parametrize("cls", [DQN, QRDQN])
def test_q_network_sites_equal_sb3(cls):
    model = _algo(cls, "CartPole-v1")
    agent = as_hooked(model)
    assert isinstance(agent, Agent) and agent.action_kind == "q"
    obs = _obs(model)
    with agent.analysis(), torch.no_grad():
        out, cache = agent.run_with_cache((obs, None, None), sites=["q_values", "logits", "value", "policy.0"])
        if cls is DQN:
            q = model.policy.q_net(obs)
            hidden = model.policy.q_net.q_net[0](obs)
        else:
            q = model.policy.quantile_net(obs).mean(dim=1)
            hidden = model.policy.quantile_net.quantile_net[0](obs)
    torch.testing.assert_close(cache["q_values"], q)
    torch.testing.assert_close(cache["logits"], q)
    torch.testing.assert_close(cache["policy.0"], hidden)
    torch.testing.assert_close(out.value, q.max(-1).values)
    torch.testing.assert_close(metrics.q_value(1)(out), q[:, 1])
    actions, _ = agent.act(obs.numpy())
    np.testing.assert_array_equal(actions, model.predict(obs.numpy(), deterministic=True)[0])


@pytest.mark.parametrize("cls", [SAC, TQC])
def test_squashed_gaussian_actor_and_critics_equal_sb3(cls):
    model = _algo(cls, "Pendulum-v1")
    agent = as_hooked(model)
    assert agent.action_kind == "squashed_gaussian"
    obs = _obs(model)
    actor, critic = model.policy.actor, model.policy.critic
    with agent.analysis(), torch.no_grad():
        out, cache = agent.run_with_cache((obs, None, None), sites=["logits", "log_std", "action", "critic.q0",
                                                                    "critic.q1"])
        mean, log_std, _ = actor.get_action_dist_params(obs)
        a = actor(obs, deterministic=True)
        qs = critic(obs, a)
    torch.testing.assert_close(cache["logits"], mean)
    torch.testing.assert_close(cache["log_std"], log_std)
    torch.testing.assert_close(cache["action"], a)
    if cls is SAC:
        torch.testing.assert_close(cache["critic.q0"], qs[0])
        torch.testing.assert_close(cache["critic.q1"], qs[1])
        torch.testing.assert_close(out.value, torch.min(qs[0], qs[1])[:, 0])
    else:  # TQC: [batch, n_critics, n_quantiles]
        torch.testing.assert_close(cache["critic.q0"], qs[:, 0])
        torch.testing.assert_close(out.value, qs.mean(-1).min(-1).values)
    actions, _ = agent.act(obs.numpy())
    np.testing.assert_allclose(actions, model.predict(obs.numpy(), deterministic=True)[0], rtol=1e-5, atol=1e-5)
    # SB3's squashed-Gaussian log-prob of an action in [-1, 1]
    act = torch.rand(obs.shape[0], 1) * 1.8 - 0.9
    dist = actor.action_dist.proba_distribution(mean, log_std)
    torch.testing.assert_close(metrics.gaussian_log_prob(act)(out), dist.log_prob(act), rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        metrics.gaussian_log_prob(torch.full((obs.shape[0], 1), 1.5))(out)


@pytest.mark.parametrize("cls", [TD3, DDPG])
def test_deterministic_actor_and_critics_equal_sb3(cls):
    model = _algo(cls, "Pendulum-v1")
    agent = as_hooked(model)
    assert agent.action_kind == "deterministic"
    obs = _obs(model)
    with agent.analysis(), torch.no_grad():
        out, cache = agent.run_with_cache((obs, None, None), sites=["logits", "critic.q0", "policy.0"])
        a = model.policy.actor(obs)
        qs = model.policy.critic(obs, a)
    torch.testing.assert_close(cache["logits"], a)
    torch.testing.assert_close(cache["policy.0"], model.policy.actor.mu[0](obs))
    torch.testing.assert_close(cache["critic.q0"], qs[0])
    torch.testing.assert_close(out.value, torch.stack(qs, 0).min(0).values[:, 0])
    np.testing.assert_allclose(agent.act(obs.numpy())[0], model.predict(obs.numpy(), deterministic=True)[0],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="deterministic"):
        metrics.gaussian_log_prob(torch.zeros(1))(out)


def test_recurrent_gaussian_steps_equal_sb3():
    model = _algo(RecurrentPPO, "Pendulum-v1")
    agent = wrap(model)
    assert agent.recurrent and agent.action_kind == "gaussian"
    obs = _obs(model, n=4)
    policy = model.policy
    state, ref_state = None, None
    n_envs = obs.shape[0]
    lstm_shape = (policy.lstm_actor.num_layers, n_envs, policy.lstm_actor.hidden_size)
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    zeros = (torch.zeros(lstm_shape), torch.zeros(lstm_shape))
    ref_state = RNNStates(zeros, zeros)
    with agent.analysis(), torch.no_grad():
        for t in range(3):
            starts = torch.full((n_envs,), float(t == 0))
            out = agent(obs + t, state, starts.numpy())
            state = out.state
            dist, pi_state = policy.get_distribution(obs + t, ref_state.pi, starts)
            ref_state = RNNStates(pi_state, pi_state)
            torch.testing.assert_close(out.logits, dist.distribution.mean)


def test_maskable_ppo_is_claimed():
    model = MaskablePPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", policy_kwargs=small())
    agent = as_hooked(model)
    obs = _obs(model)
    with torch.no_grad():
        out = agent(obs)
        ref = model.policy.get_distribution(obs).distribution.logits
    torch.testing.assert_close(torch.log_softmax(out.logits, -1), ref)


def test_raw_off_policy_policy_gets_generic_sites():
    model = _algo(SAC, "Pendulum-v1")
    hm = HookedModel(model.policy)
    assert "actor.mu" in hm.sites


@pytest.mark.parametrize("cls", [PPO, SAC, TD3])
def test_continuous_rollout_closed_loop(cls):
    model = _algo(cls, "Pendulum-v1")
    agent = wrap(model)
    ro = rl.collect(agent, "Pendulum-v1", steps=12, seed=0)
    assert ro.actions.shape == (12, 1)
    ref, _ = model.predict(ro.obs, deterministic=True)
    np.testing.assert_allclose(ro.actions, ref, rtol=1e-5, atol=1e-5)
    # closed loop: zeroing the mean (PPO, SAC) / the actor output (TD3) makes every action the middle of the box
    zero = rl.collect(agent, "Pendulum-v1", steps=6, seed=0,
                      interventions={"logits": Replace(lambda a, s: torch.zeros_like(a))})
    np.testing.assert_allclose(zero.actions, 0.0, atol=1e-6)
    sampled = rl.collect(agent, "Pendulum-v1", steps=6, seed=0, deterministic=False)
    assert np.all(np.abs(sampled.actions) <= 2.0 + 1e-6)


def test_tiny_trained_dqn_sites_still_equal_sb3():
    model = DQN("MlpPolicy", "CartPole-v1", seed=0, device="cpu", policy_kwargs=small(), learning_starts=50,
                train_freq=4, buffer_size=500)
    model.learn(200)
    agent = wrap(model)
    obs = _obs(model)
    with torch.no_grad():
        torch.testing.assert_close(agent(obs).logits, model.policy.q_net(obs))


# ---------------------------------------------------------------------------------------------- twins
def test_random_twin_of_user_agent_equals_zoo_twin():
    """A non-zoo agent (no name) of the zoo architecture: the twin rebuilt from its class and constructor
    arguments under the seed is exactly the zoo's random-init twin (SB3's own init)."""
    trained = rl.zoo.load("tmaze-recurrent")
    user = Agent(type(trained.model)(trained.model.net), env_id="TMaze-v0", name=None)
    user.name = None
    twin = random_twin(user, seed=2)
    ref = rl.zoo.load("tmaze-recurrent-random@seed2")
    a, b = twin.model.net.state_dict(), ref.model.net.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert any(not torch.equal(a[k], trained.model.net.state_dict()[k]) for k in a)


@pytest.mark.parametrize("cls,env", [(SAC, "Pendulum-v1"), (DQN, "CartPole-v1"), (TD3, "Pendulum-v1")])
def test_random_twin_any_sb3_agent(cls, env):
    agent = wrap(_algo(cls, env))
    t1, t1b, t2 = random_twin(agent, seed=1), agent.random_twin(seed=1), random_twin(agent, seed=2)
    sd, s1, s1b, s2 = (m.model.net.state_dict() for m in (agent, t1, t1b, t2))
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in s1.items()}
    assert all(torch.equal(s1[k], s1b[k]) for k in s1)
    assert any(not torch.equal(s1[k], s2[k]) for k in s1 if s1[k].is_floating_point())
    assert type(t1.model) is type(agent.model) and t1.action_kind == agent.action_kind
    assert t1.name.endswith("-random@seed1") and not t1.model.training


def test_random_twin_plain_policy_reinitialises_every_layer():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
            self.memory = nn.GRUCell(8, 8)
            self.actor = nn.Linear(8, 2)

    net = Net()
    agent = wrap(net, obs_shape=(4,))
    twin = random_twin(agent, seed=5)
    ref = Net()
    torch.manual_seed(5)
    for m in ref.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    for k, v in twin.model.net.state_dict().items():
        torch.testing.assert_close(v, ref.state_dict()[k], rtol=0, atol=0)
    assert twin.model.net is not net and twin.recurrent


def test_worldmodel_twin_call_for_user_agent():
    """The exact call rl.worldmodel should make for an agent that is not from the zoo."""
    agent = wrap(_algo(PPO, "CartPole-v1"))
    twin = random_twin(agent)
    assert isinstance(twin, Agent) and twin.card["random_init"] and twin.card["seed"] == 0
