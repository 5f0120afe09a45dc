"""The traced fast path of run_with_cache gives bit for bit what the hooks give, and steps aside where it cannot."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

import rl
import vision
from interp_core import HookedModel
from interp_core.forwards import replace_forward
from interp_core.interventions import Ablate

from ..conftest import make_cnn, make_policy, make_vit


def _pairs(hm, x, sites, pool=None):
    hm.fast_cache = True
    fast = hm.run_with_cache(x, sites=sites, pool=pool)
    used = bool(hm._plans) and any(p is not None for p in hm._plans.values())
    hm.fast_cache = False
    slow = hm.run_with_cache(x, sites=sites, pool=pool)
    hm.fast_cache = True
    return fast, slow, used


def _equal(a, b):
    out_a, cache_a = a
    out_b, cache_b = b
    assert torch.equal(out_a, out_b)
    assert list(cache_a) == list(cache_b)
    for k in cache_a:
        assert torch.equal(cache_a[k], cache_b[k]), k
        assert cache_a.axes(k) == cache_b.axes(k), k


MODELS = {
    "cnn (in-place ReLU, in-place add, reused ReLU)": (make_cnn, (2, 3, 8, 8)),
    "policy MLP": (make_policy, (1, 6)),
    "torchvision resnet18": (lambda: torchvision.models.resnet18(num_classes=10).eval(), (2, 3, 32, 32)),
    "digits-cnn (zoo)": (lambda: vision.zoo.load("digits-cnn", hooked=False), (3, 1, 8, 8)),
    "digits-vit (zoo)": (lambda: vision.zoo.load("digits-vit", hooked=False), (3, 1, 8, 8)),
    "timm vit (random init)": (make_vit, (2, 3, 16, 16)),
    "shapes-cnn-shortcut (zoo)": (lambda: vision.zoo.load("shapes-cnn-shortcut", hooked=False), (2, 3, 16, 16)),
    "torchvision mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10).eval(),
                                       (2, 3, 32, 32)),
    "timm convnext_atto": (lambda: timm.create_model("convnext_atto", num_classes=10).eval(), (2, 3, 32, 32)),
    "timm resnet18": (lambda: timm.create_model("resnet18", num_classes=10).eval(), (2, 3, 32, 32)),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("pool", [None, "mean"])
def test_traced_equals_hooks_on_every_site(name, pool):
    make, shape = MODELS[name]
    model = make()
    hm = HookedModel(model)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    hm.trace(x)
    every = [n for n in hm.sites.names if hm.sites[n].axes is not None and hm.sites[n].kind == "output"]
    paths = {hm.sites[n].module_path for n in every}
    leaves = [n for n in every if not any(p.startswith(hm.sites[n].module_path + ".") for p in paths)
              and hm.sites[n].module_path]
    nested = any(q.startswith(p + ".") for p in paths if p for q in paths)
    for sites, served in ((hm.default_sites, True), (leaves, True), (every, not nested)):
        hm._plans.clear()
        fast, slow, used = _pairs(hm, x, sites, pool)
        _equal(fast, slow)
        # a site inside another asked-for site cannot be a node of one graph: then the hooks serve
        assert used == served, (sites, used)


def test_cached_activations_are_safe_from_in_place_ops():
    """make_cnn's block ends with `out += x; relu_(out)`: the graph copies what it records, as the hooks do."""
    model = make_cnn()
    hm = HookedModel(model, adapter="generic")
    x = torch.randn(2, 3, 8, 8)
    _, cache = hm.run_with_cache(x, sites=["block.bn2", "stem"])
    ref = {}
    h1 = model.block.bn2.register_forward_hook(lambda m, a, o: ref.__setitem__("bn2", o.clone()))
    h2 = model.stem.register_forward_hook(lambda m, a, o: ref.__setitem__("stem", o.clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h1.remove()
        h2.remove()
    assert torch.equal(cache["block.bn2"], ref["bn2"]) and torch.equal(cache["stem"], ref["stem"])


def test_the_fast_path_steps_aside():
    model = make_policy()
    hm = HookedModel(model)
    x = torch.randn(4, 6)
    ref = hm.run_with_cache(x, sites=["0", "2"])
    assert any(p is not None for p in hm._plans.values())
    # a user's hook on the (inlined) root: the graph would skip it, so the hooks serve and the user's hook fires
    calls = []
    h = model.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        _equal(hm.run_with_cache(x, sites=["0", "2"]), ref)
        assert calls == [1]
    finally:
        h.remove()
    # a forward override (patching's prefix reuse, the ViT's instrumentation): the hooks serve
    handle = replace_forward(model[2], lambda m, inner: (lambda t: inner(t) * 0))
    try:
        out, cache = hm.run_with_cache(x, sites=["2"])
        assert torch.count_nonzero(cache["2"]) == 0
    finally:
        handle.remove()
    # train mode: dropout/batch statistics are not baked into a graph
    drop = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.9))
    hd = HookedModel(drop.train())
    with pytest.warns(UserWarning):
        _, c = hd.run_with_cache(torch.ones(64, 6), sites=["1"])
    assert (c["1"] == 0).float().mean() > 0.5  # dropout was active, as the model's mode says
    # interventions and gradients always take the hooks
    _, cache = hm.run_with_cache(x, sites=["2"], interventions={"0": Ablate("zero")})
    assert not torch.equal(cache["2"], ref[1]["2"])
    _, cache = hm.run_with_cache(x, sites=["2"], grad=True)
    assert cache["2"].requires_grad


