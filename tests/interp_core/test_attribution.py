"""Attribution: every method equals captum called directly, on a CNN, a tiny ViT and a policy MLP; the defects
of the issues (global RNG, frozen / no_grad models, in-place ops after a layer, captum's leftovers on modules,
channels-last observations, errors off the metric's path) checked against captum or a planted truth."""

import warnings

import numpy as np
import pytest
import torch
from captum.attr import (
    DeepLift,
    GradientShap,
    IntegratedGradients,
    LayerConductance,
    LayerGradCam,
    LayerIntegratedGradients,
    Saliency,
)
from torch import nn

from interp_core import HookedModel
from interp_core.attribution import AttributionResult, attribute
from interp_core.errors import InputError, InputIndexError, SiteError

from ..conftest import make_policy, make_vit

ATOL, RTOL = 1e-6, 1e-5


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4)).eval()


def case(kind):
    """(model, inputs, targets, layer site, its module) for each of the three model kinds."""
    g = torch.Generator().manual_seed(3)
    if kind == "cnn":
        m = small_cnn()
        return m, torch.randn(7, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3, 0, 1, 2]), "2", m[2]
    if kind == "vit":
        m = make_vit()
        return m, torch.randn(7, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 0]), "blocks.0", m.blocks[0]
    m = make_policy()
    return m, torch.randn(7, 6, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 1]), "2", m[2]


KINDS = ["cnn", "vit", "policy"]


def close(a, b):
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=ATOL, rtol=RTOL), float((a - b).abs().max())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "deeplift", "gradient_shap"])
def test_input_methods_equal_captum(kind, method):
    model, x, t, _, _ = case(kind)
    hm = HookedModel(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum's DeepLift warns about unsupported non-linearities (GELU)
        if method == "integrated_gradients":
            ref = IntegratedGradients(model).attribute(x, target=t, n_steps=20)
            got = attribute(hm, x, method, target=t, n_steps=20, batch_size=3, internal_batch_size=12)
        elif method == "saliency":
            ref = Saliency(model).attribute(x, target=t)
            got = attribute(hm, x, method, target=t, batch_size=3)
        elif method == "deeplift":
            base = 0.1 * torch.ones_like(x)
            ref = DeepLift(model).attribute(x, baselines=base, target=t)
            got = attribute(hm, x, method, target=t, baselines=base, batch_size=3)
        else:  # stochastic: equal for the same seed when the batch is one chunk
            base = torch.randn(5, *x.shape[1:], generator=torch.Generator().manual_seed(0))
            torch.manual_seed(11)
            np.random.seed(11)  # captum draws baselines with numpy's global RNG
            ref = GradientShap(model).attribute(x, baselines=base, target=t, n_samples=4, stdevs=0.1)
            got = attribute(hm, x, method, target=t, baselines=base, n_samples=4, stdevs=0.1, seed=11,
                            batch_size=16)
    assert isinstance(got, AttributionResult)
    close(got.attributions, ref)
    assert got.axes == {"cnn": ("batch", "feature", "pos", "pos"), "vit": ("batch", "feature", "pos", "pos"),
                        "policy": ("batch", "feature")}[kind]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["layer_integrated_gradients", "layer_conductance", "layer_gradcam"])
def test_layer_methods_equal_captum(kind, method):
    model, x, t, site, layer = case(kind)
    hm = HookedModel(model)
    axes = hm.sites[site].axes if hm._traced else HookedModel(model, example_input=x[:1]).sites[site].axes
    if method == "layer_integrated_gradients":
        ref = LayerIntegratedGradients(model, layer).attribute(x, target=t, n_steps=16)
        got = attribute(hm, x, method, site=site, target=t, n_steps=16, batch_size=4, internal_batch_size=16)
        assert got.axes == axes
    elif method == "layer_conductance":
        ref = LayerConductance(model, layer).attribute(x, target=t, n_steps=16)
        got = attribute(hm, x, method, site=site, target=t, n_steps=16, batch_size=4)
        assert got.axes == axes
    else:
        if kind == "vit":
            # token sites: channels are the feature axis; check against Grad-CAM's definition by autograd
            act = {}
            h = layer.register_forward_hook(lambda m, a, o: act.__setitem__("a", o))
            try:
                out = model(x)
            finally:
                h.remove()
            grad, = torch.autograd.grad(out.gather(1, t[:, None]).sum(), act["a"])
            a, g = act["a"][:, 1:], grad[:, 1:]  # patch tokens: CLS (token 0) is a named position, left out
            ref = (g.mean(1, keepdim=True) * a).sum(2).detach()  # [batch, 16]
        else:
            ref = LayerGradCam(model, layer).attribute(x, target=t)[:, 0]
        got = attribute(hm, x, method, site=site, target=t, batch_size=4)
        assert got.axes == {"cnn": ("batch", "pos", "pos"), "vit": ("batch", "pos"), "policy": ("batch",)}[kind]
    close(got.attributions, ref)


