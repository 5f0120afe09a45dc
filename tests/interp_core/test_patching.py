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


# ---------------------------------------------------------------------------------------------- the boundary
@pytest.mark.parametrize("name", list(CASES))
def test_plain_module_and_numpy_equal_the_hooked_model_call(name):
    """A plain nn.Module is wrapped by its registered adapter (no HookedModel needed); numpy arrays, a Dataset
    and a DataLoader give the numbers of the tensor call."""
    from torch.utils.data import DataLoader, TensorDataset

    build, data, sites = CASES[name]
    model = build()
    g = torch.Generator().manual_seed(4)
    clean, corrupted = data(g), data(g)
    metric = logit_diff(0, 1)
    ref = patch_sweep(HookedModel(model), clean, corrupted, sites[1:], metric, progress=False)
    for c, k in [(clean, corrupted), (clean.numpy(), corrupted.numpy()),
                 (clean.double().numpy(), corrupted.double().numpy()),
                 (TensorDataset(clean), DataLoader(TensorDataset(corrupted), batch_size=2))]:
        got = patch_sweep(model, c, k, sites[1:], metric, progress=False)
        for s in sites[1:]:
            assert got.effects[s].dtype == torch.float32
            torch.testing.assert_close(got.effects[s], ref.effects[s], rtol=0, atol=1e-6)
    ab_ref = ablation_sweep(HookedModel(model), clean, sites[1:2], logit(0), progress=False)
    ab = ablation_sweep(model, clean.numpy(), sites[1:2], 0, progress=False)  # a class index is its logit
    assert ab.config["metric"] == "logit[0]"
    torch.testing.assert_close(ab.effects[sites[1]], ab_ref.effects[sites[1]], rtol=0, atol=1e-6)
    attr = attribution_patching(model, clean.numpy(), corrupted.numpy(), sites[1:], metric)
    attr_ref = attribution_patching(HookedModel(model), clean, corrupted, sites[1:], metric)
    for s in sites[1:]:
        torch.testing.assert_close(attr.effects[s], attr_ref.effects[s], rtol=0, atol=1e-6)


def test_float64_model_keeps_float64_and_equals_verify_values():
    model = make_policy().double()
    g = torch.Generator().manual_seed(5)
    clean, corrupted = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)  # float32: converted
    metric = logit_diff(0, 2)
    exact = patch_sweep(model, clean, corrupted, ["0", "2"], metric, progress=False)
    approx = attribution_patching(model, clean, corrupted, ["0", "2"], metric, verify_topk=4)
    ablated = ablation_sweep(model, clean, ["2"], metric, progress=False)
    for s in ("0", "2"):
        assert exact.effects[s].dtype == exact.metric_values[s].dtype == approx.effects[s].dtype == torch.float64
        v = approx.verified[s]
        want = exact.effects[s].reshape(-1)[v["units"]]
        torch.testing.assert_close(torch.tensor(v["exact"], dtype=torch.float64), want, rtol=0, atol=1e-12)
    assert ablated.effects["2"].dtype == torch.float64
    # independent truth in float64: unit 5 of layer "2" patched by a hand-written hook
    c, k = clean.double(), corrupted.double()
    with torch.no_grad():
        src = model[2](model[1](model[0](c)))
        h = model[2].register_forward_hook(lambda m, a, o: torch.where(torch.arange(16) == 5, src, o))
        try:
            m = float(metric(model(k)).mean())
        finally:
            h.remove()
    assert abs(float(exact.metric_values["2"][5]) - m) < 1e-12


@pytest.mark.parametrize("bad", ["nan", "inf", "empty"])
def test_nan_inf_and_empty_inputs_are_refused_by_every_entry_point(bad):
    from interp_core.errors import InputError

    model = make_policy()
    x, ok = torch.randn(3, 6), torch.randn(3, 6)
    if bad == "empty":
        x = x[:0]
    else:
        x[1, 2] = float(bad)
    metric = logit(0)
    calls = {
        "patch_sweep clean": lambda: patch_sweep(model, x, ok, ["2"], metric, progress=False),
        "patch_sweep corrupted": lambda: patch_sweep(model, ok, x.numpy(), ["2"], metric, progress=False),
        "attribution_patching": lambda: attribution_patching(model, x, ok, ["2"], metric),
        "ablation_sweep": lambda: ablation_sweep(model, x, ["2"], metric, progress=False),
        "path_patching": lambda: path_patching(model, ok, x, "0", ["2"], metric),
    }
    for what, call in calls.items():
        with pytest.raises(InputError, match="NaN or infinite" if bad != "empty" else "empty") as e:
            call()
        arg = "corrupted" if what in ("patch_sweep corrupted", "path_patching") else \
            "inputs" if what == "ablation_sweep" else "clean"
        assert str(e.value).startswith(arg), (what, str(e.value))


def test_frozen_model_and_no_grad_give_the_unfrozen_attribution():
    model = make_vit()
    g = torch.Generator().manual_seed(6)
    clean, corrupted = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    sites = ["blocks.0", "blocks.1"]
    metric = logit_diff(0, 1)
    ref = attribution_patching(model, clean, corrupted, sites, metric, verify_topk=2)
    model.requires_grad_(False)
    frozen = attribution_patching(model, clean, corrupted, sites, metric, verify_topk=2)
    with torch.no_grad():
        no_grad = attribution_patching(model, clean, corrupted, sites, metric, verify_topk=2)
    model.requires_grad_(True)
    with torch.no_grad():
        both = attribution_patching(model, clean, corrupted, sites, metric)
    assert all(p.requires_grad for p in model.parameters())  # flags as they were
    for res in (frozen, no_grad, both):
        for s in sites:
            torch.testing.assert_close(res.effects[s], ref.effects[s], rtol=1e-5, atol=1e-6)
    for res in (frozen, no_grad):
        for s in sites:
            assert res.verified[s]["units"] == ref.verified[s]["units"]
            torch.testing.assert_close(torch.tensor(res.verified[s]["exact"]), torch.tensor(ref.verified[s]["exact"]))


