"""Patching cones narrowed to the rows the readout reads (:mod:`interp_core.narrow`): a ViT's class-token readout
runs the last block's MLP on one token per patched row, with the values of a one-forward-per-patch loop written
with plain hooks; selections stop at anything that mixes rows, and a wrong rule is caught by the check."""

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from interp_core import HookedModel, narrow
from interp_core.metrics import logit_diff
from interp_core.patching import patch_sweep

from ..conftest import make_vit
from .test_patching_reuse import plain_hook_loop


def narrowed(hm: HookedModel) -> list[str]:
    """The sites whose cone the last sweep ran narrowed."""
    return [key[0] for cones in hm._cones.values() if cones for key, fn in cones._narrowed.items()
            if fn is not cones.rest[key[0]]]


@pytest.mark.parametrize("rows", [1, 3])
def test_class_token_readout_runs_the_last_mlp_on_one_token_with_the_hook_loops_values(rows, monkeypatch):
    vit = make_vit(in_chans=1, num_classes=10, depth=3, mlp_ratio=2.0)
    hm = HookedModel(vit)
    g = torch.Generator().manual_seed(5)
    clean, corrupted = torch.randn(rows, 1, 16, 16, generator=g), torch.randn(rows, 1, 16, 16, generator=g)
    fc1 = vit.blocks[2].mlp.fc1
    own = nn.Linear.forward
    seen = []

    def counting(self, x):  # what the last block's MLP computes (a class attribute: no hook, cones stay usable)
        if self is fc1:
            seen.append(tuple(x.shape[:-1]))
        return own(self, x)

    class Queries(TorchFunctionMode):  # the queries of every attention (the graph calls the builtin directly)
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is F.scaled_dot_product_attention:
                queries.append(args[0].shape[2])
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(nn.Linear, "forward", counting)
    sites = ["blocks.0", "blocks.1", "blocks.2"]  # each block a leaf of the graph: the selection inlines block 2
    patch_sweep(hm, clean, corrupted, sites, logit_diff(0, 1), batch_size=16, progress=False)
    assert sorted(narrowed(hm)) == ["blocks.0", "blocks.1", "blocks.2"]
    seen.clear()  # the cones were narrowed in the first sweep; count a second one
    queries = []
    with Queries():
        res = patch_sweep(hm, clean, corrupted, sites, logit_diff(0, 1), batch_size=16, progress=False)
    monkeypatch.undo()
    tokens = 17
    assert [s for s in seen if len(s) == 2] == [(rows, tokens)] * 2  # the base and source runs: every token
    patched = [s for s in seen if len(s) == 1]  # the patched rows of blocks.0 and blocks.1: the class token only
    assert sum(n for n, in patched) == 2 * tokens * rows
    # attention: 3 blocks x 2 unpatched runs, then per chunk block 1 (all queries) in the cone of blocks.0, and
    # block 2 from the class token's query only in the cones of blocks.0 and blocks.1
    chunks = -(-tokens // (16 // rows))
    assert sorted(queries) == [1] * 2 * chunks + [tokens] * (6 + chunks)
    for site in sites:
        want = plain_hook_loop(vit, corrupted, clean, site, "token", tuple(res.metric_values[site].shape),
                               logit_diff(0, 1))
        assert torch.allclose(res.metric_values[site].double(), want, atol=1e-5), site


def test_torchvision_vit_class_token_readout_is_narrowed_with_the_hook_loops_values():
    """torchvision's ViT selects ``x[:, 0]`` in its forward; its last encoder block's MLP runs on that token."""
    import torchvision

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32,
                                               mlp_dim=64, num_classes=5).eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero
    hm = HookedModel(vit)
    g = torch.Generator().manual_seed(3)
    clean, corrupted = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    sites = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    res = patch_sweep(hm, clean, corrupted, sites, logit_diff(0, 1), progress=False)
    assert sorted(narrowed(hm)) == sites
    for site in sites:
        want = plain_hook_loop(vit, corrupted, clean, site, "token", tuple(res.metric_values[site].shape),
                               logit_diff(0, 1))
        assert torch.allclose(res.metric_values[site].double(), want, atol=1e-5), site


class Readout(nn.Module):
    """Two position-wise layers over ``[batch, token, feature]``, then ``mix`` (which may or may not mix tokens)
    and a selection as the readout."""

    def __init__(self, mix: str):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.tokens = nn.Linear(5, 5)
        self.pos = nn.Parameter(torch.randn(1, 5, 8))
        self.gamma = nn.Parameter(torch.randn(8))
        self.mix = mix

    def forward(self, x):
        h = self.a(self.inp(x))
        h = torch.relu(self.b(h))
        if self.mix == "mean":  # every token reads the mean over tokens
            h = h + h.mean(dim=1, keepdim=True)
        elif self.mix == "tokens":  # a linear map over the token axis
            h = self.tokens(h.transpose(1, 2)).transpose(1, 2)
        elif self.mix == "pos":  # operands that vary along the selected axis (selected too) or only features
            h = h * self.gamma + self.pos
        if self.mix == "features":  # the readout selects features, not tokens: nothing may move
            return h[:, 0, :3]
        return h[:, 1]