@pytest.mark.parametrize("kind", KINDS)
def test_hook_backend_equals_captum(kind):
    # the core-hooks implementations (used for virtual sites and token Grad-CAM) equal captum on module sites
    model, x, t, site, layer = case(kind)
    hm = HookedModel(model)
    ref = LayerIntegratedGradients(model, layer).attribute(x, target=t, n_steps=16)
    got = attribute(hm, x, "layer_integrated_gradients", site=site, target=t, n_steps=16, backend="hooks",
                    batch_size=5, internal_batch_size=20)
    close(got.attributions, ref)
    if kind != "vit":
        ref = LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)[:, 0]
        got = attribute(hm, x, "gradcam", site=site, target=t, backend="hooks", relu_attributions=True)
        close(got.attributions, ref)


@pytest.mark.parametrize("kind", KINDS)
def test_metric_and_completeness(kind):
    model, x, _, site, layer = case(kind)
    hm = HookedModel(model)

    def logit_diff(out):
        return out[:, 0] - out[:, 1]

    got = attribute(hm, x, "ig", metric=logit_diff, n_steps=64, batch_size=4, return_convergence_delta=True)
    ref = IntegratedGradients(lambda inp: logit_diff(model(inp))).attribute(x, n_steps=64)
    close(got.attributions, ref)
    # completeness (Sundararajan et al. 2017): attributions sum to F(x) - F(baseline)
    with torch.no_grad():
        gap = logit_diff(model(x)) - logit_diff(model(torch.zeros_like(x)))
    sums = got.attributions.reshape(len(x), -1).sum(1)
    assert torch.allclose(sums, gap, atol=2e-3 * (1 + gap.abs().max()))
    assert got.delta.shape == (len(x),)
    lig = attribute(hm, x, "layer_integrated_gradients", site=site, metric=logit_diff, n_steps=64)
    assert torch.allclose(lig.attributions.reshape(len(x), -1).sum(1), gap, atol=2e-3 * (1 + gap.abs().max()))


@pytest.mark.parametrize("kind", KINDS)
def test_per_example_metric_on_path_methods(kind):
    # a metric over per-example classes, on methods that stack one copy of the batch per step: IG is linear in
    # the function, so IG of logit[t] - logit[u] is IG(target=t) - IG(target=u)
    from interp_core.metrics import logit_diff

    model, x, t, site, layer = case(kind)
    u = (t + 1) % 3
    got = attribute(model, x, "ig", metric=logit_diff(t, u), n_steps=8, batch_size=7, internal_batch_size=21)
    ig = IntegratedGradients(model)
    close(got.attributions, ig.attribute(x, target=t, n_steps=8) - ig.attribute(x, target=u, n_steps=8))
    lig = LayerIntegratedGradients(model, layer)
    want = lig.attribute(x, target=t, n_steps=8) - lig.attribute(x, target=u, n_steps=8)
    for backend in ("captum", "hooks"):
        got = attribute(model, x, "lig", site=site, metric=logit_diff(t, u), n_steps=8, internal_batch_size=14,
                        backend=backend)
        close(got.attributions, want)
    with pytest.raises(InputError, match="needs batch_size >= 7"):  # the metric is made for all 7 examples
        attribute(model, x, "ig", metric=logit_diff(t, u), n_steps=8, batch_size=3)


