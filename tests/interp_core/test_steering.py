"""Steering directions and sweeps against closed forms on planted models (CNN, ViT, policy)."""

import numpy as np
import pytest
import torch
from torch import nn

from interp_core import HookedModel
from interp_core.metrics import logit_diff
from interp_core.probes import LinearProbe
from interp_core.steering import SteeringResult, diff_means, mean_features, probe_direction, steering_sweep

from ..conftest import make_cnn, make_policy, make_vit


def test_diff_means_of_linear_site_is_weight_times_input_shift():
    # site "0" is Linear(6, 16): mean(W x_a + b) - mean(W x_b + b) = W (mean x_a - mean x_b), exactly
    policy = make_policy()
    g = torch.Generator().manual_seed(0)
    xa, xb = torch.randn(300, 6, generator=g) + 1.5, torch.randn(200, 6, generator=g)
    v = diff_means(policy, xa, xb, site="0", batch_size=64)
    expected = policy[0].weight.detach() @ (xa.mean(0) - xb.mean(0))
    assert torch.allclose(v, expected, atol=1e-5)
    u = diff_means(policy, xa, xb, site="0", normalize=True)
    assert torch.allclose(u, expected / expected.norm(), atol=1e-5)


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_diff_means_pooling_matches_cache(kind):
    g = torch.Generator().manual_seed(1)
    if kind == "cnn":
        model, site, shape, pool = make_cnn(), "block", (3, 8, 8), "mean"
    else:
        model, site, shape, pool = make_vit(), "blocks.1", (3, 16, 16), 0  # the CLS token
    hm = HookedModel(model)
    xa, xb = torch.randn(20, *shape, generator=g), torch.randn(30, *shape, generator=g) * 2
    v = diff_means(hm, xa, xb, site=site, pool=pool, batch_size=7)
    _, ca = hm.run_with_cache(xa, sites=[site])
    _, cb = hm.run_with_cache(xb, sites=[site])
    a, b = ca[site], cb[site]
    if kind == "cnn":  # [B, C, H, W]: mean over cells, then over images
        truth = a.mean((0, 2, 3)) - b.mean((0, 2, 3))
    else:  # [B, P, D]: CLS row
        truth = a[:, 0].mean(0) - b[:, 0].mean(0)
    assert torch.allclose(v, truth, atol=1e-5)
    # pool=None averages over every position of every input, which for equal position counts is the same
    assert torch.allclose(mean_features(hm, xa, site, pool=None), a.mean(0).reshape(a.shape[1], -1).mean(1)
                          if kind == "cnn" else a.mean((0, 1)), atol=1e-5)


def test_steering_linear_effect_closed_form():
    # planted: out = A h + c with h the steered site, so metric(out) = out[:, k] moves by alpha * (A v)[k]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 3)).eval()
    x = torch.randn(40, 5)
    v = torch.randn(8)
    alphas = [-2.0, -0.5, 0.0, 1.0, 3.0]
    res = steering_sweep(model, x, site="0", direction=v, alphas=alphas, metric=lambda out: out[:, 2])
    with torch.no_grad():
        base = model(x)[:, 2]
    effect = float(model[1].weight[2].detach() @ v)
    expected = np.stack([(base + a * effect).numpy() for a in alphas])
    assert isinstance(res, SteeringResult)
    assert np.allclose(res.values, expected, atol=1e-5)
    assert res.slope() == pytest.approx(effect, rel=1e-5)
    assert res.table[2]["alpha"] == 0.0 and res.table[2]["mean"] == pytest.approx(float(base.mean()), abs=1e-5)


