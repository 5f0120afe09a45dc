"""interp_core.causal: interchange interventions, IIA and DAS against closed forms and planted ground truth.

The planted model: inputs ``x = [a, b, noise]`` are rotated by a known orthogonal ``R`` (``h = R x``, the
site ``embed``), so variable ``a`` lives exactly along ``R[:, 0]`` and ``b`` along ``R[:, 1]``; the head
reads ``R^T h``. Interchanging ``span(R[:, 0])`` from a source therefore gives, in closed form, the output
the high-level model ``label = 2 a_source + b_base`` predicts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from scipy.stats import binomtest
from torch import nn

from interp_core import HookedModel
from interp_core.causal import (
    DAS,
    DASComparison,
    IIAResult,
    Interchange,
    binomial_ci,
    iia,
    interchange,
    principal_angles,
    random_subspace,
    subspace_cosine,
)
from interp_core.errors import InputError, InputTypeError, NotFittedError, SiteError

D = 8
R, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(1)))
SIGNS = torch.tensor([[-1, -1], [-1, 1], [1, -1], [1, 1]], dtype=torch.float)


class Planted(nn.Module):
    """``h = R x``; classification: logits ``2 s_c . (a, b) + V noise`` (class ``2 a + b``); regression: the
    output ``2 a + b + w . noise``."""

    def __init__(self, kind: str = "class"):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.embed = nn.Linear(D, D, bias=False)
        self.embed.weight.data = R.clone()
        if kind == "class":
            self.head = nn.Linear(D, 4)
            w = torch.cat([SIGNS * 2, torch.randn(4, D - 2, generator=g)], 1)
        else:
            self.head = nn.Linear(D, 1)
            w = torch.cat([torch.tensor([[2.0, 1.0]]), 0.5 * torch.randn(1, D - 2, generator=g)], 1)
        self.head.weight.data = w @ R.T
        self.head.bias.data.zero_()

    def forward(self, x):
        return self.head(self.embed(x))


def planted_data(n: int, seed: int, continuous: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g) * 0.3
    if continuous:
        a, b = torch.randn(n, generator=g), torch.randn(n, generator=g)
        x[:, 0], x[:, 1] = a, b
    else:
        a, b = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
        x[:, 0], x[:, 1] = a * 2.0 - 1, b * 2.0 - 1
    return x, a, b


@pytest.fixture(scope="module")
def planted():
    return HookedModel(Planted().eval(), adapter="generic")


@pytest.fixture(scope="module")
def fitted(planted):
    xb, ab, bb = planted_data(192, 0)
    xs, as_, _ = planted_data(192, 1)
    return DAS(k=1, epochs=12, lr=0.2, batch_size=32, seed=0).fit(planted, "embed", xb, xs, 2 * as_ + bb)


# ---------------------------------------------------------------------------------------------- interchange
def test_planted_model_computes_the_high_level_label(planted):
    x, a, b = planted_data(256, 5)
    assert torch.equal(planted(x).argmax(-1), 2 * a + b)


def test_interchange_is_the_closed_form_projection(planted):
    xb, _, _ = planted_data(16, 3)
    xs, _, _ = planted_data(16, 4)
    q = torch.randn(D, 2, generator=torch.Generator().manual_seed(0))
    out = interchange(planted, xb, xs, "embed", q)
    qo, _ = torch.linalg.qr(q.double())
    hb, hs = xb @ R.T, xs @ R.T
    expected_h = (hb.double() + (hs - hb).double() @ qo @ qo.T).float()
    torch.testing.assert_close(out, planted.model.head(expected_h), atol=1e-5, rtol=1e-5)
    # any basis of the same span gives the same intervention
    mix = torch.tensor([[2.0, 1.0], [-1.0, 3.0]])
    torch.testing.assert_close(interchange(planted, xb, xs, "embed", q @ mix), out, atol=1e-5, rtol=1e-5)


def test_full_interchange_gives_the_source_output(planted):
    xb, _, _ = planted_data(8, 3)
    xs, _, _ = planted_data(8, 4)
    for sub in (None, "full", torch.eye(D)):
        torch.testing.assert_close(interchange(planted, xb, xs, "embed", sub), planted(xs), atol=1e-5, rtol=1e-5)


def test_interchange_in_batches_equals_one_batch(planted):
    xb, _, _ = planted_data(37, 3)
    xs, _, _ = planted_data(37, 4)
    q = R[:, :1]
    torch.testing.assert_close(interchange(planted, xb, xs, "embed", q, batch_size=5),
                               interchange(planted, xb, xs, "embed", q), atol=1e-6, rtol=1e-6)


def test_planted_subspace_swaps_exactly_its_variable(planted):
    xb, ab, bb = planted_data(128, 6)
    xs, as_, bs = planted_data(128, 7)
    pred = interchange(planted, xb, xs, "embed", R[:, 0]).argmax(-1)
    assert torch.equal(pred, 2 * as_ + bb)
    pred = interchange(planted, xb, xs, "embed", R[:, 1]).argmax(-1)
    assert torch.equal(pred, 2 * ab + bs)


def test_interchange_on_a_vit_cls_token_carries_the_class_evidence():
    import vision  # the vision adapter names the 'cls' position

    from ..conftest import make_vit

    vit = vision.wrap(make_vit())
    xb = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    xs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base, src = vit(xb), vit(xs)
    # after the last block the head reads only the CLS token: its residual decides the logits
    out = interchange(vit, xb, xs, "blocks.1.resid_post", positions="cls")
    torch.testing.assert_close(out, src, atol=1e-5, rtol=1e-5)
    out = interchange(vit, xb, xs, "blocks.1.resid_post", positions=list(range(1, 17)))
    torch.testing.assert_close(out, base, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(src, base)


def test_das_finds_the_class_evidence_at_a_vit_cls_token():
    import vision

    from ..conftest import make_vit

    m = make_vit()
    m.head.weight.data *= 100  # a random tiny ViT's logits are nearly flat: give it confident, balanced classes
    with torch.no_grad():
        m.head.bias.data = -m(torch.randn(512, 3, 16, 16, generator=torch.Generator().manual_seed(9))).mean(0)
    vit = vision.wrap(m)
    g = torch.Generator().manual_seed(0)
    xb, xs, xb2, xs2 = (torch.randn(96, 3, 16, 16, generator=g) for _ in range(4))
    with torch.no_grad():
        ys, ys2 = vit(xs).argmax(-1), vit(xs2).argmax(-1)
    das = DAS(k=2, epochs=12, lr=0.1, batch_size=32, positions="cls").fit(vit, "blocks.1.resid_post", xb, xs, ys)
    cmp = das.compare(vit, xb2, xs2, ys2, seeds=(0, 1, 2))
    assert cmp.full == 1.0  # the whole CLS residual after the last block decides the logits (closed form)
    assert cmp.das > 0.75 and cmp.das > max(cmp.random) + 0.3  # 2 of 32 dimensions carry most of it


def test_interchange_calls_selects_forward_calls(planted):
    xb, _, _ = planted_data(4, 3)
    xs, _, _ = planted_data(4, 4)
    _, cache = planted.run_with_cache(xs, sites=["embed"])
    iv = Interchange(cache["embed"], None, calls=[1])
    with planted.intervene({"embed": iv}), torch.no_grad():
        first, second, third = planted(xb), planted(xb), planted(xb)
    torch.testing.assert_close(first, planted(xb).detach())
    torch.testing.assert_close(second, planted(xs).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(third, first)


# ---------------------------------------------------------------------------------------------- IIA
def test_binomial_ci_matches_scipy():
    for k, n in ((0, 10), (3, 10), (10, 10), (57, 64)):
        ref = binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
        lo, hi = binomial_ci(k, n, 0.9)
        assert lo == pytest.approx(ref.low, abs=1e-9) and hi == pytest.approx(ref.high, abs=1e-9)


def test_iia_planted_variable_is_one_and_wrong_variable_near_chance(planted, tmp_path):
    xb, ab, bb = planted_data(256, 8)
    xs, as_, bs = planted_data(256, 9)
    base_vars, source_vars = {"a": ab, "b": bb}, {"a": as_, "b": bs}

    def swap_a(b, s):
        return 2 * s["a"] + b["b"]

    res = iia(planted, xb, xs, "embed", swap_a, subspace=R[:, 0], base_vars=base_vars, source_vars=source_vars)
    assert isinstance(res, IIAResult)
    assert res.accuracy == 1.0 and res.n == 256 and res.correct == 256
    assert res.ci == pytest.approx(binomial_ci(256, 256))
    assert set(res.per_class) == {0, 1, 2, 3} and all(v["accuracy"] == 1.0 for v in res.per_class.values())
    # the no-op score: pairs whose source already has the base's value of a
    assert res.unchanged == pytest.approx(float((as_ == ab).float().mean()))
    # the wrong variable's subspace: right only where the swap changes nothing (a_s == a_b and b_s == b_b)
    wrong = iia(planted, xb, xs, "embed", swap_a, subspace=R[:, 1], base_vars=base_vars, source_vars=source_vars)
    assert wrong.accuracy == pytest.approx(float(((as_ == ab) & (bs == bb)).float().mean()))
    assert wrong.accuracy < 0.4 and wrong.ci[1] < res.ci[0]
    d = res.to_dict()
    assert d["accuracy"] == 1.0 and "predicted" not in d
    assert res.save(tmp_path / "iia.json").exists()
    assert res.plot() is not None


def test_iia_labels_from_pairs_and_custom_predict(planted):
    xb, ab, bb = planted_data(64, 8)
    xs, as_, _ = planted_data(64, 9)
    res = iia(planted, (xb, 2 * ab + bb), (xs, 2 * as_), "embed", lambda b, s: s + (b % 2), subspace=R[:, 0],
              predict=lambda out: out.argmax(-1) // 2 * 2 + out.argmax(-1) % 2)
    assert res.accuracy == 1.0


def test_iia_continuous_variable_with_tolerance():
    model = HookedModel(Planted("reg").eval(), adapter="generic")
    xb, ab, bb = planted_data(64, 10, continuous=True)
    xs, as_, _ = planted_data(64, 11, continuous=True)
    base_out = model(xb)[:, 0].detach()
    res = iia(model, xb, xs, "embed", lambda b, s: base_out.numpy() + 2 * (s - b), subspace=R[:, 0],
              base_vars=ab.numpy(), source_vars=as_.numpy(), predict=lambda out: out[:, 0], tolerance=1e-4)
    assert res.accuracy == 1.0 and math.isnan(res.chance)
    with pytest.raises(InputError, match="tolerance"):
        iia(model, xb, xs, "embed", lambda b, s: base_out.numpy() + 2 * (s - b), subspace=R[:, 0],
            base_vars=ab.numpy(), source_vars=as_.numpy(), predict=lambda out: out[:, 0])


# ---------------------------------------------------------------------------------------------- DAS
def test_das_recovers_the_planted_direction_categorical(fitted, planted):
    q = fitted.subspace_
    assert q.shape == (D, 1)
    torch.testing.assert_close(q.T @ q, torch.eye(1), atol=1e-5, rtol=0)
    # cross-entropy saturates once every pair is right, so the angle is small, not zero: a random direction
    # in R^8 has |cos| ~ 0.35 with R[:, 0]
    assert subspace_cosine(q, R[:, 0]) > 0.9
    assert subspace_cosine(q, R[:, 1]) < 0.3
    xb, ab, bb = planted_data(128, 20)
    xs, as_, bs = planted_data(128, 21)
    res = fitted.score(planted, xb, xs, 2 * as_ + bb)
    assert res.accuracy >= 0.97
    # evaluated against the wrong variable (b swapped), the a-subspace scores at chance
    wrong = fitted.score(planted, xb, xs, 2 * ab + bs)
    assert wrong.accuracy < 0.4


def test_das_recovers_the_planted_direction_continuous():
    model = HookedModel(Planted("reg").eval(), adapter="generic")
    xb, ab, _ = planted_data(192, 0, continuous=True)
    xs, as_, _ = planted_data(192, 1, continuous=True)
    y = model(xb)[:, 0].detach() + 2 * (as_ - ab)
    das = DAS(k=1, epochs=15, lr=0.1, batch_size=32).fit(model, "embed", xb, xs, y)
    assert das.loss_kind_ == "mse" and das.loss_ < 1e-3
    assert np.degrees(principal_angles(das.subspace_, R[:, 0]))[0] < 2.0
    xb2, ab2, _ = planted_data(64, 2, continuous=True)
    xs2, as2, _ = planted_data(64, 3, continuous=True)
    y2 = model(xb2)[:, 0].detach() + 2 * (as2 - ab2)
    assert das.score(model, xb2, xs2, y2, tolerance=0.05).accuracy == 1.0


def test_das_compare_probe_and_random_baselines(fitted, planted, tmp_path):
    xb, ab, bb = planted_data(128, 30)
    xs, as_, _ = planted_data(128, 31)
    probe = R[:, 0] + 0.05 * R[:, 2]
    cmp = fitted.compare(planted, xb, xs, 2 * as_ + bb, probe_direction=probe, seeds=(0, 1, 2))
    assert isinstance(cmp, DASComparison)
    assert cmp.das >= 0.97 and cmp.probe >= 0.97
    assert len(cmp.random) == 3 and cmp.random_mean < cmp.das - 0.3
    assert cmp.full == pytest.approx(float((2 * as_ + bb == 2 * as_ + (xs[:, 1] > 0).long()).float().mean()))
    assert cmp.probe_cosine == pytest.approx(subspace_cosine(fitted.subspace_, probe))
    assert cmp.to_dict()["config"]["k"] == 1
    assert cmp.save(tmp_path / "cmp.json").exists() and cmp.plot() is not None


def test_das_k2_contains_the_identifiable_direction():
    # the output is one number, 2 a + b + w . noise: swapping (a, b) from the source is achieved by any plane
    # containing p = 2 R0 + R1 and otherwise orthogonal to the readout, so p (not the plane) is the truth
    model = HookedModel(Planted("reg").eval(), adapter="generic")
    xb, ab, bb = planted_data(192, 0, continuous=True)
    xs, as_, bs = planted_data(192, 1, continuous=True)
    y = model(xb)[:, 0].detach() + 2 * (as_ - ab) + (bs - bb)  # both a and b from the source
    das = DAS(k=2, epochs=15, lr=0.1, batch_size=32).fit(model, "embed", xb, xs, y)
    assert das.subspace_.shape == (D, 2)
    assert subspace_cosine(das.subspace_, 2 * R[:, 0] + R[:, 1]) > 0.999
    readout = model.model.head.weight[0].detach()
    off = readout - (readout @ (2 * R[:, 0] + R[:, 1])) / 5 * (2 * R[:, 0] + R[:, 1])  # the noise part
    assert subspace_cosine(das.subspace_, off) < 0.15  # a random plane: ~0.5


def test_das_leaves_the_model_untouched(planted):
    before = {k: v.clone() for k, v in planted.model.state_dict().items()}
    flags = [p.requires_grad for p in planted.model.parameters()]
    xb, ab, bb = planted_data(32, 0)
    xs, as_, _ = planted_data(32, 1)
    DAS(epochs=1).fit(planted, "embed", xb, xs, 2 * as_ + bb)
    assert all(torch.equal(before[k], v) for k, v in planted.model.state_dict().items())
    assert [p.requires_grad for p in planted.model.parameters()] == flags
    assert all(p.grad is None for p in planted.model.parameters())
    assert not planted.model.training


def test_das_is_deterministic_given_the_seed(planted):
    xb, ab, bb = planted_data(32, 0)
    xs, as_, _ = planted_data(32, 1)
    a = DAS(epochs=2, seed=3).fit(planted, "embed", xb, xs, 2 * as_ + bb).subspace_
    b = DAS(epochs=2, seed=3).fit(planted, "embed", xb, xs, 2 * as_ + bb).subspace_
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------- geometry
def test_principal_angles_match_scipy():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(10, 3, generator=g), torch.randn(10, 2, generator=g)
    np.testing.assert_allclose(principal_angles(a, b), np.sort(subspace_angles(a.numpy(), b.numpy())), atol=1e-6)
    assert subspace_cosine(a, a[:, 0]) == pytest.approx(1.0)
    q = random_subspace(10, 3, seed=1)
    torch.testing.assert_close(q.T @ q, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(q, random_subspace(10, 3, seed=1))


# ---------------------------------------------------------------------------------------------- errors
def test_refusals_name_the_argument(planted):
    xb, ab, bb = planted_data(16, 0)
    xs, as_, _ = planted_data(12, 1)
    with pytest.raises(InputError, match="base / source"):
        interchange(planted, xb, xs, "embed")
    with pytest.raises(SiteError, match="embedd"):
        interchange(planted, xb, xb, "embedd")
    with pytest.raises(InputError, match=r"subspace.*\[8, k\]"):
        interchange(planted, xb, xb, "embed", torch.randn(5, 1))
    with pytest.raises(InputError, match="linearly dependent"):
        interchange(planted, xb, xb, "embed", torch.ones(D, 2))
    with pytest.raises(InputError, match="subspace"):
        interchange(planted, xb, xb, "embed", "half")
    with pytest.raises(InputTypeError, match="high_level"):
        iia(planted, xb, xb, "embed", "a", base_vars=ab, source_vars=ab)
    with pytest.raises(InputError, match="base_vars"):
        iia(planted, xb, xb, "embed", lambda b, s: s)
    with pytest.raises(InputError, match="high_level"):
        iia(planted, xb, xb, "embed", lambda b, s: s[:3], base_vars=ab, source_vars=ab)
    with pytest.raises(NotFittedError, match="fit"):
        DAS().score(planted, xb, xb, ab)
    with pytest.raises(InputError, match="k:"):
        DAS(k=9).fit(planted, "embed", xb, xb, ab)
    with pytest.raises(InputError, match="k:"):
        DAS(k=0).fit(planted, "embed", xb, xb, ab)
    with pytest.raises(InputError, match="target_labels"):
        DAS().fit(planted, "embed", xb, xb, ab[:3])
    with pytest.raises(InputError, match="base / source"):
        DAS().fit(planted, "embed", xb, xs, ab)
    with pytest.raises(InputError, match="loss='ce'"):
        DAS(loss="ce").fit(planted, "embed", xb, xb, ab.float() + 0.5)
    with pytest.raises(InputError, match="lr"):
        DAS(lr=-1).fit(planted, "embed", xb, xb, ab)
    with pytest.raises(InputError, match="calls"):
        Interchange(xb, calls=[-1])
    with pytest.raises(InputTypeError, match="model"):
        interchange("not a model", xb, xb, "embed")
    with pytest.raises(InputError, match="NaN"):
        interchange(planted, xb * float("nan"), xb, "embed")


# ---------------------------------------------------------------------------------------------- every model, every form
def _conformance_model(kind: str):
    from ..conftest import make_cnn, make_policy, make_vit

    g = torch.Generator().manual_seed(1)
    if kind == "cnn":
        return make_cnn(), torch.randn(24, 3, 8, 8, generator=g), "block"
    if kind == "vit":
        return make_vit(), torch.randn(24, 3, 16, 16, generator=g), "blocks.0.resid_post"
    return make_policy(), torch.randn(24, 6, generator=g), "2"


def _as_form(form: str, x: torch.Tensor, y: torch.Tensor):
    from torch.utils.data import DataLoader, TensorDataset

    if form == "numpy":
        return x.double().numpy()
    if form == "dataset":
        return TensorDataset(x, y)
    return DataLoader(TensorDataset(x, y), batch_size=7)


@pytest.mark.parametrize("kind", ["cnn", "vit", "policy"])
def test_same_numbers_for_every_model_kind_and_input_form(kind):
    """A plain module (wrapped by the boundary) and every data form give the tensor reference's numbers."""
    model, x, site = _conformance_model(kind)
    hm = HookedModel(model)
    xb, xs = x[:12], x[12:]
    hm.trace(xb)  # shapes and axes are known once traced
    s = hm.sites[site]
    d = math.prod(n for n, a in zip(s.shape, s.axes[1:]) if a in ("head", "feature"))
    q = random_subspace(d, 2, seed=0)
    with torch.no_grad():
        yb, ys = hm(xb).argmax(-1), hm(xs).argmax(-1)
    ref_out = interchange(hm, xb, xs, site, q)
    ref = iia(hm, xb, xs, site, lambda b, s: s, subspace=q, base_vars=yb, source_vars=ys)
    ref_das = DAS(k=2, epochs=1, batch_size=4).fit(hm, site, xb, xs, ys).subspace_
    for form in ("numpy", "dataset", "loader"):
        fb, fs = _as_form(form, xb, yb), _as_form(form, xs, ys)
        torch.testing.assert_close(interchange(model, fb, fs, site, q), ref_out, atol=1e-5, rtol=1e-5)
        got = iia(model, fb, fs, site, lambda b, s: s, subspace=q, **(
            {"base_vars": yb, "source_vars": ys} if form == "numpy" else {}))  # labels travel in the data
        assert (got.accuracy, got.unchanged) == (ref.accuracy, ref.unchanged)
        das = DAS(k=2, epochs=1, batch_size=4).fit(model, site, fb, fs, ys)
        torch.testing.assert_close(das.subspace_, ref_das, atol=1e-5, rtol=1e-5)


