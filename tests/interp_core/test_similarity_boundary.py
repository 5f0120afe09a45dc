"""similarity_matrix through the boundary: every data form, plain modules and hooked models of the three kinds
(CNN, ViT, policy), eval mode, NaN refusal, progress bars; checked against CKA on features cached directly."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from interp_core import ActivationStore, HookedModel
from interp_core.errors import InputError, InterpError
from interp_core.results import Result
from interp_core.similarity import cka, procrustes, similarity_matrix
from tests.conftest import make_cnn, make_policy, make_vit


def reference(model_a, model_b, x, sa, sb, pool="mean", measure=cka):
    """CKA on features from one direct run_with_cache per model (no batching, no boundary)."""
    ha, hb = HookedModel(model_a), HookedModel(model_b)
    with torch.no_grad():
        _, ca = ha.run_with_cache(x, sites=sa, pool=pool)
        _, cb = hb.run_with_cache(x, sites=sb, pool=pool)
    return np.array([[measure(ca.features(s), cb.features(t)) for t in sb] for s in sa])


def test_tensor_data_is_batched_not_iterated_row_by_row():
    # the issue: a tensor used to be iterated row by row, tracing the model on an unbatched row
    pol = make_policy(0)
    hm = HookedModel(pol)
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    sites = ["1", "3", "4"]
    res = similarity_matrix(hm, None, x, sites, sites, batch_size=16)
    ref = reference(pol, pol, x, sites, sites)
    np.testing.assert_allclose(res.matrix, ref, atol=1e-6)
    assert res.n_rows == 40
    # and every later call on the same HookedModel still works (the trace was made on a real batch)
    again = similarity_matrix(hm, None, list(x.split(10)), sites, sites)
    np.testing.assert_allclose(again.matrix, ref, atol=1e-6)


def test_every_data_form_gives_the_same_matrix():
    a, b = make_policy(0), make_policy(1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 6, generator=g), torch.randint(0, 3, (60,), generator=g)
    sa, sb = ["1", "3"], ["1", "3", "4"]
    ref = reference(a, b, x, sa, sb)
    forms = {
        "tensor": x, "numpy": x.numpy(), "numpy float64": x.double().numpy(), "(x, y)": (x, y),
        "Dataset": TensorDataset(x, y), "DataLoader": DataLoader(TensorDataset(x, y), batch_size=7),
        "list of tensors": list(x.split(25)), "list of (x, y)": list(zip(x.split(9), y.split(9))),
        "list of dicts": [{"x": xb, "y": yb} for xb, yb in zip(x.split(20), y.split(20))],
    }
    for name, data in forms.items():
        res = similarity_matrix(a, b, data, sa, sb, batch_size=13)  # plain modules: as_hooked inside
        np.testing.assert_allclose(res.matrix, ref, atol=1e-6, err_msg=name)
        assert res.n_rows == 60 and res.values is res.matrix, name


def test_non_streaming_measure_and_max_batches():
    a, b = make_policy(0), make_policy(2)
    x = torch.randn(80, 6, generator=torch.Generator().manual_seed(2))
    res = similarity_matrix(a, b, x, ["1", "3"], ["3"], measure="procrustes", batch_size=20, max_batches=2)
    assert res.n_rows == 40 and res.is_distance
    np.testing.assert_allclose(res.matrix, reference(a, b, x[:40], ["1", "3"], ["3"], measure=procrustes),
                               atol=1e-6)


def test_cnn_in_train_mode_runs_in_eval_mode_and_keeps_its_flags():
    cnn = make_cnn(0).train()  # dropout on, batch statistics: an analysis must not see either
    x = torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    sites = ["stem", "block", "head"]
    buffers = [b.clone() for b in cnn.buffers()]
    res = similarity_matrix(cnn, make_cnn(1), x, sites, sites, batch_size=8)
    ref = reference(make_cnn(0), make_cnn(1), x, sites, sites)  # fresh copies, in eval mode
    np.testing.assert_allclose(res.matrix, ref, atol=1e-6)
    assert all(m.training for m in cnn.modules())  # flags restored
    assert all(torch.equal(b, c) for b, c in zip(cnn.buffers(), buffers))  # running statistics untouched


def test_vit_sites_and_cls_pooling_through_the_registered_adapter():
    v0, v1 = make_vit(0), make_vit(1)
    x = torch.randn(20, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    sites = ["blocks.0.resid_post", "blocks.1.resid_post"]  # canonical names: the vision adapter was used
    res = similarity_matrix(v0, v1, x, sites, sites, pool="cls", batch_size=8)
    np.testing.assert_allclose(res.matrix, reference(v0, v1, x, sites, sites, pool="cls"), atol=1e-5)
    self_res = similarity_matrix(v0, None, x, sites, sites, measure="rbf_cka")
    np.testing.assert_allclose(np.diag(self_res.matrix), 1.0, atol=1e-10)
    assert res.plot().axes and isinstance(res, Result)


def test_store_of_each_model_kind_is_a_source(tmp_path):
    x_img = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    for i, (model, x, sites) in enumerate([(make_cnn(0), x_img[:, :, :8, :8], ["stem", "block"]),
                                           (make_vit(0), x_img, ["blocks.0.resid_post", "blocks.1.resid_post"]),
                                           (make_policy(0), x_img[:, 0, 0, :6], ["1", "3"])]):
        hm = HookedModel(model)
        store = ActivationStore.collect(hm, list(x.split(8)), sites, path=tmp_path / str(i), pool="mean",
                                        progress=False)
        from_store = similarity_matrix(store, store, sites_a=sites, sites_b=sites)
        from_model = similarity_matrix(hm, None, x, sites, sites)
        np.testing.assert_allclose(from_store.matrix, from_model.matrix, atol=1e-6)


def test_refusals_name_the_argument():
    pol = make_policy(0)
    x = torch.randn(30, 6)
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        similarity_matrix(pol, None, bad, ["1"], ["3"])
    with pytest.raises(InputError, match="no batch axis"):
        similarity_matrix(pol, None, [x[0]], ["1"], ["3"])  # one unbatched example
    with pytest.raises(InputError, match="NaN"):  # precomputed features, streaming and non-streaming measures
        similarity_matrix({"a": bad}, {"b": x}, measure="linear_cka")
    with pytest.raises(InputError, match="NaN"):
        similarity_matrix({"a": bad}, {"b": x}, measure="svcca")
    with pytest.raises(InputError, match="unknown similarity measure"):
        similarity_matrix(pol, None, x, ["1"], ["3"], measure="linear_cak")
    with pytest.raises(InputError, match="data"):
        similarity_matrix(pol, None, None, ["1"], ["3"])
    with pytest.raises(InterpError, match="model"):
        similarity_matrix(pol, {"1": x}, x, ["1"], ["1"])
    with pytest.raises(KeyError, match="closest"):
        similarity_matrix(pol, None, x, ["1"], ["33"])


def test_progress_bar_only_when_asked(capsys):
    pol = make_policy(0)
    x = torch.randn(30, 6)
    similarity_matrix(pol, None, x, ["1"], ["3"], progress=True, batch_size=10)
    assert "similarity (linear_cka)" in capsys.readouterr().err
    similarity_matrix(pol, None, x, ["1"], ["3"], progress=False, batch_size=10)
    assert capsys.readouterr().err == ""
