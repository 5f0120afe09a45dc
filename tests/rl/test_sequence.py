"""Time as an axis: a recurrent agent's episode as a sequence model (rl.sequence.EpisodeModel), checked
against sb3-contrib's own recurrent policy and a hand-written step-by-step loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rl
from interp_core import HookedModel
from interp_core.boundary import as_hooked
from interp_core.errors import InputError
from interp_core.interventions import Patch
from interp_core.patching import patch_sweep
from rl import metrics
from rl.sequence import EpisodeModel, EpisodeOutput, episodes

L = 4
T = L + 2  # cue, L corridor cells, junction


def tmaze_episode(cue: int, length: int = L) -> np.ndarray:
    o = np.zeros((length + 2, 4), np.float32)
    o[0, cue] = 1
    o[1:length + 1, 2] = 1
    o[length + 1, 3] = 1
    return o


@pytest.fixture(scope="module")
def agent():
    return rl.zoo.load("tmaze-recurrent")


def hand_loop(policy, obs, patch_t=None, h_src=None, c_src=None):
    """The T-maze policy's pieces (SB3's own modules) stepped by hand, ``h`` (and ``c``) of step ``patch_t``
    replaced by the source episode's: final logits of every step and the hidden states."""
    B, steps = obs.shape[:2]
    n = policy.lstm_actor.hidden_size
    h, c = torch.zeros(1, B, n), torch.zeros(1, B, n)
    logits, hs = [], []
    with torch.no_grad() if not obs.requires_grad else torch.enable_grad():
        for t in range(steps):
            feat = policy.features_extractor(obs[:, t])
            out, (h, c) = policy.lstm_actor(feat.unsqueeze(0), (h, c))
            if t == patch_t:
                h = h_src[:, t].unsqueeze(0)
                if c_src is not None:
                    c = c_src[:, t].unsqueeze(0)
            hs.append(h[0])
            logits.append(policy.action_net(policy.mlp_extractor.forward_actor(h[0])))
    return torch.stack(logits, 1), torch.stack(hs, 1)


def test_unroll_equals_sb3_recurrent_policy(agent):
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    g = torch.Generator().manual_seed(0)
    obs = (torch.rand(3, T, 4, generator=g) > 0.5).float()
    model = EpisodeModel(agent, length=T)
    with torch.no_grad():
        out = model(obs)
    assert isinstance(out, EpisodeOutput) and out.logits.shape == (3, T, 2) and out.value.shape == (3, T)
    policy = agent.model.net
    n = policy.lstm_actor.hidden_size
    zeros = (torch.zeros(1, 3, n), torch.zeros(1, 3, n))
    states = RNNStates(zeros, zeros)
    with torch.no_grad():
        for t in range(T):
            starts = torch.full((3,), float(t == 0))
            value = policy.predict_values(obs[:, t], states.vf, starts)
            dist, pi = policy.get_distribution(obs[:, t], states.pi, starts)
            states = RNNStates(pi, pi)
            torch.testing.assert_close(torch.log_softmax(out.logits[:, t], -1), dist.distribution.logits)
            torch.testing.assert_close(out.value[:, t], value[:, 0])
    torch.testing.assert_close(out.logits, hand_loop(policy, obs)[0])