def test_several_sites_with_a_subspace_each(planted):
    xb, ab, bb = planted_data(32, 3)
    xs, as_, bs = planted_data(32, 4)
    # the head's output is the last site: interchanging it whole gives the source's output
    out = interchange(planted, xb, xs, ["embed", "head"], {"embed": R[:, 0], "head": None})
    torch.testing.assert_close(out, planted(xs).detach(), atol=1e-5, rtol=1e-5)
    res = iia(planted, xb, xs, ["embed"], lambda b, s: 2 * s[0] + b[1], subspace={"embed": R[:, 0]},
              base_vars=(ab, bb), source_vars=(as_, bs))
    assert res.accuracy == 1.0
    with pytest.raises(InputError, match="no entry for site 'head'"):
        interchange(planted, xb, xs, ["embed", "head"], {"embed": R[:, 0]})


def test_changing_the_subspace_of_an_interchange_takes_effect(planted):
    xb, ab, bb = planted_data(16, 3)
    xs, as_, bs = planted_data(16, 4)
    _, cache = planted.run_with_cache(xs, sites=["embed"])
    iv = Interchange(cache["embed"], R[:, 0])
    with torch.no_grad():
        assert torch.equal(planted.run_with_interventions(xb, {"embed": iv}).argmax(-1), 2 * as_ + bb)
        iv.subspace = R[:, 1]
        assert torch.equal(planted.run_with_interventions(xb, {"embed": iv}).argmax(-1), 2 * ab + bs)
    assert "k=1" in repr(iv)


def test_iia_result_from_predictions():
    res = IIAResult.from_predictions([0, 1, 1, 0, 1], [0, 1, 0, 0, 1], unchanged=[1, 1, 0, 0, 0], level=0.9)
    assert res.accuracy == 0.8 and res.correct == 4 and res.unchanged == 0.6
    assert res.per_class[0]["accuracy"] == pytest.approx(2 / 3) and res.per_class[1]["n"] == 2
    ref = binomtest(4, 5).proportion_ci(confidence_level=0.9, method="exact")
    assert res.ci == pytest.approx((ref.low, ref.high))
    assert res.chance == 0.6 and res.plot() is not None
    assert IIAResult.from_predictions([0.1, 0.5], [0.0, 0.5], tolerance=0.2).plot() is not None
    with pytest.raises(InputError, match="expected"):
        IIAResult.from_predictions([0, 1], [0, 1, 1])
