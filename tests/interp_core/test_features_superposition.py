"""Superposition measures on constructed cases: effective latents per unit against hand-computed entropies,
variance outside the top-k directions against scikit-learn's PCA, and the model-level study against the same
measures computed by hand on collected rows."""

import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from interp_core import HookedModel
from interp_core.errors import InputError, NotFittedError
from interp_core.features import SparseAutoencoder
from interp_core.features.superposition import superposition, unit_polysemanticity, variance_outside

from ..conftest import make_policy


def constructed_sae():
    """d = 3 units, n = 6 latents: unit 0 written by latents 0-3 equally, unit 1 by latent 4 alone,
    unit 2 by latent 4 (weight 1) and latent 5 (weight 3)."""
    W = torch.zeros(6, 3)
    W[0:4, 0] = 0.5
    W[4, 1] = 1.0
    W[4, 2] = 1.0
    W[5, 2] = math.sqrt(3.0)
    return SparseAutoencoder.from_weights(W, torch.zeros(6), W, torch.zeros(3), variant="relu")


def test_effective_count_and_mixed_latents_match_the_construction():
    res = unit_polysemanticity(constructed_sae(), threshold=0.2)
    p2 = np.array([0.25, 0.75])
    want_eff2 = math.exp(-(p2 * np.log(p2)).sum())
    torch.testing.assert_close(res["effective"], torch.tensor([4.0, 1.0, want_eff2], dtype=torch.float64))
    assert res["n_mixed"].tolist() == [4, 1, 2]
    torch.testing.assert_close(res["shares"].sum(0), torch.ones(3, dtype=torch.float64))


def test_latent_energy_weights_the_shares():
    sae = constructed_sae()
    # rows firing latents 0 and 1 only (through the identity-like encoder W_enc = W_dec): latents 2, 3 get 0
    x = torch.zeros(50, 3)
    x[:, 0] = torch.rand(50) + 0.5
    f = sae.encode(x)
    a = f.double().pow(2).mean(0)
    res = unit_polysemanticity(sae, x)
    W = sae.module_.W_dec.double()
    w = a[:, None] * W.pow(2)
    torch.testing.assert_close(res["shares"][:, 0], w[:, 0] / w[:, 0].sum())
    with pytest.raises(InputError, match="threshold"):
        unit_polysemanticity(sae, threshold=1.5)
    with pytest.raises(InputError, match="fitted on 3"):
        unit_polysemanticity(sae, torch.zeros(5, 4))
    with pytest.raises(NotFittedError):
        unit_polysemanticity(SparseAutoencoder())


def test_variance_outside_matches_sklearn_pca():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 10)) * np.array([5, 4, 3, 2, 1, 1, 0.5, 0.5, 0.2, 0.1]) + 3.0
    X = X @ np.linalg.qr(rng.normal(size=(10, 10)))[0]  # a random rotation: the directions are not the axes
    out = variance_outside(X, top_k=(0, 1, 3, 10, 20))
    ratios = PCA().fit(X).explained_variance_ratio_
    assert out[0] == 1.0
    assert out[1] == pytest.approx(1 - ratios[:1].sum(), abs=1e-10)
    assert out[3] == pytest.approx(1 - ratios[:3].sum(), abs=1e-10)
    assert out[10] == pytest.approx(0.0, abs=1e-10) and out[20] == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(InputError, match="no variance"):
        variance_outside(np.ones((5, 3)))
    with pytest.raises(InputError, match="top_k"):
        variance_outside(X, top_k=-1)


def test_superposition_on_a_model_and_its_random_twin_equals_the_hand_computation():
    model, twin = make_policy(seed=0), make_policy(seed=5)
    x = torch.randn(512, 6)
    sae = SparseAutoencoder(n_latents=32, k=4, epochs=2, batch_size=128)
    res = superposition(model, x, ["1"], baseline=twin, sae=sae, top_k=(1, 4))
    for which, net in (("model", model), ("baseline", twin)):
        rows = HookedModel(net).run_with_cache(x, sites=["1"])[1].features("1")
        m = res.measures["1"][which]
        assert m["outside"] == pytest.approx(variance_outside(rows, (1, 4)))
        assert m["effective"].shape == (16,) and bool((m["effective"] >= 1).all())
    table = res.table()
    assert {r["model"] for r in table} == {"model", "baseline"} and "outside_top4" in table[0]
    res.plot()
    assert res.to_dict()["config"]["sites"] == ["1"]
