"""vision.exemplars: streamed top-k against brute force (all activations, stable sort) and planted truths."""

import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from interp_core import HookedModel
from vision import data as vdata
from vision.exemplars import cell_boxes, receptive_boxes, top_exemplars


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential()
    m.add_module("conv1", nn.Conv2d(3, 6, 3, padding=1))
    m.add_module("relu1", nn.ReLU())
    m.add_module("conv2", nn.Conv2d(6, 5, 3, stride=2, padding=1))
    m.add_module("pool", nn.AdaptiveAvgPool2d(1))
    m.add_module("flat", nn.Flatten())
    m.add_module("fc", nn.Linear(5, 4))
    return m.eval()


@pytest.fixture(scope="module")
def setup():
    x = torch.randn(53, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    net = small_cnn()
    with torch.no_grad():
        act = net.conv2(net.relu1(net.conv1(x)))  # [53, 5, 6, 6]: the brute-force truth
    return HookedModel(net), x, act


def brute(scores: torch.Tensor, k: int):
    """Stable descending sort of ``[U, M]`` candidates → (values, positions) of the top k."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), order


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_by_image_matches_brute_force(setup, reduce):
    hm, x, act = setup
    res = top_exemplars(hm, x, "conv2", k=7, reduce=reduce, batch_size=8)  # 53 = 6 batches of 8 + 5
    flat = act.flatten(2)  # [N, C, P]
    per_image = (flat.amax(2) if reduce == "max" else flat.mean(2)).T  # [C, N]
    vals, idx = brute(per_image, 7)
    assert torch.equal(res.indices, idx)
    torch.testing.assert_close(res.scores, vals)
    assert res.units == [f"channel {c}" for c in range(5)]
    assert torch.equal(res.images, x[idx])
    if reduce == "max":
        arg = flat.argmax(2).T.gather(1, idx)  # flat cell of the max
        assert torch.equal(res.cells, torch.stack([arg // 6, arg % 6], -1))
        # stride boxes: a 6x6 map over a 12x12 input → 2x2 pixel tiles
        h, w = res.cells[..., 0], res.cells[..., 1]
        assert torch.equal(res.boxes, torch.stack([2 * h, 2 * w, 2 * h + 2, 2 * w + 2], -1))
    else:
        assert res.cells is None and res.boxes is None


def test_by_cell_matches_brute_force_and_batching_does_not_matter(setup):
    hm, x, act = setup
    res = top_exemplars(hm, x, "conv2", k=10, by="cell", batch_size=5, channels=[4, 1])
    cand = act[:, [4, 1]].permute(1, 0, 2, 3).reshape(2, -1)  # [U, N*P] in (image, cell) order
    vals, pos = brute(cand, 10)
    assert torch.equal(res.indices, pos // 36)
    assert torch.equal(res.cells, torch.stack([(pos % 36) // 6, pos % 6], -1))
    torch.testing.assert_close(res.scores, vals)
    assert res.units == ["channel 4", "channel 1"]
    again = top_exemplars(hm, x, "conv2", k=10, by="cell", batch_size=53, channels=[4, 1])
    assert torch.equal(again.indices, res.indices) and torch.equal(again.cells, res.cells)


def test_neuron_direction_and_features_match_brute_force(setup):
    hm, x, act = setup
    # a neuron: channel 2 at cell (3, 1)
    res = top_exemplars(hm, x, "conv2", channels=2, neuron_pos=(3, 1), k=5, batch_size=16)
    vals, idx = brute(act[:, 2, 3, 1][None], 5)
    assert torch.equal(res.indices, idx) and (res.cells == torch.tensor([3, 1])).all()
    # directions [U, d]: projection on each unit-normalised direction
    g = torch.Generator().manual_seed(1)
    dirs = torch.randn(3, 5, generator=g)
    res = top_exemplars(hm, x, "conv2", direction=dirs, k=6, by="cell", batch_size=9)
    proj = torch.einsum("ncp,uc->unp", act.flatten(2), dirs / dirs.norm(dim=1, keepdim=True)).reshape(3, -1)
    vals, pos = brute(proj, 6)
    assert torch.equal(res.indices, pos // 36)
    torch.testing.assert_close(res.scores, vals)
    # any features function on [N, d] rows (an SAE encoder stand-in), restricted to two of its outputs
    enc = nn.Linear(5, 8)
    torch.manual_seed(0)
    res = top_exemplars(hm, x, "conv2", features=lambda r: torch.relu(enc(r)), channels=[0, 7], k=4,
                        batch_size=11)
    with torch.no_grad():
        f = torch.relu(enc(act.permute(0, 2, 3, 1))).amax((1, 2))[:, [0, 7]].T  # [2, N]
    vals, idx = brute(f, 4)
    assert torch.equal(res.indices, idx)
    torch.testing.assert_close(res.scores, vals)
    assert res.units == ["feature 0", "feature 7"]


def test_dataset_of_tuples_and_loader_inputs(setup):
    ds = vdata.shapes(30, seed=2, image_size=24)
    hm = setup[0]
    a = top_exemplars(hm, DataLoader(ds, batch_size=7), "conv1", k=3)
    b = top_exemplars(hm, ds, "conv1", k=3)
    assert torch.equal(a.indices, b.indices)
    with pytest.raises(ValueError, match="shuffle"):
        top_exemplars(hm, DataLoader(ds, batch_size=7, shuffle=True), "conv1")
    with pytest.raises(KeyError, match="closest"):
        top_exemplars(hm, ds, "conv9")


def test_planted_white_detector_finds_the_shortcut_mark_cells():
    # A unit that fires only on white pixels (R+G+B > 2.5: no shape colour qualifies) must pick, cell by
    # cell, exactly the pixels of the planted corner mark, in images that carry the mark.
    ds = vdata.shapes(60, seed=0, shortcut=0.5)
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(3, 1, 1))
    net.add_module("relu", nn.ReLU())
    with torch.no_grad():
        net.conv.weight.fill_(1.0)
        net.conv.bias.fill_(-2.5)
    res = top_exemplars(net, ds, "relu", k=20, by="cell", box="stride")
    marks = ds.factors()["mark"]
    assert (marks[res.indices[0]] == 1).all()
    mask = ds.mark_mask()
    assert all(bool(mask[h, w]) for h, w in res.cells[0].tolist())
    assert (res.scores[0] > 0.4).all()
    top, _, hh, _ = ds.mark_box
    assert ((res.boxes[0, :, 0] >= top) & (res.boxes[0, :, 2] <= top + hh)).all()


def test_stride_boxes_for_vit_tokens_give_patches_and_cls_the_whole_image():
    boxes = cell_boxes((17,), (8, 8), n_prefix=1)  # CLS + a 4x4 grid of 2x2 patches
    assert boxes[0].tolist() == [0, 0, 8, 8]
    for h in range(4):
        for w in range(4):
            assert boxes[1 + 4 * h + w].tolist() == [2 * h, 2 * w, 2 * h + 2, 2 * w + 2]
    uneven = cell_boxes((3, 3), (8, 8))  # covers the image, tiles overlap where 8/3 is not whole
    assert uneven[0].tolist() == [0, 0, 3, 3] and uneven[-1].tolist() == [5, 5, 8, 8]


def test_vit_token_exemplars_use_patch_boxes():
    from vision.zoo.models import tiny_vit

    torch.manual_seed(0)
    vit = tiny_vit().eval()
    x = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    res = top_exemplars(vit, x, "blocks.0", k=4, by="cell", channels=[0, 5])
    with torch.no_grad():
        tokens = vit.blocks[0](vit.norm_pre(vit._pos_embed(vit.patch_embed(x))))  # [20, 17, 64]
    cand = tokens[..., [0, 5]].permute(2, 0, 1).reshape(2, -1)
    vals, pos = brute(cand, 4)
    assert torch.equal(res.indices, pos // 17) and torch.equal(res.cells[..., 0], pos % 17)
    torch.testing.assert_close(res.scores, vals)
    table = cell_boxes((17,), (8, 8), n_prefix=1)
    assert torch.equal(res.boxes, table[pos % 17])


def test_receptive_boxes_match_the_conv_geometry():
    # one 6x6 valid conv: cell (h, w) sees rows h..h+5, cols w..w+5
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(1, 2, 6))
    hm = HookedModel(net)
    boxes = receptive_boxes(hm, "conv", torch.zeros(1, 12, 12), range(49))
    for p, b in boxes.items():
        h, w = divmod(p, 7)
        assert b == (h, w, h + 6, w + 6)
    # two 3x3 'same' convs: a 5x5 field clipped at the border
    torch.manual_seed(0)
    net2 = nn.Sequential()
    net2.add_module("a", nn.Conv2d(1, 3, 3, padding=1))
    net2.add_module("b", nn.Conv2d(3, 2, 3, padding=1))
    boxes = receptive_boxes(HookedModel(net2), "b", torch.zeros(1, 9, 9), range(81))
    for p, b in boxes.items():
        h, w = divmod(p, 9)
        assert b == (max(0, h - 2), max(0, w - 2), min(9, h + 3), min(9, w + 3))
    # through top_exemplars
    res = top_exemplars(net2, torch.randn(10, 1, 9, 9), "b", k=3, box="receptive")
    for (h, w), b in zip(res.cells.reshape(-1, 2).tolist(), res.boxes.reshape(-1, 4).tolist()):
        assert b == [max(0, h - 2), max(0, w - 2), min(9, h + 3), min(9, w + 3)]


def test_fewer_items_than_k_and_outputs(setup, tmp_path):
    hm, x, _ = setup
    res = top_exemplars(hm, x[:3], "conv2", k=5, channels=[0, 1])
    assert (res.indices[:, 3:] == -1).all() and torch.isinf(res.scores[:, 3:]).all()
    assert (res.indices[:, :3] >= 0).all()
    fig = res.plot()
    assert len(fig.axes) == 2 * 5
    d = json.loads(res.save(tmp_path / "ex.json").read_text())
    assert d["indices"][0][:3] == res.indices[0, :3].tolist() and d["scores"][0][4] is None
    assert math.isclose(d["scores"][0][0], float(res.scores[0, 0]), rel_tol=1e-6)


def test_exemplars_of_the_shortcut_models_mark_unit_all_carry_the_planted_mark():
    # Pick, on counterfactual twins (same images with / without the mark), the channel the mark drives most;
    # on fresh data where the mark is uninformative (present in half the images), that channel's top cells
    # must come from images with the mark, and their receptive fields must cover the mark.
    import vision.zoo as zoo

    hm = zoo.load("shapes-cnn-shortcut")
    on, _ = vdata.shapes(100, seed=5, force_mark=True).tensors()
    off, _ = vdata.shapes(100, seed=5, force_mark=False).tensors()
    ds = vdata.shapes(300, seed=9, shortcut=0.5)
    top, left, h, w = ds.mark_box
    for site in ("layer1", "layer2"):
        _, c_on = hm.run_with_cache(on, sites=[site])
        _, c_off = hm.run_with_cache(off, sites=[site])
        effect = (c_on[site] - c_off[site]).mean(0).flatten(1).amax(1)  # [C]
        unit = int(effect.argmax())
        res = top_exemplars(hm, ds, site, channels=[unit], k=10, by="cell", box="receptive")
        assert (ds.factors()["mark"][res.indices[0]] == 1).all()  # chance: 0.5 ** 10
        b = res.boxes[0]
        overlaps = (b[:, 0] < top + h) & (b[:, 2] > top) & (b[:, 1] < left + w) & (b[:, 3] > left)
        assert overlaps.all()


def test_data_forms_through_the_boundary_and_eval_mode(setup):
    """numpy arrays, (x, y) pairs and DataLoaders of (x, y) give the same exemplars as the tensor; a model in
    train mode (dropout) is analysed in eval mode and left in train mode."""
    import numpy as np
    from torch.utils.data import TensorDataset

    from interp_core.results import Result

    hm, x, act = setup
    y = torch.arange(len(x)) % 4
    ref = top_exemplars(hm, x, "conv2", k=4, progress=False)
    assert isinstance(ref, Result)
    for data in (x.numpy(), (x, y), DataLoader(TensorDataset(x, y), batch_size=10), TensorDataset(x, y)):
        got = top_exemplars(hm, data, "conv2", k=4, progress=False)
        assert torch.equal(got.indices, ref.indices) and torch.equal(got.cells, ref.cells)
    net = nn.Sequential()
    net.add_module("drop", nn.Dropout(0.9))
    net.add_module("conv", nn.Conv2d(3, 2, 3))
    net.train()
    res = top_exemplars(net, x, "conv", k=3, progress=False)
    assert net.training and net.drop.training
    net.eval()
    with torch.no_grad():
        truth = net(x).flatten(2).amax(2).T
    vals, idx = brute(truth, 3)
    assert torch.equal(res.indices, idx)
    torch.testing.assert_close(res.scores, vals)
    with pytest.raises(ValueError, match="NaN"):
        top_exemplars(net, torch.full((2, 3, 8, 8), float("nan")), "conv")
    assert not np.isnan(res.scores.numpy()).any()


def test_recurrent_agents_need_their_recorded_states():
    """Before: every observation ran with a zero memory, giving activations the agent never had, silently."""
    import rl.agents

    class GRUPolicy(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
            self.memory = nn.GRUCell(8, 6)
            self.actor = nn.Linear(6, 2)

    torch.manual_seed(0)
    policy = GRUPolicy().eval()
    agent = rl.agents.wrap(policy, obs_shape=(4,))
    g = torch.Generator().manual_seed(0)
    obs, h = torch.randn(12, 4, generator=g), torch.randn(12, 6, generator=g)
    with pytest.raises(ValueError, match=r"recurrent.*zero memory.*rl\.collect"):
        top_exemplars(agent, obs, "memory.h", k=3)
    res = top_exemplars(agent, obs, "memory.h", k=3, states=(h,), batch_size=5, progress=False)
    with torch.no_grad():
        truth = policy.memory(policy.encoder(obs), h)  # [12, 6], each step with its own memory
    vals, idx = brute(truth.T, 3)
    assert torch.equal(res.indices, idx)
    torch.testing.assert_close(res.scores, vals)
    with pytest.raises(ValueError, match="states"):
        top_exemplars(agent, obs, "memory.h", states=(h[:5],), batch_size=5)
    with pytest.raises(ValueError, match="states"):
        top_exemplars(small_cnn(), torch.randn(2, 3, 8, 8), "conv1", states=(h,))
