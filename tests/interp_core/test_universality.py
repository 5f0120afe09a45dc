"""Unit matching, stitching and the study against planted truths: a permuted + rescaled copy of a model, and
two models equal up to an invertible linear map at a site."""

import numpy as np
import pytest
import torch
from torch import nn

from interp_core import HookedModel
from interp_core.similarity import cka
from interp_core.universality import (
    Comparison,
    depth_pairs,
    match_features,
    match_units,
    stitch,
    unit_correlations,
    universality_study,
)


def make_mlp(seed, width=24):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 3)).eval()


def permuted_copy(model, perm0, perm1, scale0, scale1):
    """B: A's hidden units permuted and positively rescaled (ReLU commutes with both) -> the same function."""
    b = nn.Sequential(*[type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear) else m
                        for m in model]).eval()
    W0, b0, W1, b1, W2, b2 = (t.detach().clone() for t in (model[0].weight, model[0].bias, model[2].weight,
                                                            model[2].bias, model[4].weight, model[4].bias))
    with torch.no_grad():
        b[0].weight.copy_(W0[perm0] * scale0[:, None])
        b[0].bias.copy_(b0[perm0] * scale0)
        W1p = W1[perm1][:, perm0] / scale0[None, :]
        b[2].weight.copy_(W1p * scale1[:, None])
        b[2].bias.copy_(b1[perm1] * scale1)
        b[4].weight.copy_(W2[:, perm1] / scale1[None, :])
        b[4].bias.copy_(b2)
    return b


def test_unit_correlations_match_numpy_corrcoef():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(100, 5)), rng.normal(size=(100, 4))
    C = unit_correlations(X, Y)
    np.testing.assert_allclose(C, np.corrcoef(X.T, Y.T)[:5, 5:], atol=1e-12)
    Y[:, 2] = 0.0  # a dead unit: correlation 0, not NaN
    C = unit_correlations(X, Y)
    assert np.all(C[:, 2] == 0)


def test_hungarian_recovers_planted_permutation_and_max_is_many_to_one():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 30))
    perm = rng.permutation(30)
    Y = X[:, perm] * rng.uniform(0.2, 5, size=30) + 3.0
    m = match_units(X, Y)
    assert np.array_equal(m.units_b[np.argsort(m.units_a)], np.argsort(perm))
    np.testing.assert_allclose(m.correlations, 1.0, atol=1e-12)
    # 'max' lets several units of A pick the same unit of B; Hungarian never does
    Y2 = np.hstack([X[:, :1] + 0.1 * rng.normal(size=(500, 1)), rng.normal(size=(500, 3))])
    X2 = np.hstack([X[:, :1], X[:, :1] + 0.01 * rng.normal(size=(500, 1))])
    assert list(match_units(X2, Y2, "max").units_b) == [0, 0]
    h = match_units(X2, Y2, "hungarian")
    assert len(set(h.units_b)) == 2
    assert match_units(-X, X, absolute=True).mean == pytest.approx(1.0)


def test_match_features_on_permuted_copy_vs_random_init_baseline():
    a = make_mlp(0)
    rng = np.random.default_rng(2)
    p0, p1 = torch.as_tensor(rng.permutation(24)), torch.as_tensor(rng.permutation(24))
    s0, s1 = torch.rand(24) * 3 + 0.2, torch.rand(24) * 3 + 0.2
    b = permuted_copy(a, p0, p1, s0, s1)
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b(x), a(x), atol=1e-5, rtol=1e-5)  # the planted copy computes the same function
    ha, hb, hr = HookedModel(a), HookedModel(b), HookedModel(make_mlp(7))
    data = list(x.split(100))
    res = match_features(ha, hb, data, [("1", "1"), ("3", "3")], baseline=hr)
    for k, perm in enumerate((p0, p1)):
        live = res.correlations[k] != 0  # units that never fire carry no correlation
        assert live.mean() > 0.5
        np.testing.assert_allclose(res.correlations[k][live], 1.0, atol=1e-5)
        assert res.baseline[k].mean() < 0.9
    rows = res.summary()
    assert rows[0]["baseline_mean"] < rows[0]["mean"]
    assert len(res.plot().axes) == 1
    # the Hungarian assignment itself is the planted permutation on the live units
    _, ca = ha.run_with_cache(x, sites=["1"])
    _, cb = hb.run_with_cache(x, sites=["1"])
    m = match_units(ca["1"], cb["1"])
    live = ca["1"].std(0).numpy() > 0
    inv = torch.argsort(p0).numpy()
    assert np.array_equal(m.units_b[live[m.units_a]], inv[m.units_a[live[m.units_a]]])


