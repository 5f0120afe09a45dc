"""Unit matching, stitching and the study on the three model kinds (a CNN with BatchNorm and a residual, a timm
ViT, a trained PPO policy), with data in the boundary's forms; planted truths and direct recomputation."""

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from interp_core import HookedModel
from interp_core.errors import InputError
from interp_core.similarity import cka, similarity_matrix
from interp_core.universality import Comparison, match_features, match_units, stitch, universality_study
from tests.conftest import make_cnn, make_policy, make_vit


def permuted_cnn(model, perm):
    """The conftest CNN with the 8 channels of its residual stream permuted: the same function."""
    b = copy.deepcopy(model)
    with torch.no_grad():
        b.stem.weight.copy_(model.stem.weight[perm])
        b.stem.bias.copy_(model.stem.bias[perm])
        b.block.conv1.weight.copy_(model.block.conv1.weight[:, perm])
        b.block.conv2.weight.copy_(model.block.conv2.weight[perm])
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(b.block.bn2, name).copy_(getattr(model.block.bn2, name)[perm])
        b.head.weight.copy_(model.head.weight[:, perm])
    return b


def test_cnn_planted_channel_permutation_is_recovered_from_tensor_data():
    a = make_cnn(0)
    perm = torch.as_tensor(np.random.default_rng(0).permutation(8))
    b = permuted_cnn(a, perm)
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b(x), a(x), atol=1e-5, rtol=1e-5)
    res = match_features(a, b, x, [("stem", "stem"), ("block", "block")], baseline=make_cnn(5), batch_size=16)
    inv = torch.argsort(perm).numpy()
    for k in range(2):
        np.testing.assert_allclose(res.correlations[k], 1.0, atol=1e-6)
        assert res.baseline[k].mean() < 0.95
        row = res.table[k]
        assert row["mean_corr"] == pytest.approx(1.0, abs=1e-6) and row["units"] == 8
        assert row["baseline_mean_corr"] == pytest.approx(res.baseline[k].mean())
    # the assignment itself is the planted permutation
    hm_a, hm_b = HookedModel(a), HookedModel(b)
    _, ca = hm_a.run_with_cache(x, sites=["block"], pool="mean")
    _, cb = hm_b.run_with_cache(x, sites=["block"], pool="mean")
    m = match_units(ca["block"], cb["block"])
    assert np.array_equal(m.units_b, inv[m.units_a])
    # the study on the same pair, data as a DataLoader: a permutation is orthogonal, so CKA is exactly 1
    loader = DataLoader(TensorDataset(x, torch.zeros(64, dtype=torch.long)), batch_size=20)
    study = universality_study([Comparison("cnn", a, b, loader, ["stem", "block"], ["stem", "block"],
                                           baseline=make_cnn(5))], progress=False)
    assert study.table[0]["cka_depth"] == pytest.approx(1.0, abs=1e-8)
    assert study.table[0]["cka_depth_baseline"] < 0.99


