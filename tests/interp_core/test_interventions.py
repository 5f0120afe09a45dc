"""Interventions against closed forms, selectors in the site's own terms, composition and clear errors."""

import pytest
import torch
from torch import nn

from interp_core import GenericAdapter, HookedModel
from interp_core.interventions import Ablate, Patch, ProjectOut, Replace, Steer

from ..conftest import make_cnn, make_policy


class Heads(nn.Module):
    """Emits a per-head activation [batch, pos, head, feature] and reads it out linearly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(4, 3 * 2 * 5)
        self.split = nn.Identity()
        self.out = nn.Linear(3 * 2 * 5, 2)

    def forward(self, x):  # x: [batch, pos=4?]; we use [batch, 7, 4]
        h = self.split(self.proj(x).reshape(x.shape[0], x.shape[1], 3, 10))
        return self.out(h.reshape(x.shape[0], x.shape[1], 30)).sum(1)


def heads_model():
    m = Heads().eval()
    hm = HookedModel(m, GenericAdapter(axes={"split": ("batch", "pos", "head", "feature")}),
                     example_input=torch.randn(1, 7, 4))
    return m, hm


def test_patch_positions_on_cnn_cells_changes_only_those_cells():
    model = make_cnn()
    hm = HookedModel(model)
    clean, corrupt = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    _, cc = hm.run_with_cache(clean, sites=["stem"])
    _, seen = hm.run_with_cache(corrupt, sites=["stem"],
                                interventions={"stem": Patch(cc, positions=[(1, 2), (7, 7)])})
    _, base = hm.run_with_cache(corrupt, sites=["stem"])
    got, c, b = seen["stem"], cc["stem"], base["stem"]
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[1, 2] = mask[7, 7] = True
    assert torch.equal(got[:, :, mask], c[:, :, mask])
    assert torch.equal(got[:, :, ~mask], b[:, :, ~mask])


def test_patch_heads_and_named_and_flat_positions():
    m, hm = heads_model()
    x, y = torch.randn(2, 7, 4), torch.randn(2, 7, 4)
    _, cx = hm.run_with_cache(x, sites=["split"])
    _, cy = hm.run_with_cache(y, sites=["split"])
    _, got = hm.run_with_cache(y, sites=["split"], interventions={"split": Patch(cx, heads=[1], positions=3)})
    expected = cy["split"].clone()
    expected[:, 3, 1] = cx["split"][:, 3, 1]
    assert torch.equal(got["split"], expected)


def test_steer_matches_closed_form_on_linear_readout():
    # out = W2 tanh(W1 x) ... site "2" feeds the Tanh; steering site "4" (logits) by alpha*v adds alpha*v
    model = make_policy()
    hm = HookedModel(model)
    x = torch.randn(5, 6)
    v = torch.randn(3)
    with torch.no_grad():
        base = model(x)
    out = hm.run_with_interventions(x, {"4": Steer(v, alpha=2.5)})
    assert torch.allclose(out - base, 2.5 * v.expand(5, -1), atol=1e-6)
    # steering the hidden layer "2" by v changes the logits by W_out @ (tanh(h + v) - tanh(h))
    w = torch.randn(16)
    _, c = hm.run_with_cache(x, sites=["2"])
    with torch.no_grad():
        expected = base + (torch.tanh(c["2"] + w) - torch.tanh(c["2"])) @ model[4].weight.T
    assert torch.allclose(hm.run_with_interventions(x, {"2": Steer(w)}), expected, atol=1e-5)


def test_project_out_leaves_activation_orthogonal_and_rest_unchanged():
    model = make_cnn()
    hm = HookedModel(model)
    x = torch.randn(2, 3, 8, 8)
    v = torch.randn(8)
    _, c = hm.run_with_cache(x, sites=["stem"], interventions={"stem": ProjectOut(v)})
    _, base = hm.run_with_cache(x, sites=["stem"])
    rows = c.features("stem")
    u = v / v.norm()
    assert rows.matmul(u).abs().max() < 1e-5
    base_rows = base.features("stem")
    assert torch.allclose(rows, base_rows - base_rows.matmul(u)[:, None] * u, atol=1e-5)


def test_ablate_zero_mean_resample():
    model = make_cnn()
    hm = HookedModel(model)
    ref_x, x = torch.randn(6, 3, 8, 8), torch.randn(2, 3, 8, 8)
    _, stats = hm.run_with_cache(ref_x, sites=["stem"])
    s = stats["stem"]
    _, z = hm.run_with_cache(x, sites=["stem"], interventions={"stem": Ablate("zero", features=[0, 3])})
    assert (z["stem"][:, [0, 3]] == 0).all() and (z["stem"][:, [1, 2]] != 0).any()
    _, m = hm.run_with_cache(x, sites=["stem"], interventions={"stem": Ablate("mean", stats=stats)})
    assert torch.allclose(m["stem"], s.mean(0, keepdim=True).expand(2, -1, -1, -1))
    _, r = hm.run_with_cache(x, sites=["stem"], interventions={"stem": Ablate("resample", stats=s, seed=3)})
    for i in range(2):  # every example was replaced by one of the reference examples
        assert any(torch.equal(r["stem"][i], s[j]) for j in range(6))


def test_interventions_compose_on_one_site_and_across_sites():
    model = make_policy()
    hm = HookedModel(model)
    x = torch.randn(3, 6)
    v = torch.randn(3)
    out = hm.run_with_interventions(x, {"4": [Steer(v), Replace(lambda a: 2 * a)]})
    with torch.no_grad():
        assert torch.allclose(out, 2 * (model(x) + v), atol=1e-6)
    # across sites: zeroing layer "1" then patching the logits: the patch wins downstream
    target = torch.randn(3, 3)
    out = hm.run_with_interventions(x, {"1": Ablate("zero"), "4": Patch(target)})
    assert torch.equal(out, target)


def test_replace_sees_site():
    model = make_cnn()
    hm = HookedModel(model, example_input=torch.randn(1, 3, 8, 8))
    seen = []
    hm.run_with_interventions(torch.randn(1, 3, 8, 8), {"stem": Replace(lambda a, site: seen.append(site) or a)})
    assert seen[0].name == "stem" and seen[0].axes == ("batch", "feature", "pos", "pos")


def test_shape_errors_name_site_and_shapes():
    model = make_cnn()
    hm = HookedModel(model, example_input=torch.randn(1, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"Patch at site 'stem': source has shape \(2, 8, 4, 4\).*\(2, 8, 8, 8\)"):
        hm.run_with_interventions(x, {"stem": Patch(torch.randn(2, 8, 4, 4))})
    with pytest.raises(ValueError, match=r"site 'stem' returned shape \(2, 8\), expected \(2, 8, 8, 8\)"):
        hm.run_with_interventions(x, {"stem": Replace(lambda a: a.mean((2, 3)))})
    with pytest.raises(ValueError, match=r"Steer at site 'stem': direction has 5 entries, expected 8"):
        hm.run_with_interventions(x, {"stem": Steer(torch.randn(5))})
    msg = r"site 'stem': position \(1, 2, 3\) has 3 indices but the site has 2 pos axes of sizes \(8, 8\)"
    with pytest.raises(ValueError, match=msg):
        hm.run_with_interventions(x, {"stem": Ablate("zero", positions=(1, 2, 3))})
    with pytest.raises(IndexError, match="out of range"):
        hm.run_with_interventions(x, {"stem": Ablate("zero", features=[9])})
    with pytest.raises(ValueError, match="no pos axis"):
        hm.run_with_interventions(x, {"head": Ablate("zero", positions=0)})
    with pytest.raises(ValueError, match="needs stats="):
        Ablate("mean")
    with pytest.raises(KeyError, match="unknown site 'stemm'; closest: 'stem'"):
        hm.run_with_interventions(x, {"stemm": Ablate("zero")})
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in model.modules())


def test_patch_source_is_never_written_by_in_place_ops_downstream():
    model = make_cnn()  # block.bn2's output is modified by `out += x` and an in-place ReLU
    hm = HookedModel(model)
    x = torch.randn(2, 3, 8, 8)
    _, cache = hm.run_with_cache(x, sites=["block.bn2"])
    before = cache["block.bn2"].clone()
    with torch.no_grad():
        assert torch.equal(hm.run_with_interventions(x, {"block.bn2": Patch(cache)}), model(x))
    assert torch.equal(cache["block.bn2"], before)


# ---------------------------------------------------------------------------------------------- heads= / features=
def test_steer_heads_and_positions_match_closed_form():
    m, hm = heads_model()
    x = torch.randn(2, 7, 4)
    v = torch.randn(30)  # [d] = 3 heads x 10 features
    _, base = hm.run_with_cache(x, sites=["split"])
    _, got = hm.run_with_cache(x, sites=["split"], interventions={"split": Steer(v, alpha=1.5, heads=[1])})
    expected = base["split"].clone()
    expected[:, :, 1] += 1.5 * v.reshape(3, 10)[1]  # only head 1's block of the direction, at every position
    torch.testing.assert_close(got["split"], expected, rtol=0, atol=1e-6)
    _, got = hm.run_with_cache(x, sites=["split"],
                               interventions={"split": Steer(v, alpha=-2.0, heads=[0, 2], positions=[1, 4])})
    expected = base["split"].clone()
    for p in (1, 4):
        for h in (0, 2):
            expected[:, p, h] -= 2.0 * v.reshape(3, 10)[h]
    torch.testing.assert_close(got["split"], expected, rtol=0, atol=1e-6)
    # and the model output moves by the readout of that change (out = W (sum over positions of h) + b)
    with torch.no_grad():
        delta = (expected - base["split"]).reshape(2, 7, 30).sum(1) @ m.out.weight.T
        out = hm.run_with_interventions(x, {"split": Steer(v, alpha=-2.0, heads=[0, 2], positions=[1, 4])})
        torch.testing.assert_close(out, m(x) + delta, rtol=0, atol=1e-5)


def test_steer_features_on_cnn_channels_match_closed_form():
    model = make_cnn()
    hm = HookedModel(model)
    x = torch.randn(2, 3, 8, 8)
    v = torch.randn(8)
    _, base = hm.run_with_cache(x, sites=["stem"])
    _, got = hm.run_with_cache(x, sites=["stem"], interventions={"stem": Steer(v, alpha=0.5, features=[0, 3])})
    expected = base["stem"].clone()
    expected[:, [0, 3]] += 0.5 * v[[0, 3]][None, :, None, None]
    torch.testing.assert_close(got["stem"], expected, rtol=0, atol=1e-6)
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[0, 3]] = True  # a boolean mask selects the same channels
    _, same = hm.run_with_cache(x, sites=["stem"], interventions={"stem": Steer(v, alpha=0.5, features=mask)})
    assert torch.equal(same["stem"], got["stem"])


def test_project_out_heads_is_the_projection_within_that_head():
    m, hm = heads_model()
    x = torch.randn(3, 7, 4)
    u = torch.randn(10)
    direction = torch.zeros(3, 10)
    direction[2] = u  # zero outside head 2's block
    _, base = hm.run_with_cache(x, sites=["split"])
    _, got = hm.run_with_cache(x, sites=["split"],
                               interventions={"split": ProjectOut(direction.reshape(-1), heads=[2])})
    a = base["split"]
    expected = a.clone()
    expected[:, :, 2] = a[:, :, 2] - (a[:, :, 2] @ u)[..., None] * u / u.dot(u)
    torch.testing.assert_close(got["split"], expected, rtol=0, atol=1e-5)
    assert got["split"][:, :, 2].matmul(u).abs().max() < 1e-4


def test_project_out_features_changes_only_those_coordinates():
    model = make_policy()
    hm = HookedModel(model)
    x = torch.randn(4, 6)
    basis = torch.randn(2, 16)  # project out a 2-d span
    _, base = hm.run_with_cache(x, sites=["2"])
    _, got = hm.run_with_cache(x, sites=["2"], interventions={"2": ProjectOut(basis, features=[1, 5, 9])})
    a = base["2"].double()
    b = basis.double()
    projected = a - a @ b.T @ torch.linalg.inv(b @ b.T) @ b  # closed form of x - P x for a full-rank basis
    expected = a.clone()
    expected[:, [1, 5, 9]] = projected[:, [1, 5, 9]]
    torch.testing.assert_close(got["2"].double(), expected, rtol=0, atol=1e-5)
    # a repeated direction adds nothing to the span: same as projecting the single one
    _, twice = hm.run_with_cache(x, sites=["2"], interventions={"2": ProjectOut(torch.stack([b[0], 2 * b[0]]).float())})
    _, once = hm.run_with_cache(x, sites=["2"], interventions={"2": ProjectOut(basis[0])})
    torch.testing.assert_close(twice["2"], once["2"], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- errors
def test_wrong_shape_dtype_empty_and_degenerate_get_the_suites_errors():
    from interp_core.errors import InputError

    model = make_cnn()
    hm = HookedModel(model, example_input=torch.randn(1, 3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    # a selector over a Replace whose output has the wrong shape: the site and the fix, not a broadcast error
    with pytest.raises(InputError, match=r"Replace at site 'stem' returned shape \(2, 8, 8\), expected"):
        hm.run_with_interventions(x, {"stem": Replace(lambda a: a.mean(1), positions=[(0, 0)])})
    with pytest.raises(InputError, match=r"Replace at site 'stem' returned float64 for a float32 activation; "
                                         r"return the activation's dtype"):
        hm.run_with_interventions(x, {"stem": Replace(lambda a: a.double())})
    with pytest.raises(InputError, match=r"Ablate\('mean'\) at site 'stem': stats hold no reference examples"):
        hm.run_with_interventions(x, {"stem": Ablate("mean", stats=torch.empty(0, 8, 8, 8))})
    with pytest.raises(InputError, match=r"Ablate\('resample'\) at site 'stem': stats hold no reference"):
        hm.run_with_interventions(x, {"stem": Ablate("resample", stats=torch.empty(0, 8, 8, 8))})
    with pytest.raises(InputError, match="ProjectOut at site 'stem': the direction is zero"):
        hm.run_with_interventions(x, {"stem": ProjectOut(torch.zeros(8))})
    with pytest.raises(InputError, match="Steer at site 'stem': direction has NaN or infinite entries"):
        hm.run_with_interventions(x, {"stem": Steer(torch.full((8,), float("nan")))})
    with pytest.raises(InputError, match=r"ProjectOut at site 'stem': direction has shape \(2, 2, 8\)"):
        hm.run_with_interventions(x, {"stem": ProjectOut(torch.randn(2, 2, 8))})
    assert not any(mod._forward_hooks or mod._forward_pre_hooks for mod in model.modules())