def test_steering_nonlinear_closed_form_on_policy_and_positions_on_cnn():
    policy = make_policy()
    x = torch.randn(25, 6)
    v = torch.randn(16)
    _, c = HookedModel(policy).run_with_cache(x, sites=["2"])
    res = steering_sweep(policy, x, "2", v, [0.0, 0.7, 2.0], metric=lambda o: o[:, 0] - o[:, 1], batch_size=10)
    with torch.no_grad():
        for i, a in enumerate([0.0, 0.7, 2.0]):
            out = policy[4](torch.tanh(c["2"] + a * v))
            assert np.allclose(res.values[i], (out[:, 0] - out[:, 1]).numpy(), atol=1e-5)
    # CNN: steer the stem at one cell only; the effect equals a hand-written hook doing the same
    cnn = make_cnn()
    xi = torch.randn(4, 3, 8, 8)
    w = torch.randn(8)
    res = steering_sweep(cnn, xi, "stem", w, [1.5], metric=lambda o: o[:, 1], positions=[(2, 3)])

    def hook(mod, args, out):
        out = out.clone()
        out[:, :, 2, 3] += 1.5 * w
        return out
    h = cnn.stem.register_forward_hook(hook)
    try:
        with torch.no_grad():
            truth = cnn(xi)[:, 1]
    finally:
        h.remove()
    assert np.allclose(res.values[0], truth.numpy(), atol=1e-5)


def test_probe_direction_steers_towards_class():
    # a probe on the logits site of a policy: steering along the direction for class 2 raises logit 2 - mean
    policy = make_policy()
    hm = HookedModel(policy)
    x = torch.randn(500, 6)
    _, c = hm.run_with_cache(x, sites=["4"])
    labels = c["4"].argmax(1).numpy()
    probe = LinearProbe(l2=1.0).fit(c.features("4"), labels)
    v = probe_direction(probe, label=int(labels[0]))
    assert v.norm() == pytest.approx(1.0, abs=1e-5)
    res = steering_sweep(hm, x, "4", v, [0.0, 1.0, 2.0],
                         metric=lambda o: o[:, int(labels[0])] - o.mean(1))
    # on the logits site the effect is exactly alpha * (v_c - mean(v))
    assert res.slope() == pytest.approx(float(v[int(labels[0])] - v.mean()), rel=1e-4)
    assert res.slope() > 0


def test_closed_loop_runner_and_errors(tmp_path):
    policy = make_policy()
    hm = HookedModel(policy, example_input=torch.randn(1, 6))
    v = torch.randn(16)

    def rollout(hm_, interventions):  # a toy closed loop: the next observation depends on the action
        obs, total = torch.zeros(3, 6), torch.zeros(3)
        with hm_.intervene(interventions):
            for _ in range(4):
                logits = hm_(obs)
                total += logits[:, 0]
                obs = torch.tanh(obs + logits.sum(1, keepdim=True))
        return total

    res = steering_sweep(hm, None, "2", v, [0.0, 1.0], metric=lambda tot: tot, runner=rollout)
    assert res.values.shape == (2, 3)
    assert np.allclose(res.values[0], rollout(hm, {}).detach().numpy(), atol=1e-6)
    fig = res.plot()
    assert fig.axes
    res.save(tmp_path / "s.json")
    with pytest.raises(ValueError, match="one number per example"):
        steering_sweep(policy, torch.randn(4, 6), "2", v, [1.0], metric=lambda o: o)
    with pytest.raises(ValueError, match="direction has 5 entries, expected 16"):
        steering_sweep(policy, torch.randn(4, 6), "2", torch.randn(5), [1.0], metric=lambda o: o[:, 0])
    with pytest.raises(KeyError, match="unknown site"):
        steering_sweep(policy, torch.randn(4, 6), "22", v, [1.0], metric=lambda o: o[:, 0])


# ---------------------------------------------------------------------------------------------- the boundary
def test_train_mode_model_is_steered_in_eval_mode_and_left_as_it_was():
    cnn = make_cnn().train()  # BatchNorm would use (and rewrite) batch statistics in train mode
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    x = torch.randn(6, 3, 8, 8)
    w = torch.randn(8)
    res = steering_sweep(cnn, x, "stem", w, [0.0, 2.0], metric=lambda o: o[:, 1], progress=False)
    assert all(m.training for m in cnn.modules())
    assert all(torch.equal(v, cnn.state_dict()[k]) for k, v in state.items())
    ref = make_cnn().eval()
    h = ref.stem.register_forward_hook(lambda m, a, out: out + 2.0 * w[None, :, None, None])
    try:
        with torch.no_grad():
            truth = ref(x)[:, 1]
    finally:
        h.remove()
    assert np.allclose(res.values[1], truth.numpy(), atol=1e-5)
    v = diff_means(cnn, x[:3], x[3:], "block")  # eval mode too: equals the eval-mode model's direction
    torch.testing.assert_close(v, diff_means(ref, x[:3], x[3:], "block"), rtol=0, atol=1e-6)
    assert all(torch.equal(v, cnn.state_dict()[k]) for k, v in state.items())


