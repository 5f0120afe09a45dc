"""HookedModel: identity with hooks, agreement with hand-written hooks, reused modules, in-place ops,
gradients through cached activations, and exact restoration of the model."""

import pytest
import timm
import torch
import torchvision
from torch import nn

from interp_core import GenericAdapter, HookedModel
from interp_core.interventions import Patch

from ..conftest import make_cnn, make_policy


def _models():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10).eval()
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    return {
        "vit": (vit, torch.randn(2, 3, 32, 32)),
        "resnet18": (resnet, torch.randn(2, 3, 64, 64)),
        "policy": (make_policy(), torch.randn(5, 6)),
    }


MODELS = _models()


@pytest.mark.parametrize("name", list(MODELS))
def test_every_site_hooked_is_bitwise_identical(name):
    model, x = MODELS[name]
    hm = HookedModel(model, adapter="generic", example_input=x)
    with torch.no_grad():
        ref = model(x)
    out, cache = hm.run_with_cache(x, sites=hm.sites.names)
    assert torch.equal(out, ref)
    assert len(cache) == len(hm.sites)
    # patching every site with its own clean activation changes nothing
    out2 = hm.run_with_interventions(x, {s: Patch(cache) for s in hm.sites.names})
    assert torch.equal(out2, ref)


@pytest.mark.parametrize("name", list(MODELS))
def test_cache_equals_hand_written_forward_hooks(name):
    model, x = MODELS[name]
    hm = HookedModel(model, adapter="generic", example_input=x)
    names = [n for n in hm.sites.names if "#" not in n and n != "output"][:40]
    captured, handles = {}, []
    for n in names:
        mod = model.get_submodule(n)
        handles.append(mod.register_forward_hook(
            lambda m, a, o, n=n: captured.__setitem__(n, o.detach().clone())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    _, cache = hm.run_with_cache(x, sites=names)
    for n in names:
        assert torch.equal(cache[n], captured[n]), n


def test_in_place_ops_do_not_change_cached_data():
    # block.bn2's output is modified in place by `out += x` and by the in-place ReLU afterwards
    model = make_cnn()
    x = torch.randn(2, 3, 8, 8)
    hm = HookedModel(model, adapter="generic")
    _, cache = hm.run_with_cache(x, sites=["block.bn1", "block.bn2", "block.relu#0", "block.relu#1"])
    b = model.block
    with torch.no_grad():
        stem = model.stem(x)
        bn1 = b.bn1(b.conv1(stem))
        r0 = torch.relu(bn1)
        bn2 = b.bn2(b.conv2(r0))
        r1 = torch.relu(bn2 + stem)
    assert torch.allclose(cache["block.bn1"], bn1, atol=1e-6)
    assert torch.allclose(cache["block.bn2"], bn2, atol=1e-6)
    assert torch.allclose(cache["block.relu#0"], r0, atol=1e-6)
    assert torch.allclose(cache["block.relu#1"], r1, atol=1e-6)
    assert (cache["block.bn2"] < 0).any()  # the pre-ReLU values survived


def test_reused_module_gets_one_site_per_call():
    model, x = MODELS["resnet18"]
    hm = HookedModel(model, adapter="generic")
    hm.trace(x)
    assert "layer1.0.relu#0" in hm.sites and "layer1.0.relu#1" in hm.sites
    with pytest.raises(KeyError, match=r"runs 2 times per forward.*'layer1\.0\.relu#0', 'layer1\.0\.relu#1'"):
        hm.sites["layer1.0.relu"]
    _, cache = hm.run_with_cache(x, sites=["layer1.0.relu#1", "layer1.0"])
    assert torch.equal(cache["layer1.0.relu#1"], cache["layer1.0"])  # the block ends with its second relu


def test_reused_module_without_trace_raises_instead_of_mixing_calls():
    model = make_cnn()
    x = torch.randn(1, 3, 8, 8)
    hm = HookedModel(model, adapter="generic")  # untraced: the plain name exists until a trace splits it
    assert "block.relu" in hm.sites
    with pytest.raises(RuntimeError, match="ran more than once"):
        with hm.intervene({"block.relu": lambda a, s: a}):
            model(x)
    assert not any(m._forward_hooks for m in model.modules())


def test_axes_inferred_and_overridable():
    model, x = MODELS["resnet18"]
    hm = HookedModel(model, adapter="generic", example_input=x)
    assert hm.sites["layer2.1"].axes == ("batch", "feature", "pos", "pos")
    assert hm.sites["layer2.1"].shape == (128, 8, 8)
    assert hm.sites["fc"].axes == ("batch", "feature")
    vit, xv = MODELS["vit"]
    hv = HookedModel(vit, adapter="generic", example_input=xv)
    assert hv.sites["blocks.0"].axes == ("batch", "pos", "feature")
    conv1d = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU())
    hc = HookedModel(conv1d, adapter="generic", example_input=torch.randn(1, 2, 9))
    assert hc.sites["0"].axes == ("batch", "feature", "pos")
    custom = HookedModel(conv1d, GenericAdapter(axes={"1": ("batch", "feature", "pos")}),
                         example_input=torch.randn(1, 2, 9))
    assert custom.sites["1"].axes == ("batch", "feature", "pos")


def test_unknown_site_lists_closest_names():
    model, x = MODELS["resnet18"]
    hm = HookedModel(model, adapter="generic", example_input=x)
    with pytest.raises(KeyError) as e:
        hm.run_with_cache(x, sites=["layer2.1.bnn2"])
    msg = str(e.value)
    assert "unknown site 'layer2.1.bnn2'" in msg and "'layer2.1.bn2'" in msg
    assert f"lists all {len(hm.sites)}" in msg


def test_gradients_flow_through_cached_activations():
    # closed form: out = W3 tanh(W2 tanh(W1 x + b1) + b2) + b3; d sum(out) / d (site "3" output) = W3^T 1
    model = make_policy()
    x = torch.randn(4, 6)
    hm = HookedModel(model, adapter="generic")
    out, cache = hm.run_with_cache(x, sites=["3", "2"], grad=True)
    (g3,) = torch.autograd.grad(out.sum(), cache["3"], retain_graph=True)
    assert torch.allclose(g3, model[4].weight.sum(0).expand(4, -1), atol=1e-6)
    (g2,) = torch.autograd.grad(out.sum(), cache["2"])
    expected = g3 * (1 - torch.tanh(cache["2"]) ** 2)
    assert torch.allclose(g2, expected.detach(), atol=1e-6)
    assert torch.equal(out.detach(), model(x).detach())


def test_gradients_with_in_place_residual():
    model = make_cnn()
    x = torch.randn(2, 3, 8, 8)
    hm = HookedModel(model, adapter="generic")
    out, cache = hm.run_with_cache(x, sites=["block.bn2"], grad=True)
    _, plain = hm.run_with_cache(x, sites=["block.bn2"])
    assert torch.equal(cache["block.bn2"].detach(), plain["block.bn2"])  # the in-place add did not leak in
    (g,) = torch.autograd.grad(out[:, 1].sum(), cache["block.bn2"])
    # the same gradient from a hand-written forward that starts at bn2's output as a leaf
    b = model.block
    with torch.no_grad():
        stem = model.stem(x)
        bn2 = b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(stem)))))
    leaf = bn2.clone().requires_grad_()
    y = model.head(model.flat(model.pool(torch.relu(leaf + stem))))
    (g_true,) = torch.autograd.grad(y[:, 1].sum(), leaf)
    assert torch.allclose(g, g_true, atol=1e-7)