def test_cnn_in_train_mode_is_matched_and_stitched_in_eval_mode():
    a, b = make_cnn(0).train(), make_cnn(0)
    x = torch.randn(48, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    res = match_features(a, b, x, [("block", "block")])
    np.testing.assert_allclose(res.correlations[0], 1.0, atol=1e-6)  # dropout off, running statistics used
    y = b(x).argmax(-1)
    st = stitch(a, "block", b, "block", (x[:32], y[:32]), (x[32:], y[32:]), epochs=0)
    assert st.accuracy_a == st.accuracy_b == st.accuracy_stitched == 1.0  # self-stitch: identity is exact
    assert all(m.training for m in a.modules())


def test_vit_self_stitch_is_exact_and_matches_are_direct_recomputations():
    v0, v1 = make_vit(0), make_vit(1)
    x = torch.randn(48, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = v0(x).argmax(-1)
    site = "blocks.0.resid_post"  # [batch, pos, feature]: a per-token affine map
    train = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16)
    res = stitch(v0, site, copy.deepcopy(v0), site, train, (x[32:], y[32:]), epochs=0)
    assert res.accuracy_b == res.accuracy_stitched_init == res.accuracy_stitched == 1.0
    # unit matching of two different ViTs equals match_units on features cached directly
    sites = [("blocks.0.resid_post", "blocks.1.resid_post")]
    got = match_features(v0, v1, x.numpy(), sites, pool="cls")
    _, c0 = HookedModel(v0).run_with_cache(x, sites=[sites[0][0]], pool="cls")
    _, c1 = HookedModel(v1).run_with_cache(x, sites=[sites[0][1]], pool="cls")
    np.testing.assert_allclose(got.correlations[0], match_units(c0[sites[0][0]], c1[sites[0][1]]).correlations,
                               atol=1e-6)


def test_stitch_refuses_missing_labels_and_bad_arguments():
    a = make_policy(0)
    x = torch.randn(20, 6)
    with pytest.raises(InputError, match="labels"):
        stitch(a, "1", make_policy(1), "1", x, x, epochs=0)
    with pytest.raises(InputError, match="target"):
        stitch(a, "1", make_policy(1), "1", x, x, target="logits")
    with pytest.raises(InputError, match="method"):
        match_features(a, make_policy(1), x, [("1", "1")], method="greedy")
    with pytest.raises(InputError, match="NaN"):
        match_features(a, make_policy(1), x * float("nan"), [("1", "1")])


@pytest.fixture(scope="module")
def cartpole():
    import rl.zoo as rl_zoo

    return rl_zoo.load("cartpole-ppo"), rl_zoo.load("cartpole-ppo@seed1"), rl_zoo.load("cartpole-ppo-random")


def test_policy_similarity_matching_stitching_and_study(cartpole):
    a, b, rand = cartpole
    obs = torch.randn(300, 4, generator=torch.Generator().manual_seed(3)) * torch.tensor([1.0, 1.0, 0.1, 1.0])
    sites = ["policy.1", "policy.3"]
    res = similarity_matrix(a, b, obs, sites, sites, batch_size=64)
    _, ca = a.run_with_cache(obs, sites=sites)
    _, cb = b.run_with_cache(obs, sites=sites)
    np.testing.assert_allclose(res.matrix, [[cka(ca[s], cb[t]) for t in sites] for s in sites], atol=1e-6)
    self_match = match_features(a, a, obs, [("policy.1", "policy.1")])
    live = self_match.correlations[0] != 0
    np.testing.assert_allclose(self_match.correlations[0][live], 1.0, atol=1e-6)
    st = stitch(a, "policy.1", a, "policy.1", obs[:200], obs[200:], target="model_b", epochs=0)
    assert st.accuracy_b == st.accuracy_stitched == 1.0  # agreement with B's own actions
    study = universality_study([Comparison("cartpole", a, b, obs.numpy(), sites, sites, baseline=rand)],
                               progress=False)
    row = study.table[0]
    assert row["cka_depth"] == pytest.approx(np.mean([cka(ca[s], cb[s]) for s in sites]), abs=1e-6)
    assert row["rows"] == 300 and "cka_depth_baseline" in row
    assert len(study.plot().axes) >= 3


def test_torchvision_resnet18_at_32x32_stitch_and_similarity():
    import torchvision

    torch.manual_seed(0)
    r0 = torchvision.models.resnet18(num_classes=10).eval()
    torch.manual_seed(1)
    r1 = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    y = r0(x).argmax(-1)
    # self-stitch at a conv block ([batch, feature, h, w]: a 1x1 conv): least squares finds the identity
    res = stitch(r0, "layer2.0", copy.deepcopy(r0), "layer2.0", (x[:16], y[:16]), (x[16:], y[16:]), epochs=0)
    assert res.accuracy_b == res.accuracy_stitched == 1.0
    sites = ["layer1.0", "layer3.0"]  # the vision adapter's block names
    m = similarity_matrix(r0, r1, x.numpy(), sites, sites, batch_size=12)
    h0, h1 = HookedModel(r0), HookedModel(r1)
    _, c0 = h0.run_with_cache(x, sites=sites, pool="mean")
    _, c1 = h1.run_with_cache(x, sites=sites, pool="mean")
    np.testing.assert_allclose(m.matrix, [[cka(c0[s], c1[t]) for t in sites] for s in sites], atol=1e-5)


def test_results_and_progress_bars(capsys, tmp_path):
    import json

    from interp_core.results import Result

    a, b = make_policy(0), make_policy(1)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(5))
    study = universality_study([Comparison("mlp", a, b, x, ["1", "3"], ["1", "3"], baseline=make_policy(2))],
                               progress=True)
    assert "universality" in capsys.readouterr().err
    universality_study([Comparison("mlp", a, b, x, ["1", "3"], ["1", "3"])], progress=False)
    assert capsys.readouterr().err == ""
    fm = match_features(a, b, x, [("1", "1")])
    um = match_units(x[:, :3], x[:, 3:])
    st = stitch(a, "1", b, "1", x, x, target="model_b", epochs=1, progress=True)
    assert "stitch 1 -> 1" in capsys.readouterr().err
    for r in (study, fm, um, st):
        assert isinstance(r, Result) and r.plot().axes
        path = r.save(tmp_path / f"{type(r).__name__}.json")
        assert json.loads(path.read_text()) == json.loads(json.dumps(r.to_dict()))