def test_result_helpers_and_errors(tmp_path):
    model, x, t, site, _ = case("cnn")
    hm = HookedModel(model)
    res = attribute(hm, x, "saliency", target=t)
    assert res.per_position().shape == (7, 8, 8)
    assert res.sum_over("pos")[1] == ("batch", "feature")
    fig = res.plot(index=1)
    assert fig.axes
    res.save(tmp_path / "a.json")
    with pytest.raises(InputError, match="unknown attribution method 'lrp'"):
        attribute(hm, x, "lrp", target=t)
    with pytest.raises(InputError, match="closest: 'integrated_gradients'"):
        attribute(hm, x, "integrated_gradient", target=t)
    with pytest.raises(InputError, match="metric: none given"):
        attribute(hm, x, "saliency")
    with pytest.raises(InputError, match="both a metric and target"):
        attribute(hm, x, "saliency", target=t, metric=lambda out: out[:, 0])
    with pytest.raises(InputError, match="7 inputs"):
        attribute(hm, x, "saliency", target=t[:3])
    with pytest.raises(InputError, match="does not take"):
        attribute(hm, x, "saliency", target=t, n_samples=3)
    with pytest.raises(InputError, match="baselines: saliency does not use it"):
        attribute(hm, x, "saliency", target=t, baselines=torch.zeros_like(x))
    with pytest.raises(InputError, match="positions: integrated_gradients does not use it"):
        attribute(hm, x, "ig", target=t, positions="all")
    with pytest.raises(InputError, match="inputs: .*fails on .*5 channels"):
        attribute(small_cnn(), torch.randn(2, 5, 8, 8), "ig", target=0)
    with pytest.raises(InputError, match="out of bounds"):
        attribute(hm, x, "ig", target=9, n_steps=4)
    with pytest.raises(InputError, match="pass site="):
        attribute(hm, x, "layer_conductance", target=t)
    with pytest.raises(InputError, match="drop site="):
        attribute(hm, x, "saliency", target=t, site=site)
    with pytest.raises(InputError, match="one number per example"):
        attribute(hm, x, "saliency", metric=lambda out: out)
    with pytest.raises(SiteError, match="unknown site"):
        attribute(hm, x, "layer_conductance", site="22", target=t)


def test_virtual_site_goes_through_core_hooks():
    # a virtual site (attach-based) on the policy's hidden layer: layer IG and Grad-CAM through the core's
    # hooks equal captum on the module that carries the same activation
    from interp_core import GenericAdapter, Site

    model, x, t, _, layer = case("policy")

    def attach(root, fn):
        def hook(mod, args, out):
            new = fn(out)
            return out if new is None else new
        return root[2].register_forward_hook(hook)

    class Adapter(GenericAdapter):
        def sites(self, m):
            return super().sites(m) + [Site(name="hidden", module_path="2", kind="virtual",
                                            axes=("batch", "feature"), attach=attach)]

    hm = HookedModel(model, Adapter(), example_input=x[:1])
    got = attribute(hm, x, "layer_integrated_gradients", site="hidden", target=t, n_steps=16)
    close(got.attributions, LayerIntegratedGradients(model, layer).attribute(x, target=t, n_steps=16))
    assert got.config["backend"] == "hooks"
    with pytest.raises(ValueError, match="virtual site"):
        attribute(hm, x, "layer_conductance", site="hidden", target=t)


def test_named_shortcuts_equal_attribute():
    from interp_core import attribution as A

    model, x, t, site, _ = case("policy")
    hm = HookedModel(model)
    close(A.integrated_gradients(hm, x, target=t, n_steps=8).attributions,
          attribute(hm, x, "integrated_gradients", target=t, n_steps=8).attributions)
    close(A.layer_conductance(hm, x, site, target=t, n_steps=8).attributions,
          LayerConductance(model, model[2]).attribute(x, target=t, n_steps=8))
    close(A.saliency(hm, x, target=t).attributions, Saliency(model).attribute(x, target=t))


# ------------------------------------------------------------------------------------------------ one shape
def test_method_classes_have_captums_shape():
    from interp_core import attribution as A

    model, x, t, site, layer = case("cnn")
    assert set(A.registered_methods()) >= set(A.INPUT_METHODS + A.LAYER_METHODS)
    assert A.method_class("IntegratedGradients") is A.IntegratedGradients
    assert A.method_class("gradcam") is A.LayerGradCam
    got = A.IntegratedGradients(model).attribute(x, target=t, n_steps=12)
    close(got.attributions, IntegratedGradients(model).attribute(x, target=t, n_steps=12))
    got = A.LayerConductance(model, site=site).attribute(x.numpy(), target=t, n_steps=8)  # numpy via the boundary
    close(got.attributions, LayerConductance(model, layer).attribute(x, target=t, n_steps=8))
    with pytest.raises(InputError, match="backend"):
        A.LayerConductance(model, site=site, backend="hooks")


def _rng_states():
    return torch.get_rng_state().clone(), np.random.get_state()[1].copy()


