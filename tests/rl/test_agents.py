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


# ---------------------------------------------------------------------------------------------- site axes
def _conv_channels_so_far(agent):
    """{site: out_channels of the last Conv2d at or before it} along the encoder's leaves (reference for axes)."""
    out, channels = {}, None
    for name in agent.default_sites:
        if name.startswith("encoder.") and name != "encoder.out":
            module = agent.model.get_submodule(agent.sites[name].module_path)
            if isinstance(module, nn.Conv2d):
                channels = module.out_channels
            out[name] = channels
    return out


@pytest.mark.parametrize("name", ["cartpole-ppo", "doorkey-ppo", "tmaze-recurrent", "memory-recurrent"])
def test_every_policy_site_has_the_right_axes(name):
    # truth: a 4-d activation of a conv stack is [batch, channels, h, w] with channels = the last conv's
    # out_channels; everything else in these policies is [batch, feature]; the observation follows the env
    agent = zoo.load(name)
    env = agent.make_env()
    obs = np.stack([env.reset(seed=s)[0] for s in range(3)])
    _, cache = agent.run_with_cache((obs, None, None), sites=agent.default_sites)
    channels = _conv_channels_so_far(agent)
    for site in agent.default_sites:
        act, axes = cache[site], agent.sites[site].axes
        assert cache.axes(site) == axes and len(axes) == act.dim(), site
        if site == "obs":
            continue
        if act.dim() == 4:
            assert axes == ("batch", "feature", "pos", "pos"), site
            assert act.shape[1] == channels[site], site
        else:
            assert act.dim() == 2 and axes == ("batch", "feature"), site
    # the obs site holds the observation exactly as the env emitted it (float), in the env's layout
    torch.testing.assert_close(cache["obs"], torch.as_tensor(obs, dtype=torch.float32))
    space = env.observation_space
    want = ("batch", "pos", "pos", "feature") if len(space.shape) == 3 else ("batch", "feature")
    assert agent.sites["obs"].axes == want == agent.input_axes
    if len(space.shape) == 3:  # MiniGrid: the feature axis is the (object, colour, state) code axis of size 3
        assert agent.sites["obs"].dims("feature") == (3,) and cache["obs"].shape[3] == 3 == space.shape[2]
    if agent.recurrent:
        hidden = agent.model.net.lstm_actor.hidden_size
        assert cache["memory.h"].shape[1] == cache["memory.c"].shape[1] == hidden


def test_minigrid_obs_positions_are_the_grid_cells():
    # editing the obs site at cell (2, 5) = editing the env observation's cell [2, 5, :] before the call
    agent = zoo.load("doorkey-ppo")
    env = agent.make_env()
    obs = np.stack([env.reset(seed=s)[0] for s in range(4)])

    def wipe(act, site):
        act = act.clone()
        act[:, 2, 5, :] = 0.0
        return act

    edited = agent.run_with_interventions((obs, None, None), {"obs": wipe})
    ref_obs = obs.copy()
    ref_obs[:, 2, 5, :] = 0
    torch.testing.assert_close(edited.logits, agent(ref_obs).logits)
    # the same policy-layout ([batch, 3, 7, 7]) batch gives the same outputs and the same obs activation
    out_cf, cache_cf = agent.run_with_cache((obs.transpose(0, 3, 1, 2), None, None), sites=["obs"])
    torch.testing.assert_close(cache_cf["obs"], torch.as_tensor(obs, dtype=torch.float32))
    torch.testing.assert_close(out_cf.logits, agent(obs).logits)


def test_plain_policy_obs_axes():
    cnn = agents.wrap(_CNNPolicy().eval(), obs_shape=(7, 7, 3))
    assert cnn.input_axes == ("batch", "pos", "pos", "feature")  # the env's images
    # the adapter answers for an input batch (what input attributions ask); unknown layouts give None
    assert cnn.adapter.input_axes(cnn.model, torch.rand(2, 7, 7, 3)) == cnn.input_axes
    assert cnn.adapter.input_axes(cnn.model, torch.rand(2, 3, 7, 7)) is None
    doorkey = zoo.load("doorkey-ppo")
    assert doorkey.adapter.input_axes(doorkey.model, torch.rand(2, 7, 7, 3)) == ("batch", "pos", "pos", "feature")
    assert doorkey.adapter.input_axes(doorkey.model, torch.rand(2, 3, 7, 7)) == ("batch", "feature", "pos", "pos")
    # with a preprocess that transposes, the obs site is what the network sees: channels first
    cnn.run_with_cache((torch.rand(2, 7, 7, 3), None, None), sites=["obs"])
    assert cnn.sites["obs"].axes == ("batch", "feature", "pos", "pos")
    gru = agents.wrap(_GRUPolicy(), obs_shape=(6,))
    assert gru.sites["obs"].axes == ("batch", "feature") == gru.input_axes
    assert gru.sites["memory.h"].axes == ("batch", "feature")
    given = agents.wrap(_CNNPolicy(), obs_shape=(7, 7, 3), obs_axes=("batch", "feature", "pos", "pos"))
    assert given.input_axes == ("batch", "feature", "pos", "pos")
    with pytest.raises(ValueError, match="obs_axes"):
        agents.wrap(_CNNPolicy(), obs_shape=(7, 7, 3), obs_axes=("batch", "pos", "feature"))


