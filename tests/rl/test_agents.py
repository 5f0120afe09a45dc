"""rl.agents: canonical policy sites checked against stable-baselines3's own computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from interp_core.interventions import Patch
from rl import agents, zoo


def _episode_obs(agent, seed, n=40):
    env = agent.make_env()
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = [obs]
    for _ in range(n - 1):
        obs, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
        if term or trunc:
            obs, _ = env.reset(seed=int(rng.integers(1000)))
        out.append(obs)
    return np.stack(out)


@pytest.mark.parametrize("name", ["cartpole-ppo", "doorkey-ppo"])
def test_feedforward_logits_and_value_match_sb3(name):
    agent = zoo.load(name)
    policy = agent.model.net
    obs = _episode_obs(agent, 0)
    out, cache = agent.run_with_cache((obs, None, None), sites=["obs", "encoder.out", "logits", "value"])
    obs_t, _ = policy.obs_to_tensor(obs)
    with torch.no_grad():
        dist = policy.get_distribution(obs_t)
        values = policy.predict_values(obs_t)[:, 0]
        feats = policy.extract_features(obs_t)
    torch.testing.assert_close(torch.log_softmax(cache["logits"], -1), dist.distribution.logits)
    torch.testing.assert_close(cache["value"][:, 0], values)
    torch.testing.assert_close(out.value, values)
    torch.testing.assert_close(cache["encoder.out"], feats)
    sb3_actions, _ = policy.predict(obs, deterministic=True)
    np.testing.assert_array_equal(agent.act(obs)[0], sb3_actions)
    assert agent.act(obs[0])[0] == int(sb3_actions[0])


def test_recurrent_steps_match_sb3_and_memory_is_the_lstm_state():
    agent = zoo.load("tmaze-recurrent")
    policy = agent.model.net
    env = agent.make_env()
    obs, _ = env.reset(seed=5)
    state, sb3_state, start, done = agent.initial_state(1), None, np.array([True]), False
    while not done:
        out, cache = agent.run_with_cache((obs, state, start), sites=["memory.h", "memory.c", "logits"])
        sb3_action, sb3_state_new = policy.predict(obs, state=sb3_state, episode_start=start, deterministic=True)
        obs_t, _ = policy.obs_to_tensor(obs)
        lstm = (torch.zeros(1, 1, 32), torch.zeros(1, 1, 32)) if sb3_state is None else tuple(
            torch.as_tensor(s) for s in sb3_state)
        with torch.no_grad():
            dist, (h, c) = policy.get_distribution(obs_t, lstm, torch.as_tensor(start, dtype=torch.float32))
        torch.testing.assert_close(torch.log_softmax(cache["logits"], -1), dist.distribution.logits)
        torch.testing.assert_close(cache["memory.h"], h[-1])
        torch.testing.assert_close(cache["memory.c"], c[-1])
        action, state = agent.act(obs, state, start)
        assert action == int(sb3_action)
        sb3_state, start = sb3_state_new, np.array([False])
        obs, _, done, _, _ = env.step(action)


def _tmaze_trace(agent, cue, length, interventions_at=None):
    """Junction logits of one T-maze episode with a fixed cue; optional {step: {site: intervention}}."""
    env = agent.make_env()
    obs, _ = env.reset(seed=0, options={"cue": cue, "corridor_length": length})
    state, start, t, caches = agent.initial_state(1), np.array([True]), 0, []
    while True:
        ivs = (interventions_at or {}).get(t, {})
        out, cache = agent.run_with_cache((obs, state, start), sites=["memory.h", "memory.c"], interventions=ivs)
        caches.append(cache)
        state, start = out.state, np.array([False])
        obs, _, done, _, _ = env.step(int(out.logits.argmax()))
        t += 1
        if done:
            return out.logits, caches


def test_patching_memory_changes_the_next_steps():
    agent = zoo.load("tmaze-recurrent")
    logits_left, caches_left = _tmaze_trace(agent, cue=0, length=4)
    logits_right, caches_right = _tmaze_trace(agent, cue=1, length=4)
    assert logits_left.argmax() == 0 and logits_right.argmax() == 1
    # patch both h and c at step 0 with the other cue's: the rest of the episode is the other cue's episode
    swap = {0: {"memory.h": Patch(caches_right[0]["memory.h"]), "memory.c": Patch(caches_right[0]["memory.c"])}}
    patched, patched_caches = _tmaze_trace(agent, cue=0, length=4, interventions_at=swap)
    torch.testing.assert_close(patched, logits_right)
    torch.testing.assert_close(patched_caches[3]["memory.h"], caches_right[3]["memory.h"])
    # patching h alone (the carried hidden state) already changes the next step's distribution
    h_only, h_caches = _tmaze_trace(agent, cue=0, length=4,
                                    interventions_at={0: {"memory.h": Patch(caches_right[0]["memory.h"])}})
    assert not torch.allclose(h_caches[1]["memory.h"], caches_left[1]["memory.h"])
    assert not torch.allclose(h_only, logits_left)


def test_recurrent_policy_with_critic_lstm_matches_sb3():
    import gymnasium as gym
    from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy

    torch.manual_seed(0)
    policy = RecurrentActorCriticPolicy(gym.spaces.Box(-1, 1, (5,)), gym.spaces.Discrete(3), lambda _: 0.0,
                                        lstm_hidden_size=8, n_lstm_layers=2, enable_critic_lstm=True)
    agent = agents.wrap(policy)
    obs = torch.randn(4, 5)
    state = tuple(torch.randn_like(s) for s in agent.initial_state(4))
    start = torch.tensor([0.0, 1.0, 0.0, 1.0])
    out = agent(obs, state, start)
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    with torch.no_grad():
        _, values, _, new = policy.forward(obs, RNNStates(state[:2], state[2:]), start, deterministic=True)
        dist, _ = policy.get_distribution(obs, state[:2], start)
    torch.testing.assert_close(torch.log_softmax(out.logits, -1), dist.distribution.logits)
    torch.testing.assert_close(out.value, values[:, 0])
    for mine, theirs in zip(out.state, (*new.pi, *new.vf)):
        torch.testing.assert_close(mine, theirs)


class _GRUPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 16), nn.ReLU())
        self.memory = nn.GRUCell(16, 12)
        self.actor = nn.Sequential(nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 3))
        self.critic = nn.Linear(12, 1)


class _CNNPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 32))
        self.actor = nn.Linear(32, 4)

    def preprocess(self, obs):
        return obs.permute(0, 3, 1, 2)  # HWC env images -> CHW


def test_plain_gru_policy_sites_follow_the_protocol():
    torch.manual_seed(0)
    net = _GRUPolicy()
    agent = agents.wrap(net, obs_shape=(6,))
    for site in ("obs", "encoder.0", "encoder.1", "encoder.out", "memory.h", "policy.0", "policy.2", "logits",
                 "value"):
        assert site in agent.sites
    xs = torch.randn(3, 4, 6)  # 3 steps, batch 4
    h = torch.zeros(4, 12)
    state = None
    for t in range(3):
        out, cache = agent.run_with_cache((xs[t], state, None), sites=["memory.h", "logits", "value"])
        h = net.memory(net.encoder(xs[t]), h)  # the reference computation by hand
        torch.testing.assert_close(cache["memory.h"], h)
        torch.testing.assert_close(cache["logits"], net.actor(h))
        torch.testing.assert_close(out.value, net.critic(h)[:, 0])
        state = out.state
    # episode_start resets the state to zeros for the flagged rows
    out = agent(xs[0], state, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(out.state[0][0], net.memory(net.encoder(xs[0][:1]), torch.zeros(1, 12))[0])
    # patching memory.h changes the carried state
    zero = agent.run_with_interventions((xs[0], state, None), {"memory.h": lambda a, s: torch.zeros_like(a)})
    assert torch.count_nonzero(zero.state[0]) == 0


def test_plain_cnn_policy_and_errors():
    torch.manual_seed(0)
    agent = agents.wrap(_CNNPolicy(), obs_shape=(7, 7, 3))
    x = torch.rand(2, 7, 7, 3)
    out, cache = agent.run_with_cache((x, None, None), sites=["obs", "encoder.0", "logits"])
    assert cache.axes("encoder.0") == ("batch", "feature", "pos", "pos") and cache["obs"].shape == (2, 3, 7, 7)
    torch.testing.assert_close(cache["logits"], agent.model.net.actor(agent.model.net.encoder(x.permute(0, 3, 1, 2))))
    assert torch.all(out.value == 0) and out.state is None
    with pytest.raises(TypeError, match="encoder"):
        agents.wrap(nn.Linear(3, 2), obs_shape=(3,))
    with pytest.raises(ValueError, match="does not fit"):
        agent(torch.rand(2, 5, 5, 3))


def test_zoo_names_and_random_twin():
    assert zoo.parse_name("doorkey-ppo-random@seed2") == ("doorkey-ppo", 2, True)
    assert zoo.parse_name("cartpole-ppo") == ("cartpole-ppo", 0, False)
    trained, twin = zoo.load("cartpole-ppo@seed1"), zoo.load("cartpole-ppo@seed1", random_init=True)
    assert twin.card["random_init"] and not trained.card["random_init"]
    assert twin.sites.names == trained.sites.names
    same = zoo.load("cartpole-ppo-random@seed1")
    for (k, a), (_, b) in zip(twin.model.state_dict().items(), same.model.state_dict().items()):
        torch.testing.assert_close(a, b)  # the twin is a deterministic function of the seed
    assert any(not torch.equal(a, b) for a, b in zip(twin.model.state_dict().values(),
                                                     trained.model.state_dict().values()))
    with pytest.raises(KeyError, match="available"):
        zoo.load("pong-ppo")