@pytest.mark.parametrize("kind", ["cnn", "vit", "cartpole"])
def test_global_rng_state_unchanged(kind):
    if kind == "cartpole":
        import rl

        model = rl.zoo.load("cartpole-ppo")
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
        t, site = torch.tensor([0, 1, 0, 1, 1]), "encoder.out"
    else:
        model, x, t, site, _ = case(kind)
    torch.manual_seed(123)
    np.random.seed(123)
    before = _rng_states()
    for method, kw in [("gradient_shap", dict(n_samples=3, stdevs=0.1, seed=5)), ("integrated_gradients",
                       dict(n_steps=4)), ("saliency", {}), ("layer_gradcam", dict(site=site)),
                       ("layer_integrated_gradients", dict(site=site, n_steps=4))]:
        attribute(model, x, method, target=t, **kw)
        after = _rng_states()
        assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]), method
    # the draws themselves are seeded: the same seed gives the same attributions, another seed others
    a = attribute(model, x, "gradient_shap", target=t, n_samples=3, stdevs=0.1, seed=5).attributions
    b = attribute(model, x, "gradient_shap", target=t, n_samples=3, stdevs=0.1, seed=5).attributions
    c = attribute(model, x, "gradient_shap", target=t, n_samples=3, stdevs=0.1, seed=6).attributions
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kind", KINDS)
def test_signed_saliency_equals_captum(kind):
    model, x, t, _, _ = case(kind)
    got = attribute(model, x, "saliency", target=t, abs=False)
    ref = Saliency(model).attribute(x.clone(), target=t, abs=False)
    close(got.attributions, ref)
    assert (got.attributions < 0).any()  # really signed
    close(attribute(model, x, "saliency", target=t).attributions, ref.abs())


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_model_and_no_grad(kind):
    import copy

    model, x, t, site, layer = case(kind)
    frozen = copy.deepcopy(model).requires_grad_(False)
    refs = {
        "ig": IntegratedGradients(model).attribute(x, target=t, n_steps=8),
        "saliency": Saliency(model).attribute(x.clone(), target=t),
        "lig": LayerIntegratedGradients(model, layer).attribute(x, target=t, n_steps=8),
    }
    grad_cam = attribute(model, x, "gradcam", site=site, target=t).attributions
    for net, ctx in [(frozen, torch.enable_grad), (model, torch.no_grad), (frozen, torch.no_grad)]:
        with ctx():
            close(attribute(net, x, "ig", target=t, n_steps=8).attributions, refs["ig"])
            close(attribute(net, x, "saliency", target=t).attributions, refs["saliency"])
            for backend in ("captum", "hooks"):
                got = attribute(net, x, "lig", site=site, target=t, n_steps=8, backend=backend)
                close(got.attributions, refs["lig"])
            close(attribute(net, x, "gradcam", site=site, target=t).attributions, grad_cam)
    assert all(not p.requires_grad for p in frozen.parameters())


def test_vit_gradcam_position_selection():
    # CLS is excluded by default (a named position of the token sites); positions="all" gives the plain
    # definition over every token, and a list selects those tokens in order
    model, x, t, _, _ = case("vit")
    kept = {}
    h = model.blocks[1].register_forward_hook(lambda m, a, o: kept.__setitem__("a", o))
    try:
        out = model(x)
    finally:
        h.remove()
    grad, = torch.autograd.grad(out.gather(1, t[:, None]).sum(), kept["a"])
    act = kept["a"].detach()

    def cam(idx):
        return (grad[:, idx].mean(1, keepdim=True) * act[:, idx]).sum(2)

    for site in ("blocks.1", "blocks.1.resid_post"):
        got = attribute(model, x, "gradcam", site=site, target=t)
        close(got.attributions, cam(list(range(1, 17))))
        assert got.config["positions"] == list(range(1, 17))
    close(attribute(model, x, "gradcam", site="blocks.1.resid_post", target=t, positions="all").attributions,
          cam(list(range(17))))
    close(attribute(model, x, "gradcam", site="blocks.1.resid_post", target=t, positions=["cls", 3, 5]
                    ).attributions, cam([0, 3, 5]))
    with pytest.raises(InputIndexError, match="out of range"):
        attribute(model, x, "gradcam", site="blocks.1.resid_post", target=t, positions=[40])
    # per-head sites: channels are heads x features
    got = attribute(model, x, "gradcam", site="blocks.1.attn.z", target=t, relu_attributions=True)
    assert got.attributions.shape == (7, 16) and (got.attributions >= 0).all()


