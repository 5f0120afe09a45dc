"""Feature universality: a planted permutation of latents is recovered by decoder cosine and by activation
correlation (Hungarian and max), and a random SAE stays at the chance baseline."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from interp_core.errors import InputError
from interp_core.features import SparseAutoencoder
from interp_core.features.matching import decoder_cosines, match_latents


def sae_from(W, seed=0):
    n, d = W.shape
    return SparseAutoencoder.from_weights(W, torch.zeros(n), W, torch.zeros(d), variant="relu")


def planted_pair(n=40, d=24, seed=0, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=g)
    perm = torch.randperm(n, generator=g)
    W_b = W[perm] + noise * torch.randn(n, d, generator=g)
    return sae_from(W), sae_from(W_b), perm, sae_from(torch.randn(n, d, generator=g))


@pytest.mark.parametrize("method", ["hungarian", "max"])
def test_decoder_matching_recovers_a_planted_permutation(method):
    a, b, perm, rand = planted_pair()
    res = match_latents(a, b, by="decoder", baseline=rand, method=method)
    inverse = torch.argsort(perm)  # latent i of A is latent inverse[i] of B
    assert res.match.units_b.tolist() == inverse[res.match.units_a].tolist()
    assert res.match.correlations.min() > 0.95
    s = res.summary()
    assert s["share_above"] == 1.0 and s["baseline_mean"] < 0.6 and s["baseline_share_above"] == 0.0
    res.plot()


def test_decoder_cosines_by_hand_and_hungarian_is_optimal():
    a, _, _, rand = planted_pair(n=8, d=5, noise=0.0)
    C = decoder_cosines(a, rand)
    Wa, Wr = a.module_.W_dec.double(), rand.module_.W_dec.double()
    want = (Wa / Wa.norm(dim=1, keepdim=True)) @ (Wr / Wr.norm(dim=1, keepdim=True)).T
    np.testing.assert_allclose(C, want.numpy(), atol=1e-6)  # decoder directions are float32
    ia, ib = linear_sum_assignment(-C)
    res = match_latents(a, rand, by="decoder")
    assert res.match.correlations.sum() == pytest.approx(C[ia, ib].sum())


def test_activation_matching_across_sites_of_different_width():
    rng = np.random.default_rng(0)
    Fa = np.maximum(rng.normal(size=(400, 12)), 0)
    perm = rng.permutation(12)
    Fb = np.concatenate([Fa[:, perm] * 2.0 + 0.01 * rng.normal(size=(400, 12)), rng.random((400, 5))], 1)
    res = match_latents(by="activation", latents_a=Fa, latents_b=torch.tensor(Fb),
                        baseline=np.maximum(rng.normal(size=(400, 17)), 0))
    assert res.match.units_b.tolist() == np.argsort(perm).tolist()
    assert res.summary()["mean"] > 0.99 and res.summary()["baseline_mean"] < 0.3
    assert res.to_dict()["config"]["n_latents"] == [12, 17]


def test_errors_name_the_argument():
    a, b, _, _ = planted_pair()
    other = sae_from(torch.randn(10, 7))
    with pytest.raises(InputError, match="by='activation'"):
        match_latents(a, other, by="decoder")
    with pytest.raises(InputError, match="latents_a, latents_b"):
        match_latents(a, b, by="activation")
    with pytest.raises(InputError, match="same inputs"):
        match_latents(by="activation", latents_a=np.ones((5, 2)), latents_b=np.ones((6, 2)))
    with pytest.raises(InputError, match="method"):
        match_latents(a, b, method="greedy")
    with pytest.raises(InputError, match="by"):
        match_latents(a, b, by="weights")