def test_numpy_dataset_and_float64_inputs_give_the_same_numbers():
    from torch.utils.data import DataLoader, TensorDataset

    policy = make_policy()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 6, generator=g)
    v = torch.randn(16, generator=g)
    ref = steering_sweep(policy, x, "2", v, [0.0, 1.0], metric=logit_diff(0, 1), progress=False)
    for data in (x.numpy(), x.double().numpy(), TensorDataset(x), DataLoader(TensorDataset(x), batch_size=7)):
        got = steering_sweep(policy, data, "2", v.numpy(), [0.0, 1.0], metric=logit_diff(0, 1), progress=False)
        assert np.allclose(got.values, ref.values, atol=1e-6)
    assert ref.config["metric"] == "logit_diff[0-1]"


def test_float64_model_directions_stay_float64():
    policy = make_policy().double()
    g = torch.Generator().manual_seed(4)
    xa, xb = torch.randn(40, 6, generator=g) + 1.0, torch.randn(30, 6, generator=g)
    v = diff_means(policy, xa.numpy(), xb, site="0")
    assert v.dtype == torch.float64
    expected = policy[0].weight.detach() @ (xa.double().mean(0) - xb.double().mean(0))
    torch.testing.assert_close(v, expected, rtol=0, atol=1e-12)


def test_steering_features_selector_matches_closed_form():
    # steering only features 2 and 7 of the logits-feeding layer "3" (Tanh output) moves the logits by
    # W[:, [2, 7]] @ (alpha * v[[2, 7]])
    policy = make_policy()
    x = torch.randn(10, 6)
    v = torch.randn(16)
    res = steering_sweep(policy, x, "3", v, [0.0, 1.5], metric=lambda o: o[:, 0], features=[2, 7],
                         progress=False)
    with torch.no_grad():
        shift = float(policy[4].weight[0, [2, 7]] @ (1.5 * v[[2, 7]]))
        base = policy(x)[:, 0]
    assert np.allclose(res.values[1] - res.values[0], shift, atol=1e-5)
    assert np.allclose(res.values[0], base.numpy(), atol=1e-6)


def test_bad_inputs_and_result_contract(tmp_path):
    import json

    from interp_core import metrics, steering
    from interp_core.errors import InputError
    from interp_core.results import Result

    policy = make_policy()
    v = torch.randn(16)
    x = torch.randn(4, 6)
    x[2, 1] = float("nan")
    with pytest.raises(InputError, match="inputs: holds 1 NaN or infinite values"):
        steering_sweep(policy, x, "2", v, [1.0], metric=0)
    with pytest.raises(InputError, match="inputs_b: empty"):
        diff_means(policy, torch.randn(3, 6), torch.randn(0, 6), "2")
    with pytest.raises(InputError, match="inputs: holds 1 NaN"):
        mean_features(policy, x.numpy(), "2")
    with pytest.raises(InputError, match="direction: has NaN"):
        steering_sweep(policy, torch.randn(4, 6), "2", torch.full((16,), float("inf")), [1.0], metric=0)
    with pytest.raises(InputError, match="alphas: empty"):
        steering_sweep(policy, torch.randn(4, 6), "2", v, [], metric=0)
    # one Metric class: the module uses interp_core.metrics' own, no alias of its own
    assert steering.Metric is metrics.Metric and not hasattr(steering, "_hooked")
    res = steering_sweep(policy, torch.randn(5, 6), "2", v, [0.0, 1.0], metric=1, progress=False)
    assert isinstance(res, Result) and res.config["metric"] == "logit[1]"
    saved = json.loads(res.save(tmp_path / "s.json").read_text())
    assert saved["alphas"] == [0.0, 1.0] and len(saved["values"][0]) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