def test_depth_pairs():
    assert depth_pairs(["a0", "a1", "a2"], ["b0", "b1", "b2", "b3", "b4"]) == [("a0", "b0"), ("a1", "b2"),
                                                                                ("a2", "b4")]


class Twisted(nn.Module):
    """A's first layers, an invertible linear map M at the site, then A's head composed with M^-1."""

    def __init__(self, a: nn.Sequential, M: torch.Tensor):
        super().__init__()
        d = M.shape[0]
        self.body = nn.Sequential(a[0], a[1], a[2], a[3])
        self.mix = nn.Linear(d, d, bias=True)
        self.head = nn.Linear(d, a[4].out_features)
        shift = torch.randn(d)
        with torch.no_grad():
            self.mix.weight.copy_(M)
            self.mix.bias.copy_(shift)
            Minv = torch.linalg.inv(M)
            self.head.weight.copy_(a[4].weight @ Minv)
            self.head.bias.copy_(a[4].bias - a[4].weight @ Minv @ shift)

    def forward(self, x):
        return self.head(self.mix(self.body(x)))


def test_stitching_recovers_an_invertible_linear_map_exactly():
    torch.manual_seed(0)
    a = make_mlp(3, width=16)
    M = torch.randn(16, 16) + 4 * torch.eye(16)
    b = Twisted(a, M).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1200, 8, generator=g)
    y = a(x).argmax(-1).detach()
    y[:100] = (y[:100] + 1) % 3  # some label noise: accuracies below 1 but equal
    torch.testing.assert_close(b(x), a(x), atol=1e-4, rtol=1e-4)
    ha, hb = HookedModel(a), HookedModel(b)
    train, test = list(zip(x[:800].split(100), y[:800].split(100))), list(zip(x[800:].split(100),
                                                                              y[800:].split(100)))
    weights_before = [p.detach().clone() for p in b.parameters()]
    res = stitch(ha, "3", hb, "mix", train, test, epochs=0)
    assert res.accuracy_a == res.accuracy_b
    assert res.accuracy_stitched_init == res.accuracy_stitched == res.accuracy_b  # least squares finds M exactly
    test_noisy = [(xb, (yb + 1) % 3) if i == 0 else (xb, yb) for i, (xb, yb) in enumerate(test)]
    res = stitch(ha, "3", hb, "mix", train, test_noisy, epochs=1, lr=1e-5)
    assert res.accuracy_a == res.accuracy_b < 1.0
    assert res.accuracy_stitched == pytest.approx(res.accuracy_b, abs=0.01)  # training keeps it there
    for p, q in zip(b.parameters(), weights_before):
        assert torch.equal(p, q) and p.grad is None  # B untouched
    assert len(res.plot().axes) == 1 and res.to_dict()["site_b"] == "mix"