def test_time_axis_patch_equals_hand_loop(agent):
    odd = [tmaze_episode(0), tmaze_episode(1)]
    for o in odd:  # a second pair that differs: a junction-like cell in the corridor
        o[2] = [0, 0, 0, 1]
    clean = torch.as_tensor(np.stack([tmaze_episode(0), odd[0]]))
    corrupted = torch.as_tensor(np.stack([tmaze_episode(1), odd[1]]))
    model = EpisodeModel(agent, length=T)
    metric = metrics.at_step(metrics.action_logit_diff(0, 1), -1)
    res = patch_sweep(model, clean=clean, corrupted=corrupted, sites=["memory.h"], metric=metric)
    assert res.effects["memory.h"].shape == (T,) and res.grid_axes["memory.h"] == ("pos",)
    policy = agent.model.net
    _, h_clean = hand_loop(policy, clean)
    logit_diff = lambda z: (z[:, -1, 0] - z[:, -1, 1]).mean()  # noqa: E731
    m_clean = logit_diff(hand_loop(policy, clean)[0])
    m_corr = logit_diff(hand_loop(policy, corrupted)[0])
    for t in range(T):
        patched, _ = hand_loop(policy, corrupted, patch_t=t, h_src=h_clean)
        torch.testing.assert_close(res.metric_values["memory.h"][t], logit_diff(patched), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(res.effects["memory.h"][t], (logit_diff(patched) - m_corr) / (m_clean - m_corr),
                                   rtol=1e-4, atol=1e-4)
    # the junction reads h directly: patching it there (and at the last corridor cell) flips the turn
    assert res.effects["memory.h"][L] > 0.5 and res.effects["memory.h"][L + 1] > 0.5


def test_time_site_patch_equals_per_call_site_patch(agent):
    """Patching memory.h at step t (time site) is patching the step module's t-th call (per-call site), which
    also serves gradients: attribution patching over steps runs on the per-call sites."""
    from interp_core.patching import attribution_patching

    clean = torch.as_tensor(tmaze_episode(0))[None]
    corrupted = torch.as_tensor(tmaze_episode(1))[None]
    model = EpisodeModel(agent, length=T)
    metric = metrics.at_step(metrics.action_logit_diff(0, 1), -1)
    per_call = [f"agent.memory_h#{t}" for t in range(T)]
    timed = patch_sweep(model, clean=clean, corrupted=corrupted, sites="memory.h", metric=metric)
    calls = patch_sweep(model, clean=clean, corrupted=corrupted, sites=per_call, metric=metric, per="site")
    torch.testing.assert_close(timed.effects["memory.h"], torch.stack([calls.effects[s].reshape(()) for s in per_call]))
    approx = attribution_patching(model, clean=clean, corrupted=corrupted, sites=per_call, metric=metric, per="site")
    assert all(torch.isfinite(approx.effects[s]).all() for s in per_call)


@pytest.mark.parametrize("length", [3, 6])
def test_tmaze_state_patch_at_corridor_steps_flips_final_turn(agent, length):
    """Cue at step 0 only: the LSTM state (h and c) at any corridor step, taken from the episode with the other
    cue, carries that cue to the junction."""
    steps = length + 2
    hm = as_hooked(EpisodeModel(agent, length=steps))
    left = torch.as_tensor(tmaze_episode(0, length))[None]
    right = torch.as_tensor(tmaze_episode(1, length))[None]
    with torch.no_grad():
        out_l, cache_l = hm.run_with_cache(left, sites=["memory.h", "memory.c"])
        out_r = hm(right)
        assert out_l.logits[0, -1].argmax() == 0 and out_r.logits[0, -1].argmax() == 1
        for t in range(1, length + 1):
            patched = hm.run_with_interventions(right, {"memory.h": Patch(cache_l, positions=[t]),
                                                        "memory.c": Patch(cache_l, positions=[t])})
            assert patched.logits[0, -1].argmax() == 0, t
            torch.testing.assert_close(patched.logits[:, :t], out_r.logits[:, :t])  # earlier steps untouched


def test_cache_by_step_and_per_step_sites(agent):
    obs = torch.as_tensor(np.stack([tmaze_episode(0), tmaze_episode(1)]))
    hm = HookedModel(EpisodeModel(agent, length=T))
    assert hm.sites["memory.h"].axes == ("batch", "pos", "feature")
    with torch.no_grad():
        _, cache = hm.run_with_cache(obs, sites=["memory.h", "logits", "agent.memory_h#2"])
        _, pooled = hm.run_with_cache(obs, sites=["memory.h"], pool="last")
    _, hs = hand_loop(agent.model.net, obs)
    torch.testing.assert_close(cache["memory.h"], hs)
    torch.testing.assert_close(cache["agent.memory_h#2"], hs[:, 2])
    torch.testing.assert_close(pooled["memory.h"], hs[:, -1])
    # probes by step: the cue is linearly readable from h at every step (rows of step t)
    for t in range(T):
        assert not torch.allclose(cache["memory.h"][0, t], cache["memory.h"][1, t])


def test_gradients_flow_to_observations_but_not_through_time_sites(agent):
    obs = torch.as_tensor(np.stack([tmaze_episode(0)])).requires_grad_(True)
    model = EpisodeModel(agent, length=T)
    out = model(obs)
    (g,) = torch.autograd.grad(out.logits[0, -1, 0], obs)
    ref_obs = obs.detach().clone().requires_grad_(True)
    ref, _ = hand_loop(agent.model.net, ref_obs)
    (g_ref,) = torch.autograd.grad(ref[0, -1, 0], ref_obs)
    torch.testing.assert_close(g, g_ref)
    assert g[0, 0].abs().sum() > 0  # the cue step matters at the junction
    hm = as_hooked(model)
    with pytest.raises(InputError, match="step by step"):
        hm.run_with_cache(obs.detach(), sites=["memory.h"], grad=True)
    _, cache = hm.run_with_cache(obs.detach(), sites=["agent.memory_h#1"], grad=True)  # one step: fine
    assert cache["agent.memory_h#1"].requires_grad


def test_first_flags_reset_state(agent):
    obs = torch.as_tensor(np.stack([np.concatenate([tmaze_episode(0, 2), tmaze_episode(1, 2)])]))
    model = EpisodeModel(agent)
    first = torch.zeros(1, 8)
    first[0, 4] = 1
    with torch.no_grad():
        joined = model(obs, first)
        second = model(obs[:, 4:])
    torch.testing.assert_close(joined.logits[:, 4:], second.logits)


def test_feed_forward_agent_unrolls_step_by_step():
    agent = rl.zoo.load("cartpole-ppo")
    obs = torch.randn(2, 5, 4)
    with torch.no_grad():
        out = EpisodeModel(agent)(obs)
        for t in range(5):
            torch.testing.assert_close(out.logits[:, t], agent(obs[:, t]).logits)


def test_errors_name_the_argument(agent):
    model = EpisodeModel(agent, length=T)
    with pytest.raises(InputError, match="obs"):
        model(torch.zeros(2, T, 5))
    with pytest.raises(InputError, match="length"):
        model(torch.zeros(2, T + 1, 4))
    with pytest.raises(InputError, match="first"):
        model(torch.zeros(2, T, 4), torch.zeros(2, 3))
    with pytest.raises(InputError, match="length"):
        EpisodeModel(agent, length=0)
    out = model(torch.zeros(1, T, 4))
    with pytest.raises(InputError, match="at_step"):
        metrics.action_logit_diff(0, 1)(out)
    with pytest.raises(InputError, match="out of range"):
        metrics.at_step(metrics.value(), T)(out)


def test_episodes_from_rollout_replay_the_agent(agent):
    ro = rl.collect(agent, "TMaze-v0", episodes=6, seed=0, env_kwargs=dict(corridor_length=3))
    obs, ids = episodes(ro, length=5)
    assert obs.shape == (6, 5, 4) and len(ids) == 6
    with torch.no_grad():
        out = EpisodeModel(agent, length=5)(obs)
    for i, e in enumerate(ids):
        rows = np.flatnonzero(ro.episode == e)
        rows = rows[np.argsort(ro.step[rows])]
        np.testing.assert_allclose(out.logits[i].numpy(), ro.logits[rows], rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="no episode"):
        episodes(ro, length=50)


def test_input_attribution_over_steps_is_complete_and_finds_the_cue(agent):
    """Integrated gradients on the observation sequence: one map per step; completeness (Sundararajan et al.
    2017): the attributions sum to metric(x) - metric(baseline); the cue step carries the most."""
    from interp_core.attribution import attribute

    x = torch.as_tensor(np.stack([tmaze_episode(0), tmaze_episode(1)]))
    model = EpisodeModel(agent, length=T)
    metric = metrics.at_step(metrics.action_logit_diff(0, 1), -1)
    res = attribute(model, x, "integrated_gradients", metric=metric, n_steps=128)
    a = res.attributions
    assert a.shape == (2, T, 4)
    with torch.no_grad():
        gap = metric(model(x)) - metric(model(torch.zeros_like(x)))
    torch.testing.assert_close(a.sum(dim=(1, 2)), gap, rtol=2e-2, atol=2e-2)
    per_step = a.abs().sum(-1)
    assert (per_step.argmax(1) == 0).all()


def test_probe_by_step_planted_cue():
    """Noisy T-maze: the cue is in the observation at step 0 only (then chance), while the trained agent's
    memory.h keeps it at every step."""
    from rl.sequence import StepProbeResult, probe_by_step

    agent = rl.zoo.load("tmaze-noisy-recurrent")
    ro = rl.collect(agent, "TMaze-v0", episodes=40, seed=0, env_kwargs=dict(corridor_length=3, distractors=4))
    obs, ids = episodes(ro, length=5)
    cue = np.array([ro.world["cue"][(ro.episode == e) & (ro.step == 0)][0] for e in ids])
    model = EpisodeModel(agent, length=5)
    r_obs = probe_by_step(model, obs, cue, site="obs")
    r_mem = probe_by_step(model, obs, cue, site="memory.h")
    assert isinstance(r_mem, StepProbeResult) and r_mem.scores.shape == (5,)
    assert r_obs.scores[0] == 1.0 and (r_obs.scores[1:] < 0.8).all()
    assert (r_mem.scores >= 0.95).all()
    assert r_mem.to_dict()["site"] == "memory.h"
    r_mem.plot()
    with pytest.raises(InputError, match="labels"):
        probe_by_step(model, obs, cue[:3])