@pytest.mark.parametrize("mix", ["mean", "tokens", "pos", "features", "none"])
def test_selections_stop_where_rows_mix_and_values_match_the_hook_loop(mix, monkeypatch):
    """Where nothing mixes tokens after ``b``, the patched runs compute ``b`` for the selected token only; where
    something does (or the readout selects features), ``b`` computes every token."""
    model = Readout(mix).eval()
    hm = HookedModel(model)
    g = torch.Generator().manual_seed(1)
    clean, corrupted = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    patch_sweep(hm, clean, corrupted, ["inp", "a"], logit_diff(0, 1), progress=False)  # narrows the cones
    own, seen = nn.Linear.forward, []

    def counting(self, x):
        if self is model.b:
            seen.append(tuple(x.shape))
        return own(self, x)

    monkeypatch.setattr(nn.Linear, "forward", counting)
    res = patch_sweep(hm, clean, corrupted, ["inp", "a"], logit_diff(0, 1), progress=False)
    monkeypatch.undo()
    patched = [s for s in seen if s[0] != 2]  # the base and source runs have 2 rows
    narrow_b = {"mean": False, "tokens": False, "pos": True, "features": False, "none": True}[mix]
    assert patched and all(s == ((10, 8) if narrow_b else (10, 5, 8)) for s in patched), seen  # 5 tokens x 2 rows
    for site in ("inp", "a"):
        want = plain_hook_loop(model, corrupted, clean, site, "token", tuple(res.metric_values[site].shape),
                               logit_diff(0, 1))
        assert torch.allclose(res.metric_values[site].double(), want, atol=1e-5), site


def test_a_wrong_rule_is_caught_by_the_check_and_the_full_cone_runs(monkeypatch, caplog):
    """Declaring a token-mixing module position-wise (a bug in the rules) changes the cone's output on the base
    run: the check logs it and the full cone runs, so the values stay right."""

    class MixTokens(nn.Module):
        def forward(self, x):
            return x + x.mean(dim=1, keepdim=True)

    MixTokens.__module__ = "torch.nn.modules.mixtokens"  # a layer torch.fx keeps as a call, as it keeps nn.Linear

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inp, self.out = nn.Linear(3, 8), nn.Linear(8, 4)
            self.mix = MixTokens()

        def forward(self, x):
            return self.out(self.mix(self.inp(x)))[:, 0]

    monkeypatch.setattr(narrow, "ROW_MODULES", (*narrow.ROW_MODULES, MixTokens))
    model = Model().eval()
    hm = HookedModel(model)
    g = torch.Generator().manual_seed(1)
    clean, corrupted = torch.randn(1, 5, 3, generator=g), torch.randn(1, 5, 3, generator=g)
    with caplog.at_level(logging.WARNING, logger="interp_core.patching"):
        res = patch_sweep(hm, clean, corrupted, ["inp"], logit_diff(0, 1), progress=False)
    assert "narrowing a patching cone changed its output" in caplog.text
    assert narrowed(hm) == []
    want = plain_hook_loop(model, corrupted, clean, "inp", "token", tuple(res.metric_values["inp"].shape),
                           logit_diff(0, 1))
    assert torch.allclose(res.metric_values["inp"].double(), want, atol=1e-5)


def test_a_module_replaced_inside_an_inlined_block_rebuilds_the_cones():
    """Narrowing inlines the last block's code; replacing a layer inside it afterwards makes the cones stale,
    and the next sweep computes with the new layer."""
    vit = make_vit(depth=2)
    hm = HookedModel(vit)
    g = torch.Generator().manual_seed(2)
    clean, corrupted = torch.randn(1, 3, 16, 16, generator=g), torch.randn(1, 3, 16, 16, generator=g)
    sites = ["blocks.0", "blocks.1"]
    patch_sweep(hm, clean, corrupted, sites, logit_diff(0, 1), progress=False)
    assert "blocks.0" in narrowed(hm)
    torch.manual_seed(9)
    vit.blocks[1].mlp.fc2 = nn.Linear(vit.blocks[1].mlp.fc2.in_features, 32)
    res = patch_sweep(hm, clean, corrupted, sites, logit_diff(0, 1), progress=False)
    want = plain_hook_loop(vit, corrupted, clean, "blocks.0", "token", tuple(res.metric_values["blocks.0"].shape),
                           logit_diff(0, 1))
    assert torch.allclose(res.metric_values["blocks.0"].double(), want, atol=1e-5)