def test_virtual_sites_take_the_hooks_and_agree():
    vit = vision.wrap(make_vit())
    x = torch.randn(2, 3, 16, 16)
    fast, slow, _ = _pairs(vit, x, ["blocks.0.attn.z", "blocks.1.resid_post"])
    _equal(fast, slow)


def test_hooks_on_called_modules_and_their_own_train_flags_are_honoured():
    """The graph calls modules' ``forward`` directly: a hook anywhere sends the call to the hook path (and the
    hook's edit takes effect); a called module's own train flag is read live, as the hooks path reads it."""
    model = make_policy()
    hm = HookedModel(model)
    x = torch.randn(4, 6)
    ref = hm.run_with_cache(x, sites=["0", "2"])
    h = model[0].register_forward_hook(lambda m, a, o: o * 0)
    try:
        _, cache = hm.run_with_cache(x, sites=["0", "2"])
        assert torch.count_nonzero(cache["0"]) == 0
    finally:
        h.remove()
    _equal(hm.run_with_cache(x, sites=["0", "2"]), ref)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()).eval()
    net[1].train()  # the root in eval mode, one called module in train mode: batch statistics, live
    hb = HookedModel(net)
    fast, slow, used = _pairs(hb, torch.randn(16, 6), ["1", "2"])
    assert used
    _equal(fast, slow)


@pytest.mark.parametrize("name", rl.zoo.names())
def test_agents_trace_their_tensor_step(name):
    """Policy wrappers prepare numpy observations outside the graph (``traced_method`` / ``traced_call``): the
    graph of their ``step`` gives bit for bit what the hooks give; recurrent agents take the hooks."""
    agent = rl.zoo.load(name)
    space = agent.model.net.observation_space
    space.seed(0)
    obs = np.stack([space.sample() for _ in range(3)])
    fast, slow, used = _pairs(agent, obs, agent.default_sites)
    assert used == (not agent.model.recurrent)
    assert torch.equal(fast[0].logits, slow[0].logits) and torch.equal(fast[0].value, slow[0].value)
    assert list(fast[1]) == list(slow[1]) and all(torch.equal(fast[1][k], slow[1][k]) for k in fast[1])
    # one unbatched observation, as a rollout step gives it
    fast, slow, _ = _pairs(agent, obs[0], ["logits"])
    assert torch.equal(fast[0].logits, slow[0].logits) and torch.equal(fast[1]["logits"], slow[1]["logits"])


def test_plain_policy_agent_traces_with_its_preprocess():
    from rl import agents

    from ..rl.test_agents import _CNNPolicy

    torch.manual_seed(0)
    agent = agents.wrap(_CNNPolicy().eval(), obs_shape=(7, 7, 3))
    fast, slow, used = _pairs(agent, torch.rand(2, 7, 7, 3), ["obs", "encoder.0", "encoder.out", "logits"])
    assert used
    assert torch.equal(fast[0].logits, slow[0].logits)
    assert all(torch.equal(fast[1][k], slow[1][k]) for k in fast[1])


def test_a_model_changed_after_the_graph_was_built_is_traced_again():
    """A replaced submodule, a swapped parameter or a changed setting that the graph baked in: the next call
    gives what the model computes now (the graph is built again; a model that keeps changing takes the hooks)."""
    model = make_policy()
    hm = HookedModel(model)
    x = torch.randn(4, 6)
    hm.run_with_cache(x, sites=["0"])
    model[0] = nn.Linear(6, model[0].out_features)
    with torch.no_grad():
        out, cache = hm.run_with_cache(x, sites=["0"])
        assert torch.equal(cache["0"], model[0](x)) and torch.equal(out, model(x))
        model[2].weight.mul_(2)  # in place: the same tensor, nothing to rebuild
        assert torch.equal(hm.run_with_cache(x, sites=["0"])[0], model(x))
        model[2].bias = nn.Parameter(torch.ones_like(model[2].bias))  # read live by the called module
        assert torch.equal(hm.run_with_cache(x, sites=["0"])[0], model(x))
        assert all(p is not None for p in hm._plans.values())
        model[2] = nn.Linear(model[2].in_features, model[2].out_features)
        assert torch.equal(hm.run_with_cache(x, sites=["0"])[0], model(x))
    assert all(p is None for p in hm._plans.values())  # changed twice: the hooks serve from now on
    vit = make_vit()
    hv = HookedModel(vit)
    xi = torch.randn(2, 3, 16, 16)
    hv.run_with_cache(xi, sites=["blocks.0"])
    assert any(p is not None for p in hv._plans.values())
    vit.global_pool = "avg" if vit.global_pool != "avg" else "token"  # a setting read by inlined code
    with torch.no_grad():
        out, _ = hv.run_with_cache(xi, sites=["blocks.0"])
        assert torch.equal(out, vit(xi))


@pytest.mark.parametrize("fast", [True, False])
def test_pooling_with_nothing_to_pool_is_safe_from_in_place_ops(fast):
    """A [batch, feature] site with pool="mean" has nothing to pool: the recorded tensor must still be a copy,
    not the activation an in-place ReLU overwrites next (the hook path once kept the alias: mobilenet_v3)."""
    model = nn.Sequential(nn.Linear(6, 8), nn.Hardswish(inplace=True), nn.Linear(8, 2)).eval()
    hm = HookedModel(model, adapter="generic")
    hm.fast_cache = fast
    x = torch.randn(4, 6)
    _, cache = hm.run_with_cache(x, sites=["0"], pool="mean")
    with torch.no_grad():
        assert torch.equal(cache["0"], model[0](x))
