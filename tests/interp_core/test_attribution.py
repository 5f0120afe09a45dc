"""Attribution: every method equals captum called directly, on a CNN, a tiny ViT and a policy MLP."""

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
            ref = (grad.mean(1, keepdim=True) * act["a"]).sum(2).detach()  # [batch, pos]
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


def test_result_helpers_and_errors(tmp_path):
    model, x, t, site, _ = case("cnn")
    hm = HookedModel(model)
    res = attribute(hm, x, "saliency", target=t)
    assert res.per_position().shape == (7, 8, 8)
    assert res.sum_over("pos")[1] == ("batch", "feature")
    fig = res.plot(index=1)
    assert fig.axes
    res.save(tmp_path / "a.json")
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribute(hm, x, "lrp", target=t)
    with pytest.raises(ValueError, match="exactly one of target"):
        attribute(hm, x, "saliency")
    with pytest.raises(ValueError, match="pass site="):
        attribute(hm, x, "layer_conductance", target=t)
    with pytest.raises(ValueError, match="drop site="):
        attribute(hm, x, "saliency", target=t, site=site)
    with pytest.raises(ValueError, match="one number per example"):
        attribute(hm, x, "saliency", metric=lambda out: out)
    with pytest.raises(KeyError, match="unknown site"):
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
