"""The boundary: one rule for models, data and metrics (interp_core.boundary), modes and forward overrides."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import vision
from interp_core import HookedModel
from interp_core.boundary import (
    all_finite,
    as_hooked,
    as_inputs,
    as_metric,
    auto_batch_size,
    find_adapter,
    iter_batches,
    register_adapter,
    registered_adapters,
)
from interp_core.errors import InputError, InputTypeError, InterpError, InterpWarning
from interp_core.forwards import active_overrides, replace_forward
from interp_core.metrics import Metric, logit

from ..conftest import make_vit as tiny_vit


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


# ---------------------------------------------------------------------------------------------- models
def test_registry_lists_the_domain_adapters():
    assert {"vision", "rl"} <= set(registered_adapters())


def test_plain_vit_gets_the_same_sites_as_vision_wrap():
    vit = tiny_vit()
    a, b = HookedModel(vit), vision.wrap(vit)
    assert a.adapter.name == b.adapter.name == "vit"
    assert a.sites.names == b.sites.names
    assert "blocks.0.attn.z" in a.sites
    assert as_hooked(vit).sites.names == b.sites.names


def test_cnn_and_generic_rules():
    r = torchvision.models.resnet18(num_classes=10).eval()
    assert HookedModel(r).adapter.name == "cnn"
    assert HookedModel(r, adapter="generic").adapter.name == "generic"
    assert as_hooked(mlp()).adapter.name == "generic"  # no conv, no attention: nobody claims it
    assert find_adapter(mlp()) is None


def test_hooked_model_passes_through():
    hm = HookedModel(mlp())
    assert as_hooked(hm) is hm


def test_sb3_model_becomes_an_agent():
    import rl
    from rl.agents import Agent

    agent = rl.zoo.load("cartpole-ppo")
    assert isinstance(as_hooked(agent.model), HookedModel)
    assert as_hooked(agent.model).adapter.name == "rl-policy"
    sb3_policy = agent.model.net
    wrapped = as_hooked(sb3_policy)
    assert isinstance(wrapped, Agent)
    assert wrapped.sites.names == agent.sites.names


def test_runtime_registration_with_priority_wins():
    class Special(nn.Linear):
        pass

    class MyAdapter:
        name = "mine"
        priority = 100

        def sites(self, model):
            from interp_core import Site
            return [Site("the_output", "")]

        def default_sites(self, model):
            return ["the_output"]

        def example_input(self, model):
            return torch.zeros(2, 3)

    register_adapter("test-mine", lambda m: MyAdapter() if isinstance(m, Special) else None)
    try:
        hm = as_hooked(Special(3, 2))
        assert hm.adapter.name == "mine" and hm.sites.names == ["the_output"]
        assert as_hooked(nn.Linear(3, 2)).adapter.name == "generic"
    finally:
        from interp_core import boundary
        boundary._runtime_claims.pop("test-mine")


def test_not_a_model_is_refused_by_name():
    with pytest.raises(InputTypeError, match="model: expected a HookedModel"):
        as_hooked("resnet18")
    with pytest.raises(InputTypeError, match="claim"):
        register_adapter("x", 3)


# ---------------------------------------------------------------------------------------------- data
def _forms(x: torch.Tensor, y: torch.Tensor):
    ds = TensorDataset(x, y)
    return {
        "tensor+labels": (x, y),
        "numpy float64": (x.double().numpy(), y.numpy()),
        "pair": ((x, y), None),
        "numpy pair": ((x.numpy(), y.numpy()), None),
        "Dataset": (ds, None),
        "DataLoader": (DataLoader(ds, batch_size=7), None),
        "list of tensors": ([x[:10], x[10:]], y),
        "list of pairs": ([(x[:10], y[:10]), (x[10:], y[10:])], None),
        "generator of dicts": ((({"x": x[i:i + 5], "y": y[i:i + 5]}) for i in range(0, len(x), 5)), None),
    }


@pytest.mark.parametrize("form", list(_forms(torch.zeros(1, 1), torch.zeros(1)).keys()))
def test_every_data_form_gives_the_same_batches(form):
    torch.manual_seed(0)
    x, y = torch.randn(23, 16), torch.randint(0, 4, (23,))
    data, labels = _forms(x, y)[form]
    hm = HookedModel(mlp())
    xs, ys = as_inputs(data, labels, model=hm)
    assert xs.dtype == torch.float32
    torch.testing.assert_close(xs, x)
    assert torch.equal(ys, y)
    sizes = [b.size for b in iter_batches(data if form != "generator of dicts" else _forms(x, y)[form][0], labels,
                                          model=hm, batch_size=10)]
    assert sum(sizes) == 23


def test_dict_without_known_keys_is_keyword_arguments():
    class KW(nn.Module):
        def forward(self, a, b):
            return a + b

    a, b = torch.ones(4, 2), torch.ones(4, 2)
    batches = list(iter_batches({"a": a, "b": b}, batch_size=3))
    assert [bt.size for bt in batches] == [3, 1]
    assert set(batches[0].inputs) == {"a", "b"}
    assert batches[0].labels is None
    assert KW()(**batches[0].inputs).shape == (3, 2)


@pytest.mark.parametrize("bad, match", [
    (None, "data: no data given"),
    (torch.zeros(0, 16), "data: empty"),
    ([], "no examples"),
    (torch.tensor([[0.0] * 15 + [float("nan")]] * 3), "NaN or infinite"),
    (np.array([object()] * 3), "Python objects"),
    ("images.png", "cannot make batches from a str"),
])
def test_bad_data_gets_the_suite_error_naming_the_argument(bad, match):
    with pytest.raises(InterpError, match=match):
        list(iter_batches(bad, model=HookedModel(mlp())))


def test_label_errors():
    x = torch.randn(6, 16)
    with pytest.raises(InputError, match="6 inputs but 5 labels"):
        list(iter_batches(x, torch.zeros(5)))
    with pytest.raises(InputError, match="labels given twice"):
        list(iter_batches((x, torch.zeros(6)), torch.zeros(6)))
    with pytest.raises(InputError, match="labels: 7 labels for 6 inputs"):
        list(iter_batches([x[:3], x[3:]], torch.zeros(7)))


def test_unbatched_tensor_is_refused_for_a_layered_model():
    with pytest.raises(InputError, match="no batch axis"):
        list(iter_batches([torch.randn(16)], model=HookedModel(mlp())))


def test_auto_batch_size_follows_the_activation_size():
    vit = vision.wrap(tiny_vit(img_size=64))  # 257 tokens: a 2 x 257 x 257 pattern per image
    small = auto_batch_size(HookedModel(mlp(), example_input=torch.zeros(1, 16)))
    big = auto_batch_size(vit, ["blocks.0.attn.pattern"])
    assert 1 <= big < small <= 4096


# ---------------------------------------------------------------------------------------------- metrics
def test_one_metric_rule():
    m = logit_metric = logit(2)
    assert as_metric(m) is logit_metric
    out = torch.arange(12.0).reshape(3, 4)
    torch.testing.assert_close(as_metric(target=2)(out), out[:, 2])
    torch.testing.assert_close(as_metric(torch.tensor([0, 1, 3]))(out), torch.tensor([0.0, 5.0, 11.0]))
    wrapped = as_metric(lambda o: o.sum(1))
    assert isinstance(wrapped, Metric)
    with pytest.raises(InputError, match="returned"):
        as_metric(lambda o: o)(out)
    with pytest.raises(InputError, match="none given"):
        as_metric()
    with pytest.raises(InputError, match="give one"):
        as_metric(logit(0), target=1)
    with pytest.raises(InputTypeError):
        as_metric(torch.tensor([0.5]))


# ---------------------------------------------------------------------------------------------- trace
def test_a_later_input_of_another_rank_retraces():
    """The defect: a trace on an unbatched row broke every later batched call."""
    lin = nn.Linear(16, 4).eval()
    hm = HookedModel(lin, adapter="generic")
    hm.run_with_cache(torch.randn(16), sites=["output"])  # traced on one row (a Linear accepts it)
    out, cache = hm.run_with_cache(torch.randn(40, 16), sites=["output"])
    assert cache["output"].shape == (40, 4) and hm.sites["output"].axes == ("batch", "feature")


def test_a_later_input_the_model_cannot_run_says_what_the_first_looked_like():
    hm = HookedModel(mlp(), adapter="generic")
    hm.run_with_cache(torch.randn(3, 16), sites=["0"])
    with pytest.raises(InputError, match=r"traced on tensor \(3, 16\) float32"):
        hm.run_with_cache(torch.randn(3, 5), sites=["0"])


def test_raw_forward_failure_becomes_the_suite_error():
    hm = HookedModel(torchvision.models.resnet18(num_classes=10).eval(), adapter="generic")
    with pytest.raises(InputError, match="inputs: ResNet failed on tensor"):
        hm.run_with_cache(torch.randn(2, 5, 32, 32), sites=["layer1.0"])


# ---------------------------------------------------------------------------------------------- modes
def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU())


def test_train_mode_warns_once_and_keeps_buffers():
    net = _bn_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    hm = HookedModel(net)
    x = torch.randn(4, 3, 8, 8)
    with pytest.warns(InterpWarning, match="train mode"):
        hm.run_with_cache(x, sites=["1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hm.run_with_interventions(x, {})
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.training and all(m.training for m in net.modules())


def test_analysis_modes_restore_flags_and_buffers():
    net = _bn_net().train()
    net[2].eval()  # a mixed state must come back exactly
    flags = [m.training for m in net.modules()]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    hm = HookedModel(net)
    with hm.analysis():
        assert not any(m.training for m in net.modules())
        a = hm(torch.randn(2, 3, 8, 8))
    with hm.analysis(train=True), warnings.catch_warnings():
        warnings.simplefilter("error")  # train mode was asked for: no train-mode warning
        assert all(m.training for m in net.modules())
        hm(torch.randn(8, 3, 8, 8))  # batch statistics are used ...
    assert [m.training for m in net.modules()] == flags
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # ... and the buffers restored
    assert a.shape == (2, 4, 6, 6)


def test_grad_cache_on_a_frozen_model_under_no_grad():
    net = mlp().requires_grad_(False)
    hm = HookedModel(net)
    x = torch.randn(5, 16)
    with torch.no_grad():
        out, cache = hm.run_with_cache(x, sites=["1"], grad=True)
    (g,) = torch.autograd.grad(out[:, 0].sum(), cache["1"])
    torch.testing.assert_close(g, (net[2].weight[0].expand(5, -1)).detach())
    assert not any(p.requires_grad for p in net.parameters())


# ---------------------------------------------------------------------------------------------- forwards
@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_forward_overrides_end_in_any_order(order):
    lin = nn.Linear(2, 2)
    x = torch.randn(3, 2)
    ref = lin(x)
    handles = [replace_forward(lin, lambda m, inner, k=k: (lambda t: inner(t) + k)) for k in (1.0, 10.0, 100.0)]
    torch.testing.assert_close(lin(x), ref + 111.0)
    added = {0: 1.0, 1: 10.0, 2: 100.0}
    for i in order:
        handles[i].remove()
        del added[i]
        torch.testing.assert_close(lin(x), ref + sum(added.values()))
    assert "forward" not in lin.__dict__ and active_overrides(lin) == 0
    handles[0].remove()  # twice is a no-op


def test_forward_override_keeps_a_users_instance_forward():
    lin = nn.Linear(2, 2)
    own = lambda t: t * 0  # noqa: E731
    lin.forward = own
    hm = HookedModel(lin, adapter="generic")
    with hm.replacing_forward("", lambda m, inner: (lambda t: inner(t) + 1)):
        torch.testing.assert_close(lin(torch.ones(1, 2)), torch.ones(1, 2))
    assert lin.__dict__["forward"] is own


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_all_finite_agrees_with_the_elementwise_test_where_the_sum_overflows(dtype):
    """The one-sum fast path: NaN and inf are always found, and finite values whose sum overflows are still
    finite (the elementwise test decides)."""
    big = torch.finfo(dtype).max
    cases = [torch.full((4, 3), big / 2, dtype=dtype),  # the sum overflows to inf: every value is finite
             torch.tensor([big, -big, 1.0], dtype=dtype), torch.zeros(0, dtype=dtype),
             torch.tensor([1.0, float("nan")], dtype=dtype), torch.tensor([float("inf"), 0.0], dtype=dtype),
             torch.tensor([float("inf"), -float("inf")], dtype=dtype)]
    for t in cases:
        assert all_finite(t) == bool(torch.isfinite(t).all()), t
    assert all_finite(cases[0]) and not all_finite(cases[3]) and not all_finite(cases[5])