@pytest.mark.parametrize("site", ["bn1", "layer1.0.bn1"])
def test_layer_ig_at_batchnorm_before_inplace_relu(site):
    # every BatchNorm of resnet18 feeds an in-place ReLU; the reference is captum on a copy whose ReLUs are
    # out of place (the same function)
    import copy

    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    ref_model = copy.deepcopy(model)
    for m in ref_model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 3])
    ref = LayerIntegratedGradients(ref_model, ref_model.get_submodule(site)).attribute(x, target=t, n_steps=6)
    for backend in ("captum", "hooks"):
        got = attribute(model, x, "lig", site=site, target=t, n_steps=6, backend=backend)
        close(got.attributions, ref)
        assert got.axes == ("batch", "feature", "pos", "pos")
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


class _AuxNet(nn.Module):
    """A body, a head on the output path and an auxiliary branch that the output never uses."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(6, 8)
        self.aux = nn.Linear(8, 2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        self.aux(h)
        return self.head(h)


def test_gradcam_off_the_metric_path_names_the_site():
    net = _AuxNet().eval()
    x = torch.randn(4, 6)
    for model in (net, _AuxNet().eval().requires_grad_(False)):
        with pytest.raises(InputError, match="site 'aux'.*does not depend"):
            attribute(model, x, "gradcam", site="aux", target=1)
    # on the path it is sum_c dF/dA_c A_c (no positions): F = head(h)_1 is linear in h
    got = attribute(net, x, "gradcam", site="body", target=1).attributions
    with torch.no_grad():
        a = net.body(x)
        want = ((1 - torch.tanh(a) ** 2) * net.head.weight[1] * a).sum(1)
    close(got, want)


def test_deeplift_leaves_nothing_on_modules():
    for kind in KINDS:
        model, x, t, _, _ = case(kind)
        before = {name: set(vars(m)) for name, m in model.named_modules()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attribute(model, x, "deeplift", target=t)
        after = {name: set(vars(m)) for name, m in model.named_modules()}
        assert after == before, {k: after[k] - before[k] for k in after if after[k] != before[k]}
        assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_channels_last_observations_take_the_obs_sites_axes():
    import rl
    from rl import metrics

    agent = rl.zoo.load("doorkey-ppo")
    env = agent.make_env()
    obs = torch.as_tensor(np.stack([env.reset(seed=s)[0] for s in range(2)]), dtype=torch.float32)
    assert obs.shape == (2, 7, 7, 3)
    res = attribute(agent, obs, "saliency", metric=metrics.value(), abs=False)
    assert res.axes == ("batch", "pos", "pos", "feature")
    x = obs.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(agent(x).value.sum(), x)
    close(res.attributions, grad)
    assert res.per_position().shape == (2, 7, 7)  # summed over the 3 MiniGrid channels (last axis)
    # the env's own uint8 grids (numpy) are attributed as real numbers: the same answer
    raw = np.stack([env.reset(seed=s)[0] for s in range(2)])
    assert raw.dtype == np.uint8
    close(attribute(agent, raw, "saliency", metric=metrics.value(), abs=False).attributions, grad)
    # the network's own layout [N, 3, 7, 7] keeps the obs site's axes
    res = attribute(agent, obs.permute(0, 3, 1, 2), "saliency", metric=metrics.value())
    assert res.axes == ("batch", "feature", "pos", "pos")


def test_ambiguous_input_axes_are_refused():
    from collections import OrderedDict

    class ToChannelsFirst(nn.Module):
        def forward(self, x):
            return x.permute(0, 3, 1, 2)

    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(perm=ToChannelsFirst(), obs=nn.Identity(), flat=nn.Flatten(),
                                    fc=nn.Linear(32, 2))).eval()
    x = torch.randn(3, 4, 2, 4)  # channels-last [N, 4, 2, 4]: obs is [N, 4(feature), 4, 2]: size 4 is both
    with pytest.raises(InputError, match="input_axes="):
        attribute(net, x, "saliency", target=0)
    res = attribute(net, x, "saliency", target=0, input_axes=("batch", "pos", "pos", "feature"))
    assert res.axes == ("batch", "pos", "pos", "feature")


def test_ig_plot_has_captioned_panels_and_a_colour_bar():
    model, x, t, _, _ = case("cnn")
    res = attribute(model, x, "ig", target=t, n_steps=8)
    fig = res.plot(n=3)
    panels = [a for a in fig.axes if a.get_title()]
    assert len(panels) == 3 and len(fig.axes) == 4  # three panels + one colour bar
    total = float(res.attributions[1].sum())
    assert panels[1].get_title() == f"example 1: sum {total:.3g}"
    assert "integrated_gradients" in fig._suptitle.get_text()
