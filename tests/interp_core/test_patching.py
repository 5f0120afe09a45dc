"""Patching against planted circuits (known 0/1 effects), closed forms, and the one-patch-per-forward loop,
on a CNN, a ViT and a policy network."""

import pytest
import torch
from torch import nn

from interp_core import HookedModel, Site
from interp_core.metrics import logit, logit_diff
from interp_core.patching import ablation_sweep, attribution_patching, patch_sweep, path_patching

from ..conftest import make_cnn, make_policy, make_vit


class AndCircuit(nn.Module):
    """y = 2 * AND(x0, x1) + 0 * x2 + 0 * x1: only unit 0 of ``hidden`` carries the signal to y."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 3)
        self.hidden = nn.ReLU()
        self.out = nn.Linear(3, 1)
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
            self.layer.bias.copy_(torch.tensor([-1.0, 0.0, 0.0]))
            self.out.weight.copy_(torch.tensor([[2.0, 0.0, 0.0]]))
            self.out.bias.zero_()

    def forward(self, x):
        return self.out(self.hidden(self.layer(x)))


def y(out):
    return out[:, 0]


def test_and_circuit_exact_and_attribution_recover_known_effects():
    hm = HookedModel(AndCircuit())
    clean, corrupted = torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([[1.0, 0.0, 1.0]])
    res = patch_sweep(hm, clean, corrupted, ["hidden"], y, progress=False)
    assert res.clean_metric == 2.0 and res.corrupted_metric == 0.0
    assert torch.equal(res.effects["hidden"], torch.tensor([1.0, 0.0, 0.0]))
    assert res.no_op["hidden"].tolist() == [False, True, False]  # unit 1 (x2) is the same in both runs
    noising = patch_sweep(hm, clean, corrupted, ["hidden"], y, mode="noising", progress=False)
    assert torch.equal(noising.effects["hidden"], torch.tensor([0.0, 1.0, 1.0]))
    attr = attribution_patching(hm, clean, corrupted, ["hidden"], y)
    assert torch.allclose(attr.effects["hidden"], res.effects["hidden"])  # y is linear in `hidden`
    # before the ReLU the estimate is still exact here, and the whole-site patch restores everything
    whole = patch_sweep(hm, clean, corrupted, ["layer"], y, per="site", progress=False)
    assert whole.effects["layer"].item() == 1.0


def tiny_vit():
    return make_vit(in_chans=1, num_classes=10, depth=3, mlp_ratio=2.0)


CASES = {
    "cnn": (make_cnn, lambda g: torch.randn(3, 3, 8, 8, generator=g), ["stem", "block.bn1", "block"]),
    "vit": (tiny_vit, lambda g: torch.randn(3, 1, 16, 16, generator=g), ["blocks.0", "blocks.1", "blocks.2"]),
    "policy": (make_policy, lambda g: torch.randn(3, 6, generator=g), ["0", "2", "3"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_batched_with_prefix_reuse_equals_one_forward_per_patch(name):
    build, data, sites = CASES[name]
    hm = HookedModel(build())
    g = torch.Generator().manual_seed(1)
    clean, corrupted = data(g), data(g)
    metric = logit_diff(0, 1)
    fast = patch_sweep(hm, clean, corrupted, sites, metric, batch_size=64, reuse_prefix=True, progress=False)
    loop = patch_sweep(hm, clean, corrupted, sites, metric, batch_size=1, reuse_prefix=False, progress=False)
    for s in sites:
        assert fast.effects[s].shape == loop.effects[s].shape
        assert torch.allclose(fast.effects[s], loop.effects[s], atol=1e-5), s
    # the grid is in the site's own geometry
    if name == "cnn":
        assert fast.effects["stem"].shape == (8, 8) and fast.grid_axes["stem"] == ("pos", "pos")
    if name == "vit":
        assert fast.effects["blocks.0"].shape == (17,)  # CLS + 16 patches
    if name == "policy":
        assert fast.effects["2"].shape == (16,) and fast.grid_axes["2"] == ("feature",)
    # the last site's whole-site patch restores the clean run exactly (denoising) -> effect 1
    whole = patch_sweep(hm, clean, corrupted, sites[-1:], metric, per="site", progress=False)
    assert abs(whole.effects[sites[-1]].item() - 1.0) < 1e-5


def test_reuse_prefix_skips_earlier_modules_and_restores_them():
    vit = tiny_vit()
    hm = HookedModel(vit, example_input=torch.randn(1, 1, 16, 16))
    assert set(hm.completed_before("blocks.2")) >= {"patch_embed", "blocks.0", "blocks.1"}
    assert "blocks.2" not in hm.completed_before("blocks.2")
    patch_sweep(hm, torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16), ["blocks.2"], logit(0), progress=False)
    assert all("forward" not in m.__dict__ for m in vit.modules())


def test_attribution_patching_exact_for_linear_metric_and_topk_verification():
    # the logits are linear in the last hidden layer's output ("3" is the Tanh before the readout)
    model = make_policy()
    hm = HookedModel(model)
    g = torch.Generator().manual_seed(2)
    clean, corrupted = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    metric = logit_diff(0, 2)
    exact = patch_sweep(hm, clean, corrupted, ["3"], metric, progress=False)
    approx = attribution_patching(hm, clean, corrupted, ["3"], metric, verify_topk=3)
    assert torch.allclose(exact.effects["3"], approx.effects["3"], atol=1e-5)
    v = approx.verified["3"]
    assert torch.allclose(torch.tensor(v["estimate"]), torch.tensor(v["exact"]), atol=1e-5)
    # on an earlier, nonlinear site the estimate is an approximation
    approx2 = attribution_patching(hm, clean, corrupted, ["0"], metric)
    exact2 = patch_sweep(hm, clean, corrupted, ["0"], metric, progress=False)
    assert not torch.allclose(exact2.effects["0"], approx2.effects["0"], atol=1e-5)


def test_ablation_sweep_matches_closed_form():
    model = make_policy()
    hm = HookedModel(model)
    x = torch.randn(5, 6)
    ref = torch.randn(50, 6)
    metric = logit(1)
    _, cache = hm.run_with_cache(x, sites=["3"])
    _, stats = hm.run_with_cache(ref, sites=["3"])
    w = model[4].weight[1].detach()
    h = cache["3"]
    zero = ablation_sweep(hm, x, ["3"], metric, method="zero", progress=False)
    assert torch.allclose(zero.effects["3"], -(w * h).mean(0), atol=1e-5)
    mean = ablation_sweep(hm, x, ["3"], metric, method="mean", stats=stats, progress=False)
    assert torch.allclose(mean.effects["3"], (w * (stats["3"].mean(0) - h)).mean(0), atol=1e-5)


class TwoPaths(nn.Module):
    """sender -> a -> y and sender -> b -> y with y = 2a + 3b (+ an unrelated x term)."""

    def __init__(self):
        super().__init__()
        self.sender = nn.Linear(2, 1)
        self.a = nn.Identity()
        self.b = nn.Identity()
        with torch.no_grad():
            self.sender.weight.copy_(torch.tensor([[1.0, -1.0]]))
            self.sender.bias.zero_()

    def forward(self, x):
        s = self.sender(x)
        return (2 * self.a(s) + 3 * self.b(s) + x[:, :1]).reshape(-1, 1)


def test_path_patching_isolates_one_path():
    hm = HookedModel(TwoPaths())
    clean, corrupted = torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 1.0]])
    # clean: s=2, y=10+2=12 ; corrupted: s=1, y=5+2=7
    via_a = path_patching(hm, clean, corrupted, "sender", ["a"], y)
    assert via_a.metric == pytest.approx(2 * 1 + 3 * 2 + 2)  # only path a sees the corrupted sender
    assert via_a.effect == pytest.approx((10 - 7) / (12 - 7))
    via_both = path_patching(hm, clean, corrupted, "sender", ["a", "b"], y)
    assert via_both.metric == pytest.approx(7.0) and via_both.effect == pytest.approx(0.0)
    frozen = path_patching(hm, clean, corrupted, "sender", ["b"], y, freeze=["a"])
    assert frozen.metric == pytest.approx(2 * 2 + 3 * 1 + 2)


def test_bad_inputs_get_clear_errors():
    hm = HookedModel(make_policy())
    with pytest.raises(ValueError, match="same shapes"):
        patch_sweep(hm, torch.randn(2, 6), torch.randn(3, 6), ["2"], logit(0), progress=False)
    with pytest.raises(ValueError, match=r"returned \(2, 3\); a metric returns one number per example"):
        patch_sweep(hm, torch.randn(2, 6), torch.randn(2, 6), ["2"], lambda out: out, progress=False)
    with pytest.raises(ValueError, match="same metric"):
        x = torch.randn(2, 6)
        patch_sweep(hm, x, x.clone(), ["2"], logit(0), progress=False)
    with pytest.raises(ValueError, match="has no 'head' axis"):
        patch_sweep(hm, torch.randn(2, 6), torch.randn(2, 6), ["2"], logit(0), per="head", progress=False)
    with pytest.raises(ValueError, match="mode must be"):
        patch_sweep(hm, torch.randn(2, 6), torch.randn(2, 6), ["2"], logit(0), mode="denoise", progress=False)


class Buggy:
    """An adapter whose site writes nothing back (the silent failure patching must catch)."""

    name = "buggy"

    def sites(self, model):
        return [Site("h", "0", axes=("batch", "feature"), read=lambda o: o, write=lambda o, new: o)]

    def default_sites(self, model):
        return ["h"]

    def example_input(self, model):
        return torch.randn(1, 6)


def test_a_write_that_does_not_take_effect_is_caught():
    hm = HookedModel(make_policy(), Buggy())
    with pytest.raises(RuntimeError, match="did not put the new activation in place"):
        patch_sweep(hm, torch.randn(2, 6), torch.randn(2, 6), ["h"], logit(0), progress=False)


def test_result_table_plot_and_json(tmp_path):
    import json

    import matplotlib

    matplotlib.use("Agg")
    build, data, sites = CASES["cnn"]
    hm = HookedModel(build())
    g = torch.Generator().manual_seed(1)
    res = patch_sweep(hm, data(g), data(g), sites[:2], logit_diff(0, 1), progress=False)
    rows = res.table()
    assert len(rows) == 2 * 64 and {"site", "unit", "effect", "metric", "no_op"} <= set(rows[0])
    assert res.top(3)[0]["effect"] == max((r["effect"] for r in rows), key=abs)
    fig = res.plot()
    assert len(fig.axes) >= 2  # one (h, w) panel per site + colour bar
    saved = json.loads(res.save(tmp_path / "r.json").read_text())
    assert saved["config"]["mode"] == "denoising" and len(saved["effects"]["stem"]) == 8
    build, data, sites = CASES["policy"]
    hp = HookedModel(build())
    fig = patch_sweep(hp, data(g), data(g), sites, logit_diff(0, 1), progress=False).plot()
    assert fig.axes[0].get_images()[0].get_array().shape == (3, 16)  # layer x unit


@pytest.mark.parametrize("name", list(CASES))
def test_zero_ablation_sweep_equals_plain_torch_hooks(name):
    """Each unit zeroed by a hand-written ``register_forward_hook`` (no interp_core involved) gives the same
    metric change as ``ablation_sweep``, on a CNN (cells), a ViT (tokens) and a policy (units)."""
    build, data, sites = CASES[name]
    model = build()
    hm = HookedModel(model)
    x = data(torch.Generator().manual_seed(3))
    metric = logit(1)
    site = sites[1]
    res = ablation_sweep(hm, x, [site], metric, method="zero", progress=False)
    module = model.get_submodule(hm.sites[site].module_path)
    with torch.no_grad():
        base = float(model(x)[:, 1].mean())
        grid = res.effects[site]
        for flat in range(grid.numel()):
            unit = torch.unravel_index(torch.tensor(flat), grid.shape)

            def zero(m, args, out, unit=unit):
                out = out.clone()
                if name == "cnn":
                    out[:, :, unit[0], unit[1]] = 0  # one (h, w) cell, all channels
                elif name == "vit":
                    out[:, unit[0], :] = 0  # one token, all features
                else:
                    out[:, unit[0]] = 0  # one unit
                return out

            h = module.register_forward_hook(zero)
            try:
                want = float(model(x)[:, 1].mean()) - base
            finally:
                h.remove()
            assert abs(float(grid.reshape(-1)[flat]) - want) < 1e-5, (site, flat)