# ---------------------------------------------------------------------------------------------- the boundary
def test_hooked_model_of_a_raw_sb3_policy_has_the_canonical_sites():
    from interp_core import HookedModel

    agent = zoo.load("doorkey-ppo")
    policy = agent.model.net
    hm = HookedModel(policy)  # the rl adapter, found through the interp_suite.adapters entry point
    assert hm.adapter.name == "rl-policy"
    for site in ("obs", "encoder.0", "encoder.out", "policy.0", "value.0", "logits", "value"):
        assert site in hm.sites
    obs = _episode_obs(agent, 1, n=6)
    x = torch.as_tensor(obs.transpose(0, 3, 1, 2), dtype=torch.float32)  # SB3's own (channels-first) layout
    _, cache = hm.run_with_cache(x, sites=["obs", "encoder.out", "logits", "value"])
    _, ref = agent.run_with_cache((obs, None, None), sites=["encoder.out", "logits", "value"])
    for site in ("encoder.out", "logits", "value"):
        torch.testing.assert_close(cache[site], ref[site])
    torch.testing.assert_close(cache["obs"], x)
    assert hm.sites["obs"].axes == ("batch", "feature", "pos", "pos")  # channels first, as this input is
    # the agent's own step module through the plain constructor: the same canonical table as the Agent
    same = HookedModel(agent.model)
    assert same.sites.names == agent.sites.names
    assert [same.sites[n].axes for n in same.default_sites] == [agent.sites[n].axes for n in agent.default_sites]


def test_as_hooked_on_an_sb3_algorithm_gives_an_agent():
    from stable_baselines3 import PPO

    from interp_core.boundary import as_hooked

    algo = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", n_steps=64)
    agent = as_hooked(algo)
    assert isinstance(agent, agents.Agent)
    assert agent.env_id == "CartPole-v1" and agent.action_names == ["push_left", "push_right"]
    obs = torch.randn(8, 4)
    with torch.no_grad():
        dist = algo.policy.get_distribution(obs)
    torch.testing.assert_close(torch.log_softmax(agent(obs).logits, -1), dist.distribution.logits)
    ro = __import__("rl").collect(algo, steps=12, sites=["logits"], seed=0)  # collect takes the algorithm too
    assert len(ro) == 12 and ro.variables and ro.activations["logits"].shape == (12, 2)


# ---------------------------------------------------------------------------------------------- eval mode, device
class _DropoutPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Dropout(0.5))
        self.actor = nn.Linear(64, 2)


def test_act_runs_in_eval_mode_and_restores_flags():
    torch.manual_seed(0)
    net = _DropoutPolicy().train()
    agent = agents.wrap(net, obs_shape=(4,))
    assert agent.training  # the wrapper tells the truth about the policy's mode
    seen = []
    handle = net.encoder[2].register_forward_hook(lambda m, i, o: seen.append(m.training))
    obs = torch.randn(256, 4)
    actions, _ = agent.act(obs)
    handle.remove()
    with torch.no_grad():
        net.eval()
        ref = net.actor(net.encoder(obs)).argmax(-1).numpy()
        net.train()
    np.testing.assert_array_equal(actions, ref)
    assert seen == [False] and all(m.training for m in net.modules()) and agent.model.training


def test_device_is_cached_not_walked_per_step():
    agent = zoo.load("cartpole-ppo")
    calls = []
    original = agent.model.parameters

    def counting(*a, **k):
        calls.append(1)
        return original(*a, **k)

    agent.model.parameters = counting
    obs = _episode_obs(agent, 0, n=5)
    for o in obs:
        agent.act(o)
    __import__("rl").collect(agent, steps=40, seed=0)
    assert calls == []
    del agent.model.parameters
    # the cached slot follows the parameters wherever they go, also when moved through the wrapped policy
    net = _GRUPolicy()
    plain = agents.wrap(net, obs_shape=(6,))
    assert plain.model.device_ == torch.device("cpu")
    net.to("meta")
    assert plain.model.device_.type == "meta"
    plain.model.to_empty(device="cpu")  # through the wrapper this time
    assert plain.model.device_.type == "cpu"