def test_stitching_from_a_random_model_loses_accuracy():
    a, b = make_mlp(3, width=16), make_mlp(4, width=16)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1200, 8, generator=g)
    with torch.no_grad():
        b[4].bias -= b(x).mean(0)  # roughly balanced classes
    y = b(x).argmax(-1).detach()
    assert (torch.bincount(y, minlength=3).float() / len(y)).max() < 0.6
    train = list(zip(x[:800].split(100), y[:800].split(100)))
    test = list(zip(x[800:].split(100), y[800:].split(100)))
    # stitching from A's *input* layer of a nearly-dead random map loses B's function at an early site
    dead = make_mlp(5, width=16)
    with torch.no_grad():
        dead[0].weight.mul_(0.0)  # constant first layer: no information survives
    res = stitch(HookedModel(dead), "1", HookedModel(b), "1", train, test, epochs=0)
    assert res.accuracy_b == 1.0
    # a constant representation gives one prediction for every input: the accuracy is one class's frequency
    y_test = y[800:]
    assert res.accuracy_stitched in [pytest.approx(float((y_test == c).float().mean())) for c in range(3)]
    ok = stitch(HookedModel(a), "1", HookedModel(b), "1", train, test, epochs=3, lr=3e-3)
    assert ok.accuracy_stitched > res.accuracy_stitched
    assert np.mean(ok.train_losses[-4:]) < np.mean(ok.train_losses[:4])  # task-loss training makes progress


def test_universality_study_table_and_figure():
    a = make_mlp(0)
    rng = np.random.default_rng(3)
    b = permuted_copy(a, torch.as_tensor(rng.permutation(24)), torch.as_tensor(rng.permutation(24)),
                      torch.ones(24), torch.ones(24))
    data = list(torch.randn(600, 8, generator=torch.Generator().manual_seed(4)).split(200))
    comp = Comparison("planted", HookedModel(a), HookedModel(b), data, ["1", "3"], ["1", "3"],
                      baseline=HookedModel(make_mlp(9)))
    res = universality_study([comp])
    row = res.table[0]
    assert row["cka_depth"] == pytest.approx(1.0, abs=1e-8)  # permutation = orthogonal map: CKA exactly 1
    assert row["cka_depth_baseline"] < 0.99
    assert row["matched_corr"] > row["matched_corr_baseline"]
    x = torch.cat(data)
    _, ca = HookedModel(a).run_with_cache(x, sites=["1"])
    _, cr = HookedModel(make_mlp(9)).run_with_cache(x, sites=["3"])
    assert res.cka_baseline["planted"][0, 1] == pytest.approx(cka(ca["1"], cr["3"]), abs=1e-6)
    fig = res.plot()
    assert len(fig.axes) >= 3
    assert res.to_dict()["table"][0]["comparison"] == "planted"


def test_stitching_conv_sites_is_a_per_position_affine_map():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    M = torch.randn(6, 6) + 3 * torch.eye(6)
    shift = torch.randn(6)
    Minv = torch.linalg.inv(M)
    mix = nn.Conv2d(6, 6, 1)
    conv2 = nn.Conv2d(6, 6, 3)  # no padding: a zero-padded border would not commute with the shift
    with torch.no_grad():
        mix.weight.copy_(M[:, :, None, None])
        mix.bias.copy_(shift)
        conv2.weight.copy_(torch.einsum("ojhw,ji->oihw", a[2].weight, Minv))
        conv2.bias.copy_(a[2].bias - torch.einsum("ojhw,j->o", a[2].weight, Minv @ shift))
    b = nn.Sequential(a[0], a[1], mix, conv2, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), a[6]).eval()
    x = torch.randn(600, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(b(x), a(x), atol=1e-4, rtol=1e-4)
    y = a(x).argmax(-1).detach()
    data = list(zip(x.split(100), y.split(100)))
    res = stitch(HookedModel(a), "1", HookedModel(b), "2", data[:4], data[4:], epochs=0)
    assert res.accuracy_a == res.accuracy_b == res.accuracy_stitched == 1.0
    with pytest.raises(ValueError, match="position"):  # 6x6 positions at A vs 4x4 at B's conv2 output
        stitch(HookedModel(a), "1", HookedModel(b), "3", data[:1], data[1:2], epochs=0)