def test_pooling_happens_in_the_hook():
    model, x = MODELS["resnet18"]
    hm = HookedModel(model, adapter="generic")
    _, full = hm.run_with_cache(x, sites=["layer3.0"])
    _, pooled = hm.run_with_cache(x, sites=["layer3.0"], pool="mean")
    _, mx = hm.run_with_cache(x, sites=["layer3.0"], pool="max")
    _, cell = hm.run_with_cache(x, sites=["layer3.0"], pool=(1, 2))
    f = full["layer3.0"]
    assert pooled["layer3.0"].shape == (2, 256) and pooled.axes("layer3.0") == ("batch", "feature")
    assert torch.allclose(pooled["layer3.0"], f.mean(dim=(2, 3)))
    assert torch.equal(mx["layer3.0"], f.amax(dim=(2, 3)))
    assert torch.equal(cell["layer3.0"], f[:, :, 1, 2])
    with pytest.raises(ValueError, match="pooling"):
        hm.run_with_cache(x, sites=["layer3.0"], pool="mean", grad=True)


def test_evaluating_restores_each_modules_flag():
    model = make_cnn().train()
    model.block.bn1.eval()
    hm = HookedModel(model, adapter="generic")
    with hm.evaluating():
        assert not any(m.training for m in model.modules())
    assert model.training and model.block.training and not model.block.bn1.training


def test_trace_leaves_batchnorm_statistics_alone_in_train_mode():
    model = make_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    HookedModel(model, adapter="generic", example_input=torch.randn(2, 3, 8, 8))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training
