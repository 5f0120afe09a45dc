"""Conformance: every public method x {a CNN, a ViT, a policy} x {tensor, numpy array, Dataset, DataLoader of
(x, y)} gives the same numbers for the same data, and the same site names whichever way the model came in.

Models come in as plain ``nn.Module`` objects (the boundary wraps them with the registered adapter); the
reference for each method is its call on a stacked tensor with a ``HookedModel``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import vision
from interp_core import ActivationStore, HookedModel
from interp_core.attribution import attribute
from interp_core.boundary import as_hooked
from interp_core.metrics import logit_diff
from interp_core.patching import ablation_sweep, patch_sweep
from interp_core.probes import probe_sites
from interp_core.similarity import similarity_matrix
from interp_core.steering import diff_means
from interp_core.universality import match_features

from .conftest import make_cnn, make_policy, make_vit

N = 24


def _model(kind: str):
    if kind == "cnn":
        return make_cnn(), torch.randn(N, 3, 8, 8, generator=torch.Generator().manual_seed(1)), ["stem", "block"]
    if kind == "vit":
        return (make_vit(), torch.randn(N, 3, 16, 16, generator=torch.Generator().manual_seed(1)),
                ["blocks.0.resid_post", "blocks.1.resid_post"])
    return make_policy(), torch.randn(N, 6, generator=torch.Generator().manual_seed(1)), ["0", "2"]


KINDS = ["cnn", "vit", "policy"]
FORMS = ["tensor", "numpy", "dataset", "loader"]


def _form(form: str, x: torch.Tensor, y: torch.Tensor | None = None):
    """``(data, labels)`` for one input form; labels travel inside the Dataset / DataLoader."""
    if form == "tensor":
        return x, y
    if form == "numpy":
        return x.double().numpy(), (None if y is None else y.numpy())
    ds = TensorDataset(x, y) if y is not None else TensorDataset(x)
    if form == "dataset":
        return ds, None
    return DataLoader(ds, batch_size=7), None


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_same_site_names_whichever_way_the_model_came_in(kind):
    model, x, _ = _model(kind)
    names = {HookedModel(model).sites.names == vision.wrap(model).sites.names,
             as_hooked(model).sites.names == vision.wrap(model).sites.names}
    assert names == {True}


@pytest.mark.parametrize("kind", KINDS)
def test_probes_same_numbers_for_every_form(kind):
    model, x, sites = _model(kind)
    y = torch.arange(N) % 2
    ref = probe_sites(HookedModel(model), x, y, sites=sites, pool="mean")
    for form in FORMS[1:]:
        data, labels = _form(form, x, y)
        got = probe_sites(model, data, labels, sites=sites, pool="mean")
        for a, b in zip(ref.table, got.table):
            assert a["site"] == b["site"]
            assert a["test_score"] == pytest.approx(b["test_score"], abs=1e-6), form


@pytest.mark.parametrize("kind", KINDS)
def test_patching_and_ablation_same_numbers_for_every_form(kind):
    model, x, sites = _model(kind)
    clean, corrupted = x[:4], x[4:8]
    metric = logit_diff(0, 1)
    ref = patch_sweep(HookedModel(model), clean, corrupted, sites[:1], metric, per="site", progress=False)
    ref_ab = ablation_sweep(HookedModel(model), clean, sites[:1], metric, per="site", progress=False)
    for form in FORMS[1:]:
        c, _ = _form(form, clean)
        k, _ = _form(form, corrupted)
        got = patch_sweep(model, c, k, sites[:1], metric, per="site", progress=False)
        torch.testing.assert_close(got.effects[sites[0]].float(), ref.effects[sites[0]].float(), rtol=1e-5, atol=1e-5)
        got_ab = ablation_sweep(model, c, sites[:1], metric, per="site", progress=False)
        torch.testing.assert_close(got_ab.effects[sites[0]].float(), ref_ab.effects[sites[0]].float(),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_attribution_same_numbers_for_every_form(kind):
    model, x, _ = _model(kind)
    x = x[:6]
    ref = attribute(HookedModel(model), x, "integrated_gradients", target=0, n_steps=8)
    for form in ("numpy",):
        data, _ = _form(form, x)
        got = attribute(model, data, "integrated_gradients", target=0, n_steps=8)
        torch.testing.assert_close(got.attributions.float(), ref.attributions.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_steering_directions_same_for_every_form(kind):
    model, x, sites = _model(kind)
    ref = diff_means(HookedModel(model), x[:12], x[12:], sites[-1])
    for form in FORMS[1:]:
        a, _ = _form(form, x[:12])
        b, _ = _form(form, x[12:])
        torch.testing.assert_close(diff_means(model, a, b, sites[-1]), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_similarity_and_matching_same_for_every_form(kind):
    model, x, sites = _model(kind)
    ref = similarity_matrix(HookedModel(model), None, x, sites, sites)
    ref_match = match_features(HookedModel(model), HookedModel(model), x, [(sites[0], sites[0])])
    for form in FORMS[1:]:
        data, _ = _form(form, x)
        got = similarity_matrix(model, None, data, sites, sites)
        np.testing.assert_allclose(np.asarray(got.values), np.asarray(ref.values), atol=1e-5)
        data, _ = _form(form, x)
        m = match_features(model, model, data, [(sites[0], sites[0])])
        assert m.table[0]["mean_corr"] == pytest.approx(ref_match.table[0]["mean_corr"], abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_store_same_rows_for_every_form(kind, tmp_path):
    model, x, sites = _model(kind)
    y = torch.arange(N) % 3
    ref = ActivationStore.collect(HookedModel(model), [(x, y)], sites, tmp_path / "ref", pool="mean", progress=False)
    for form in FORMS[1:]:
        data, labels = _form(form, x, y)
        if labels is not None:
            data = (data, labels)
        got = ActivationStore.collect(model, data, sites, tmp_path / form, pool="mean", progress=False)
        for s in sites:
            torch.testing.assert_close(got.features(s), ref.features(s), rtol=1e-5, atol=1e-6)
        assert torch.equal(got.labels(), ref.labels())


def _result_classes():
    import importlib
    import inspect
    import pkgutil

    import interp_core
    import rl
    import vision

    found = {}
    for pkg in (interp_core, vision, rl):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if ".zoo.train" in info.name or info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, obj in inspect.getmembers(module, inspect.isclass):
                if name.endswith("Result") and name != "Result" and obj.__module__ == module.__name__:
                    found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_result_is_a_result_with_a_plot():
    """Every analysis returns a Result: numbers + configuration, to_dict, atomic save, and its standard figure."""
    from interp_core.results import Result

    classes = _result_classes()
    assert len(classes) >= 10, sorted(classes)
    not_results = [n for n, c in classes.items() if not issubclass(c, Result)]
    assert not not_results, f"results that do not subclass Result: {not_results}"
    no_plot = [n for n, c in classes.items() if getattr(c, "plot", None) is getattr(Result, "plot", None)]
    assert not no_plot, f"results without their own plot(): {no_plot}"
