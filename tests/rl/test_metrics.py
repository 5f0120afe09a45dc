"""rl.metrics against torch.distributions.Categorical and the policy's own outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rl
from interp_core.interventions import Patch
from rl import metrics


@torch.no_grad()
def test_metrics_match_categorical_distribution():
    agent = rl.zoo.load("doorkey-ppo")
    env = agent.make_env()
    obs = np.stack([env.reset(seed=s)[0] for s in range(5)])
    out = agent(obs)
    dist = torch.distributions.Categorical(logits=out.logits)
    acts = torch.tensor([0, 1, 2, 5, 3])
    torch.testing.assert_close(metrics.action_log_prob(acts)(out), dist.log_prob(acts))
    torch.testing.assert_close(metrics.action_log_prob("toggle")(out), dist.log_prob(torch.full((5,), 5)))
    torch.testing.assert_close(metrics.action_prob("forward")(out), dist.probs[:, 2])
    torch.testing.assert_close(metrics.chosen_action_log_prob()(out), dist.log_prob(out.logits.argmax(-1)))
    torch.testing.assert_close(metrics.action_logit_diff("toggle", "left")(out), out.logits[:, 5] - out.logits[:, 0])
    torch.testing.assert_close(metrics.value()(out), out.value)
    torch.testing.assert_close(metrics.value()((out.logits, out.value[:, None])), out.value)
    with pytest.raises(KeyError, match="known actions"):
        metrics.action_logit_diff("jump", "left")


@torch.no_grad()
def test_metric_under_patching_tracks_the_memory_swap():
    # patching the T-maze memory at step 0 from the other cue turns the junction logit difference around
    agent = rl.zoo.load("tmaze-recurrent")
    env = agent.make_env()
    diffs = {}
    h0 = {}
    for cue in (0, 1):
        obs, _ = env.reset(seed=0, options={"cue": cue, "corridor_length": 3})
        out, cache = agent.run_with_cache((obs, None, None), sites=["memory.h", "memory.c"])
        h0[cue] = cache
        state = out.state
        for _ in range(4):
            obs, *_ = env.step(0)
            out = agent(obs, state)
            state = out.state
        diffs[cue] = float(metrics.action_logit_diff("right", "left", names=agent.action_names)(out))
    assert diffs[0] < 0 < diffs[1]
    obs, _ = env.reset(seed=0, options={"cue": 0, "corridor_length": 3})
    out = agent.run_with_interventions((obs, None, None), {"memory.h": Patch(h0[1]), "memory.c": Patch(h0[1])})
    state = out.state
    for _ in range(4):
        obs, *_ = env.step(0)
        out = agent(obs, state)
        state = out.state
    assert float(metrics.action_logit_diff("right", "left")(out)) == pytest.approx(diffs[1], abs=1e-5)


def test_core_patch_sweep_on_a_key_present_absent_pair():
    # two DoorKey states differing in one world variable (carrying the key): the observation differs in one
    # cell, the agent's own (MiniGrid draws the carried key there). Patching that cell alone restores the
    # clean value exactly (normalised effect 1); every other cell is a no-op (effect 0).
    from minigrid.core.constants import OBJECT_TO_IDX

    from interp_core.patching import patch_sweep

    agent = rl.zoo.load("doorkey-ppo")
    env = agent.make_env()
    obs, _ = env.reset(seed=3)
    corrupted = np.stack([obs, obs])
    clean = corrupted.copy()
    clean[:, 3, 6] = (OBJECT_TO_IDX["key"], 4, 0)  # yellow key on the agent's cell
    clean, corrupted = torch.as_tensor(clean), torch.as_tensor(corrupted)
    res = patch_sweep(agent, clean=clean, corrupted=corrupted, sites=["obs"], metric=metrics.value(),
                      progress=False)
    eff = res.effects["obs"]
    assert eff.shape == (7, 7)
    assert float(eff[3, 6]) == pytest.approx(1.0, abs=1e-4)
    assert int(res.no_op["obs"].sum()) == 48 and not bool(res.no_op["obs"][3, 6])
    others = torch.ones(7, 7, dtype=torch.bool)
    others[3, 6] = False
    assert torch.allclose(eff[others], torch.zeros(48), atol=1e-4)  # float32 batching noise only
    whole = patch_sweep(agent, clean=clean, corrupted=corrupted, sites=["encoder.out"], per="site",
                        metric=metrics.action_logit_diff("toggle", "forward"), progress=False)
    assert float(whole.effects["encoder.out"].reshape(-1)[0]) == pytest.approx(1.0, abs=1e-4)


def test_core_attribution_saliency_over_the_grid_image():
    # saliency of the value through the shared captum interface equals the autograd gradient taken by hand,
    # and integrated gradients are complete (sum of attributions = value(x) - value(baseline))
    from interp_core.attribution import attribute

    agent = rl.zoo.load("doorkey-ppo")
    env = agent.make_env()
    obs = torch.as_tensor(np.stack([env.reset(seed=s)[0] for s in range(3)]), dtype=torch.float32)
    res = attribute(agent, obs, "saliency", metric=metrics.value())
    assert tuple(res.axes) == agent.input_axes == ("batch", "pos", "pos", "feature")  # channels last, as given
    x = obs.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(agent(x).value.sum(), x)
    torch.testing.assert_close(torch.as_tensor(res.attributions), grad.abs())
    ig = attribute(agent, obs, "integrated_gradients", metric=metrics.value(), n_steps=64)
    with torch.no_grad():
        gap = agent(obs).value - agent(torch.zeros_like(obs)).value
    total = torch.as_tensor(ig.attributions).reshape(3, -1).sum(1)
    torch.testing.assert_close(total, gap, atol=0.05 * float(gap.abs().max()) + 1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------- continuous
def _gaussian_out(kind: str = "gaussian"):
    from rl.agents import PolicyOutput

    g = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(4, 3, generator=g), 0.3 * torch.randn(4, 3, generator=g)
    return PolicyOutput(mean, torch.zeros(4), None, log_std, kind)


def test_gaussian_log_prob_closed_form():
    out = _gaussian_out()
    a = torch.randn(4, 3)
    mu, sigma = out.logits, out.log_std.exp()
    closed = (-0.5 * ((a - mu) / sigma) ** 2 - out.log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
    torch.testing.assert_close(metrics.gaussian_log_prob(a)(out), closed)
    # one action for the whole batch, [action_dim]
    torch.testing.assert_close(metrics.gaussian_log_prob(a[0])(out),
                               (-0.5 * ((a[0] - mu) / sigma) ** 2 - out.log_std - 0.5 * np.log(2 * np.pi)).sum(-1))
    torch.testing.assert_close(metrics.action_mean(2)(out), mu[:, 2])
    torch.testing.assert_close(metrics.action_log_std(1)(out), out.log_std[:, 1])
    torch.testing.assert_close(metrics.chosen_action_log_prob()(out),
                               (-out.log_std - 0.5 * np.log(2 * np.pi)).sum(-1))
    with pytest.raises(ValueError, match="action_dim"):
        metrics.gaussian_log_prob(torch.zeros(4, 2))(out)


def test_squashed_gaussian_log_prob_is_tanh_change_of_variables():
    out = _gaussian_out("squashed_gaussian")
    a = torch.rand(4, 3) * 1.6 - 0.8
    base = torch.distributions.Normal(out.logits, out.log_std.exp())
    tanh = torch.distributions.TransformedDistribution(base, [torch.distributions.TanhTransform()])
    torch.testing.assert_close(metrics.gaussian_log_prob(a)(out), tanh.log_prob(a).sum(-1), rtol=1e-4, atol=1e-4)


def test_categorical_metrics_refuse_continuous_and_episode_outputs():
    out = _gaussian_out()
    with pytest.raises(ValueError, match="continuous"):
        metrics.action_log_prob(0)(out)
    with pytest.raises(ValueError, match="continuous-action"):
        metrics.action_mean(0)(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at_step"):
        metrics.action_log_prob(0)(torch.zeros(2, 5, 3))


def test_at_step_reads_one_step_of_an_episode():
    from rl.sequence import EpisodeOutput

    logits, value = torch.randn(2, 5, 3), torch.randn(2, 5)
    ep = EpisodeOutput(logits, value, None)
    for t in (0, 2, -1):
        torch.testing.assert_close(metrics.at_step(metrics.action_logit_diff(2, 0), t)(ep),
                                   logits[:, t, 2] - logits[:, t, 0])
        torch.testing.assert_close(metrics.at_step(metrics.value(), t)(ep), value[:, t])
    with pytest.raises(TypeError, match="episode output"):
        metrics.at_step(metrics.value())(torch.zeros(2, 3))