def test_train_mode_model_is_analysed_in_eval_mode_and_left_as_it_was():
    model = make_cnn().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(7)
    clean, corrupted = torch.randn(3, 3, 8, 8, generator=g), torch.randn(3, 3, 8, 8, generator=g)
    got = patch_sweep(model, clean, corrupted, ["block"], logit_diff(0, 1), progress=False)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BatchNorm statistics kept
    want = patch_sweep(make_cnn().eval(), clean, corrupted, ["block"], logit_diff(0, 1), progress=False)
    torch.testing.assert_close(got.effects["block"], want.effects["block"], rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- forward overrides
def test_prefix_reuse_overrides_stack_and_end_in_any_order():
    """Patching's prefix reuse goes through the one forward-override mechanism: it stacks with a user's own
    override on the same module, and the two can end in either order."""
    from interp_core.forwards import active_overrides, replace_forward
    from interp_core.patch_engine import _reusing

    vit = tiny_vit()
    hm = HookedModel(vit)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        before = vit(x)
        recorded = vit.blocks[0](vit.norm_pre(vit._pos_embed(vit.patch_embed(x))))
    block = vit.blocks[0]
    twice = replace_forward(block, lambda m, inner: (lambda *a, **kw: 2 * inner(*a, **kw)))
    reuse = _reusing(hm, {"blocks.0": recorded}, 1)
    reuse.__enter__()
    user = replace_forward(block, lambda m, inner: (lambda *a, **kw: inner(*a, **kw) + 1))
    assert active_overrides(block) == 3
    with torch.no_grad():
        assert torch.equal(block(torch.zeros(2, 17, 32)), recorded + 1)  # the reused output, then +1
    twice.remove()  # the first override ends first: not nested
    reuse.__exit__(None, None, None)  # then the reuse, while the user's is still active
    with torch.no_grad():
        y = torch.randn(2, 17, 32)
        assert torch.equal(block(y), vit.blocks[0].__class__.forward(block, y) + 1)
    user.remove()
    assert all(active_overrides(m) == 0 and "forward" not in m.__dict__ for m in vit.modules())
    with torch.no_grad():
        assert torch.equal(vit(x), before)
    # a sweep under a user's (identity) override on a reused module equals one without it; the override stays
    metric = logit(0)
    clean, corrupted = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    plain = patch_sweep(hm, clean, corrupted, ["blocks.2"], metric, progress=False)
    with hm.replacing_forward("blocks.0", lambda m, inner: inner):
        under = patch_sweep(hm, clean, corrupted, ["blocks.2"], metric, progress=False)
        assert active_overrides(block) == 1
    assert torch.equal(under.effects["blocks.2"], plain.effects["blocks.2"])
    assert all(active_overrides(m) == 0 and "forward" not in m.__dict__ for m in vit.modules())


# ---------------------------------------------------------------------------------------------- limits, results
class Saturated(nn.Module):
    """y = sigmoid(10 h) with h = x: clean x = 2 and corrupted x = -2 sit in the flat tails of the sigmoid."""

    def __init__(self):
        super().__init__()
        self.h = nn.Identity()

    def forward(self, x):
        return torch.sigmoid(10 * self.h(x))


def test_attribution_patching_misses_a_saturated_nonlinearity_as_documented():
    clean, corrupted = torch.tensor([[2.0]]), torch.tensor([[-2.0]])
    exact = patch_sweep(Saturated(), clean, corrupted, ["h"], y, progress=False)
    approx = attribution_patching(Saturated(), clean, corrupted, ["h"], y)
    assert exact.effects["h"].item() == pytest.approx(1.0)  # the patch restores the clean output
    # gradient at the corrupted run: 10 * s(1 - s) with s = sigmoid(-20); estimate = 4 * that / (1 - 2 s)
    s = torch.sigmoid(torch.tensor(-20.0))
    assert approx.effects["h"].item() == pytest.approx(float(4 * 10 * s * (1 - s) / (1 - 2 * s)), rel=1e-4)
    assert approx.effects["h"].item() < 1e-6


def test_path_patching_result_plots_and_saves_atomically(tmp_path):
    import json

    from interp_core.patching import PathPatchingResult
    from interp_core.results import Result

    res = path_patching(TwoPaths(), torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 1.0]]).numpy(), "sender",
                        ["a"], y)
    assert isinstance(res, PathPatchingResult) and isinstance(res, Result)
    assert res.metric == pytest.approx(2 * 1 + 3 * 2 + 2)  # only path a sees the corrupted sender
    fig = res.plot()
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([12.0, 10.0, 7.0])  # clean, path-patched, corrupted
    saved = json.loads(res.save(tmp_path / "p.json").read_text())
    assert saved["effect"] == pytest.approx(0.6) and saved["config"]["receivers"] == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_progress_bar_is_quiet_off_a_terminal(capsys):
    g = torch.Generator().manual_seed(8)
    clean, corrupted = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    patch_sweep(make_policy(), clean, corrupted, ["2"], logit(0))
    ablation_sweep(make_policy(), clean, ["2"], logit(0))
    assert capsys.readouterr().err == ""
    patch_sweep(make_policy(), clean, corrupted, ["2"], logit(0), progress=True)
    assert "patching" in capsys.readouterr().err
