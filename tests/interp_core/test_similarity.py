"""Similarity measures against closed forms, independent references (numpy, scipy, scikit-learn) and their
published invariances; streaming accumulators against full-batch formulas; significance calibration."""

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial
import scipy.stats
import torch
from scipy.spatial.distance import pdist
from scipy.stats import ortho_group
from sklearn.cross_decomposition import CCA
from torch import nn

from interp_core import ActivationCache, ActivationStore, HookedModel
from interp_core.similarity import (
    LinearCKAAccumulator,
    MinibatchCKA,
    bootstrap_ci,
    canonical_correlations,
    cka,
    hsic,
    mutual_knn,
    permutation_test,
    procrustes,
    pwcca,
    rsa,
    similarity_matrix,
    svcca,
    unbiased_hsic,
)


def related(n=200, d1=12, d2=10, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d1)) * np.linspace(0.5, 2.0, d1)
    Y = X @ rng.normal(size=(d1, d2)) + noise * rng.normal(size=(n, d2))
    return X, Y


# ----------------------------------------------------------------------------- direct numpy formulations
def cka_numpy(X, Y):
    """Kornblith et al. 2019 eq. (1) with explicit centering matrix H."""
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    h = lambda A, B: np.trace(A @ H @ B @ H)  # noqa: E731
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def unbiased_hsic_kornblith(K, L):
    """Kornblith's reference code route: unbiased centering of the Gram (Szekely & Rizzo 2014 U-centering)."""
    n = len(K)

    def ucenter(G):
        G = G.copy()
        np.fill_diagonal(G, 0)
        means = G.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        G -= means[:, None]
        G -= means[None, :]
        np.fill_diagonal(G, 0)
        return G

    return np.sum(ucenter(K) * ucenter(L))


def rbf_cka_numpy(X, Y, frac):
    def gram(Z):
        D = scipy.spatial.distance.squareform(pdist(Z))
        sigma = frac * np.median(pdist(Z))
        return np.exp(-D ** 2 / (2 * sigma ** 2))
    return cka_numpy_gram(gram(X), gram(Y))


def cka_numpy_gram(K, L):
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    h = lambda A, B: np.trace(A @ H @ B @ H)  # noqa: E731
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


# ----------------------------------------------------------------------------- CKA
def test_linear_cka_matches_numpy_and_gram_equals_feature_form():
    X, Y = related(n=80, d1=6, d2=5)
    ref = cka_numpy(X, Y)
    assert cka(X, Y) == pytest.approx(ref, abs=1e-12)
    Xw, Yw = related(n=30, d1=60, d2=45, seed=3)  # d > N: the Gram route
    assert cka(Xw, Yw) == pytest.approx(cka_numpy(Xw, Yw), abs=1e-12)
    from interp_core.similarity.cka import _cka_from_grams, linear_cka_features, linear_gram
    assert linear_cka_features(X, Y) == pytest.approx(_cka_from_grams(linear_gram(X), linear_gram(Y), False),
                                                      abs=1e-12)


def test_cka_accepts_tensors_and_self_is_one():
    X, Y = related()
    assert cka(torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32)) == pytest.approx(
        cka(X, Y), abs=1e-6)
    for kernel in ("linear", "rbf"):
        for deb in (False, True):
            assert cka(X, X, kernel=kernel, debiased=deb) == pytest.approx(1.0, abs=1e-12)


def test_rbf_cka_matches_numpy_and_depends_on_bandwidth():
    X, Y = related(n=60)
    for frac in (0.5, 1.0):
        assert cka(X, Y, kernel="rbf", bandwidth=frac) == pytest.approx(rbf_cka_numpy(X, Y, frac), abs=1e-10)
    assert abs(cka(X, Y, kernel="rbf", bandwidth=0.2) - cka(X, Y, kernel="rbf", bandwidth=2.0)) > 1e-3


def test_rbf_cka_with_large_bandwidth_approaches_linear_cka():
    # exp(-d^2 / 2s^2) ~ 1 - d^2 / 2s^2 and the double-centered -d^2/2 is the linear Gram (Kornblith et al. 2019)
    X, Y = related(n=60)
    assert cka(X, Y, kernel="rbf", bandwidth=200.0) == pytest.approx(cka(X, Y), abs=1e-4)


def test_unbiased_hsic_matches_kornblith_ucentering_and_is_unbiased():
    X, Y = related(n=40)
    K, L = X @ X.T, Y @ Y.T
    n = len(K)
    # Kornblith's code returns the same estimator up to the factor n (n - 3)
    assert unbiased_hsic(K, L) == pytest.approx(unbiased_hsic_kornblith(K, L) / (n * (n - 3)), rel=1e-10)
    # unbiasedness on independent data: the estimator averages to the population HSIC = 0, the biased one does not
    rng = np.random.default_rng(1)
    u, b = [], []
    for _ in range(300):
        A, B = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
        u.append(unbiased_hsic(A @ A.T, B @ B.T))
        b.append(hsic(A @ A.T, B @ B.T))
    se = np.std(u) / np.sqrt(len(u))
    assert abs(np.mean(u)) < 3 * se
    assert np.mean(b) > 10 * se  # biased HSIC of independent data is positive in expectation


def test_debiased_cka_is_near_zero_for_independent_wide_representations():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(100, 500)), rng.normal(size=(100, 500))
    assert cka(X, Y) > 0.7  # the well-known bias of linear CKA when d >> N (Murphy et al. 2024)
    assert abs(cka(X, Y, debiased=True)) < 0.05


def test_cka_invariances():
    X, Y = related()
    rng = np.random.default_rng(5)
    Q = ortho_group.rvs(X.shape[1], random_state=7)
    A = rng.normal(size=(X.shape[1], X.shape[1]))  # invertible (a.s.), far from orthogonal
    base = {k: cka(X, Y, kernel=k) for k in ("linear", "rbf")}
    deb = cka(X, Y, debiased=True)
    for kernel in ("linear", "rbf"):
        assert cka(X @ Q, Y, kernel=kernel) == pytest.approx(base[kernel], abs=1e-10)
        assert cka(3.7 * X, Y, kernel=kernel) == pytest.approx(base[kernel], abs=1e-10)
        assert cka(X + 11.0, Y, kernel=kernel) == pytest.approx(base[kernel], abs=1e-8)
        assert abs(cka(X @ A, Y, kernel=kernel) - base[kernel]) > 1e-2
    assert cka(X @ Q * 2 + 1, Y, debiased=True) == pytest.approx(deb, abs=1e-8)
    # not invariant to an anisotropic scaling either
    stretch = np.ones(X.shape[1])
    stretch[0] = 20.0  # one direction dominates: CKA follows it
    assert abs(cka(X * stretch, Y) - base["linear"]) > 1e-2


# ----------------------------------------------------------------------------- streaming accumulators
def test_feature_space_accumulator_equals_full_batch_cka():
    X, Y = related(n=503, d1=9, d2=7, seed=4)
    for deb in (False, True):
        acc = LinearCKAAccumulator(debiased=deb)
        for s in range(0, len(X), 64):  # uneven last batch
            acc.update(X[s:s + 64] + 100.0, torch.tensor(Y[s:s + 64]))  # a large shift: numerics
        assert acc.n_ == 503
        assert acc.value() == pytest.approx(cka(X, Y, debiased=deb), abs=1e-10)


def test_accumulator_layer_matrix_equals_pairwise_cka():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 8))
    xs = [base @ rng.normal(size=(8, d)) + rng.normal(size=(300, d)) * s for d, s in ((4, 0.1), (6, 1.0), (3, 3.0))]
    ys = [base[:, :5] @ rng.normal(size=(5, d)) + rng.normal(size=(300, d)) for d in (5, 2)]
    for deb in (False, True):
        acc = LinearCKAAccumulator(debiased=deb)
        for s in range(0, 300, 50):
            acc.update([x[s:s + 50] for x in xs], [y[s:s + 50] for y in ys])
        ref = np.array([[cka(x, y, debiased=deb) for y in ys] for x in xs])
        np.testing.assert_allclose(acc.matrix(), ref, atol=1e-10)


def test_minibatch_cka_equals_mean_of_per_batch_unbiased_hsic():
    X, Y = related(n=400, seed=6)
    mb = MinibatchCKA()
    kxy = kxx = kyy = 0.0
    for s in range(0, 400, 40):
        a, b = X[s:s + 40], Y[s:s + 40]
        mb.update(a, b)
        kxy += unbiased_hsic_kornblith(a @ a.T, b @ b.T)
        kxx += unbiased_hsic_kornblith(a @ a.T, a @ a.T)
        kyy += unbiased_hsic_kornblith(b @ b.T, b @ b.T)
    assert mb.value() == pytest.approx(kxy / np.sqrt(kxx * kyy), abs=1e-10)  # Nguyen et al. 2021 eq. (3)


def test_minibatch_debiased_cka_agrees_with_full_batch_debiased_cka_and_biased_does_not():
    # Nguyen et al. 2021: with unbiased HSIC the minibatch estimate does not depend on the batch size
    rng = np.random.default_rng(8)
    n, d, b = 5000, 64, 100
    Z = rng.normal(size=(n, 4))
    X = np.hstack([Z, rng.normal(size=(n, d - 4))])
    Y = np.hstack([Z @ rng.normal(size=(4, 4)), rng.normal(size=(n, d - 4))])
    full = LinearCKAAccumulator(debiased=True).update(X, Y).value()  # = cka(X, Y, debiased=True), tested above
    for deb in (True, False):
        mb = MinibatchCKA(debiased=deb)
        for s in range(0, n, b):
            mb.update(X[s:s + b], Y[s:s + b])
        if deb:
            assert mb.value() == pytest.approx(full, abs=0.02)
        else:
            assert mb.value() - full > 0.1  # biased per-batch HSIC inflates small-batch CKA


# ----------------------------------------------------------------------------- CCA family
def test_canonical_correlations_match_numpy_eigen_and_sklearn():
    X, Y = related(n=300, d1=5, d2=4, noise=2.0)
    rho = canonical_correlations(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Sxx, Syy, Sxy = Xc.T @ Xc, Yc.T @ Yc, Xc.T @ Yc
    M = np.linalg.solve(Sxx, Sxy) @ np.linalg.solve(Syy, Sxy.T)
    eig = np.sort(np.sqrt(np.clip(np.linalg.eigvals(M).real, 0, None)))[::-1][:4]
    np.testing.assert_allclose(rho, eig, atol=1e-8)
    cca = CCA(n_components=1, scale=False, max_iter=5000, tol=1e-12).fit(X, Y)
    u, v = cca.transform(X, Y)
    assert rho[0] == pytest.approx(np.corrcoef(u[:, 0], v[:, 0])[0, 1], abs=1e-5)


def test_cca_measures_invariant_to_invertible_linear_maps_not_to_nonlinear():
    X, Y = related(n=300, d1=6, d2=5, noise=2.0)
    rng = np.random.default_rng(9)
    A, B = rng.normal(size=(6, 6)), rng.normal(size=(5, 5))
    # mean canonical correlation (SVCCA without truncation) is invariant to invertible maps on both sides
    s = svcca(X, Y, keep=1.0)
    assert svcca(X @ A * 5 - 2, Y @ B + 1, keep=1.0) == pytest.approx(s, abs=1e-8)
    assert abs(svcca(np.tanh(X), Y, keep=1.0) - s) > 1e-3
    # PWCCA: invariant to invertible maps of Y and to isotropic scaling / translation of X; its weights
    # sum |<h_i, x_j>| over X's own units, so a rotation of X changes them (Morcos et al. 2018, eq. 1)
    p = pwcca(X, Y)
    assert pwcca(X, Y @ B - 4) == pytest.approx(p, abs=1e-8)
    assert pwcca(X * 4 + 3, Y) == pytest.approx(p, abs=1e-8)
    assert abs(pwcca(X @ ortho_group.rvs(6, random_state=1), Y) - p) > 1e-3
    assert pwcca(X, X @ A) == pytest.approx(1.0, abs=1e-10)


def test_svcca_keeps_99_percent_variance():
    rng = np.random.default_rng(3)
    signal = rng.normal(size=(500, 3))
    X = np.hstack([signal * 10, rng.normal(size=(500, 5)) * 0.01])  # 3 directions hold > 99.99% of variance
    Y = np.hstack([signal @ rng.normal(size=(3, 3)), rng.normal(size=(500, 2)) * 0.01])
    assert svcca(X, Y) == pytest.approx(1.0, abs=1e-6)  # the noise directions are truncated away
    rho = canonical_correlations(X, Y)  # 5 correlations: 3 exactly 1, 2 between unrelated noise
    assert np.all(rho[:3] > 1 - 1e-9) and np.all(rho[3:] < 0.3)
    assert svcca(X, Y, keep=1.0) == pytest.approx(rho.mean(), abs=1e-12)
    # PWCCA downweights the low-variance directions: close to 1 as well
    assert pwcca(X, Y) > 0.99


# ----------------------------------------------------------------------------- Procrustes, RSA, mutual k-NN
def test_procrustes_matches_scipy():
    X, Y = related(n=100, d1=6, d2=6)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    Xn, Yn = Xc / np.linalg.norm(Xc), Yc / np.linalg.norm(Yc)
    R, _ = scipy.linalg.orthogonal_procrustes(Yn, Xn)
    assert procrustes(X, Y) == pytest.approx(np.linalg.norm(Xn - Yn @ R) ** 2, abs=1e-10)
    # scipy.spatial.procrustes also fits a scale: disparity = 1 - nuc^2, nuc = 1 - d / 2
    _, _, disparity = scipy.spatial.procrustes(X, Y)
    assert disparity == pytest.approx(1 - (1 - procrustes(X, Y) / 2) ** 2, abs=1e-10)


def test_procrustes_invariances():
    X, Y = related()
    d = procrustes(X, Y)
    Q = ortho_group.rvs(X.shape[1], random_state=2)
    assert procrustes(X @ Q * 3 + 5, Y) == pytest.approx(d, abs=1e-10)
    assert procrustes(X, X @ Q) == pytest.approx(0.0, abs=1e-10)
    assert procrustes(X, X @ np.random.default_rng(0).normal(size=(12, 12))) > 0.05


def test_rsa_matches_scipy_and_invariances():
    X, Y = related(n=50)
    for metric in ("correlation", "euclidean", "cosine"):
        a, b = pdist(X, metric), pdist(Y, metric)
        assert rsa(X, Y, metric=metric) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-10)
        assert rsa(X, Y, metric=metric, compare="pearson") == pytest.approx(scipy.stats.pearsonr(a, b).statistic,
                                                                            abs=1e-10)
    Q = ortho_group.rvs(12, random_state=4)
    base = rsa(X, Y, metric="euclidean")
    assert rsa(X @ Q * 2 + 7, Y, metric="euclidean") == pytest.approx(base, abs=1e-10)
    assert abs(rsa(X @ np.random.default_rng(1).normal(size=(12, 12)), Y, metric="euclidean") - base) > 1e-3
    assert rsa(X, X) == pytest.approx(1.0)


def test_mutual_knn_closed_forms():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 16))
    Q = ortho_group.rvs(16, random_state=3)
    assert mutual_knn(X, X @ Q * 3, k=10) == pytest.approx(1.0)
    assert mutual_knn(X, X + 0.2 * rng.normal(size=X.shape), k=10) < 1.0
    # independent representations: each row's overlap is hypergeometric with mean k * k / (N - 1), so / k
    vals = [mutual_knn(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)), k=10) for _ in range(5)]
    assert np.mean(vals) == pytest.approx(10 / 399, abs=0.01)
    # brute force reference for one case
    Y = X[:, :8] + 0.5 * rng.normal(size=(400, 8))

    def knn(Z):
        Zn = Z / np.linalg.norm(Z, axis=1, keepdims=True)
        S = Zn @ Zn.T
        np.fill_diagonal(S, -np.inf)
        return [set(np.argsort(-r)[:10]) for r in S]
    ref = np.mean([len(a & b) / 10 for a, b in zip(knn(X), knn(Y))])
    assert mutual_knn(X, Y, k=10) == pytest.approx(ref)


# ----------------------------------------------------------------------------- significance
def test_permutation_p_small_for_related_and_uniform_for_independent():
    X, Y = related(n=60, noise=3.0)
    assert permutation_test("linear_cka", X, Y, n=199).p_value == pytest.approx(1 / 200)
    rng = np.random.default_rng(0)
    ps = [permutation_test("linear_cka", rng.normal(size=(30, 4)), rng.normal(size=(30, 4)), n=49,
                           seed=i).p_value for i in range(200)]
    # under the null p is (discrete) uniform on {1/50, ..., 1}: mean 0.51, P(p <= 0.1) = 0.1
    assert np.mean(ps) == pytest.approx(0.51, abs=0.06)
    assert scipy.stats.binomtest(int(np.sum(np.array(ps) <= 0.1)), 200, 0.1).pvalue > 0.001
    assert scipy.stats.kstest(ps, scipy.stats.uniform(0, 1).cdf).pvalue > 0.001


def test_permutation_direction_for_distances():
    X, Y = related(n=60, noise=1.0)
    r = permutation_test("procrustes", X, Y, n=99)
    assert r.alternative == "less" and r.p_value == pytest.approx(0.01)


def test_bootstrap_ci_matches_fisher_interval_for_a_correlation():
    rng = np.random.default_rng(0)
    n, rho = 400, 0.6
    x = rng.normal(size=n)
    y = rho * x + np.sqrt(1 - rho ** 2) * rng.normal(size=n)
    corr = lambda a, b: float(np.corrcoef(a[:, 0], b[:, 0])[0, 1])  # noqa: E731
    res = bootstrap_ci(corr, x, y, n=2000, level=0.95)
    r = corr(x[:, None], y[:, None])
    z, se = np.arctanh(r), 1 / np.sqrt(n - 3)
    lo, hi = np.tanh(z - 1.96 * se), np.tanh(z + 1.96 * se)
    assert res.low == pytest.approx(lo, abs=0.02) and res.high == pytest.approx(hi, abs=0.02)
    assert res.low < res.statistic < res.high


# ----------------------------------------------------------------------------- layer x layer from models
def make_mlp(seed, width=16, depth=4):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def test_similarity_matrix_from_models_equals_cka_on_cached_features(tmp_path):
    a, b = HookedModel(make_mlp(0)), HookedModel(make_mlp(1))
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(50, 6, generator=g) for _ in range(6)]
    sa, sb = ["1", "3", "5"], ["1", "5", "7"]
    res = similarity_matrix(a, b, data, sa, sb)
    _, ca = a.run_with_cache(torch.cat(data), sites=sa)
    _, cb = b.run_with_cache(torch.cat(data), sites=sb)
    ref = np.array([[cka(ca.features(x), cb.features(y)) for y in sb] for x in sa])
    np.testing.assert_allclose(res.matrix, ref, atol=1e-6)
    assert res.n_rows == 300 and res["3", "5"] == pytest.approx(ref[1, 1], abs=1e-6)
    # precomputed sources: a cache, a store, a dict; and a non-streaming measure
    store = ActivationStore.collect(b, data, sb, path=tmp_path / "s", progress=False)
    for src in (cb, store, {s: cb.features(s).numpy() for s in sb}):
        np.testing.assert_allclose(similarity_matrix(ca, src, sites_a=sa, sites_b=sb).matrix, ref, atol=1e-6)
    m = similarity_matrix(a, b, data, sa, sb, measure="procrustes")
    assert m.matrix[2, 0] == pytest.approx(procrustes(ca.features("5"), cb.features("1")), abs=1e-6)
    d = similarity_matrix(a, b, data, sa, sb, measure="debiased_cka")
    assert d.matrix[0, 2] == pytest.approx(cka(ca.features("1"), cb.features("7"), debiased=True), abs=1e-6)
    fig = res.plot()
    assert len(fig.axes) == 2
    assert res.to_dict()["matrix"][0][0] == pytest.approx(ref[0, 0], abs=1e-6)


def test_similarity_matrix_of_a_model_with_itself_has_unit_diagonal_and_pools_positions(cnn):
    hm = HookedModel(cnn)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(20, 3, 8, 8, generator=g), torch.zeros(20, dtype=torch.long)) for _ in range(3)]
    sites = ["stem", "block", "head"]
    res = similarity_matrix(hm, None, data, sites, sites, pool="mean")
    np.testing.assert_allclose(np.diag(res.matrix), 1.0, atol=1e-8)
    np.testing.assert_allclose(res.matrix, res.matrix.T, atol=1e-8)
    with pytest.raises(ValueError, match="different numbers of rows"):
        similarity_matrix(hm, None, data, sites, sites, pool=None)
    assert isinstance(ActivationCache, type)


def test_helpful_errors():
    X, Y = related()
    with pytest.raises(ValueError, match="same inputs"):
        cka(X, Y[:-1])
    with pytest.raises(ValueError, match="unknown similarity measure 'linear_cak'.*closest"):
        permutation_test("linear_cak", X, Y)
    with pytest.raises(ValueError, match="constant"):
        cka(X, np.ones_like(Y))
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        cka(np.zeros((3, 2, 2)), Y[:3])


def test_mutual_knn_euclidean_is_translation_invariant_cosine_is_not():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 8))
    Y = X @ rng.normal(size=(8, 8)) + rng.normal(size=(300, 8))
    base = mutual_knn(X, Y, k=5, metric="euclidean")
    assert mutual_knn(X + 50, Y, k=5, metric="euclidean") == pytest.approx(base)
    assert abs(mutual_knn(X + 5, Y, k=5) - mutual_knn(X, Y, k=5)) > 0.05


def test_similarity_matrix_minibatch_measure_matches_accumulator():
    rng = np.random.default_rng(0)
    feats_a = {"x": rng.normal(size=(800, 5)), "y": rng.normal(size=(800, 3))}
    feats_b = {"z": feats_a["x"] @ rng.normal(size=(5, 4)) + rng.normal(size=(800, 4))}
    res = similarity_matrix(feats_a, feats_b, measure="minibatch_cka")
    mb = MinibatchCKA().update([feats_a["x"], feats_a["y"]], [feats_b["z"]])  # one chunk of 800 rows
    np.testing.assert_allclose(res.matrix, mb.matrix(), atol=1e-10)
    assert res.sites_a == ["x", "y"] and res.matrix.shape == (2, 1)


def test_permutation_test_is_exact_for_few_rows_against_brute_force():
    # N = 5 rows: 120 permutations <= n, so scipy enumerates them all; count by hand with itertools
    import itertools

    X, Y = related(n=5, d1=3, d2=2, noise=0.5, seed=11)
    obs = cka(X, Y)
    null = [cka(X, Y[list(p)]) for p in itertools.permutations(range(5))]
    p_exact = np.mean(np.array(null) >= obs - 1e-12)
    res = permutation_test("linear_cka", X, Y, n=1000)
    assert res.p_value == pytest.approx(p_exact, abs=1e-12)
    assert len(res.null) == 120 and res.statistic == pytest.approx(obs)


def test_bootstrap_methods_and_argument_errors():
    rng = np.random.default_rng(1)
    n, rho = 300, 0.5
    x = rng.normal(size=n)
    y = rho * x + np.sqrt(1 - rho ** 2) * rng.normal(size=n)
    corr = lambda a, b: float(np.corrcoef(a[:, 0], b[:, 0])[0, 1])  # noqa: E731
    z, se = np.arctanh(corr(x[:, None], y[:, None])), 1 / np.sqrt(n - 3)
    for method in ("percentile", "BCa"):
        res = bootstrap_ci(corr, x, y, n=1000, method=method)
        assert res.low == pytest.approx(np.tanh(z - 1.96 * se), abs=0.03), method
        assert res.high == pytest.approx(np.tanh(z + 1.96 * se), abs=0.03), method
        assert res.config["method"] == method and len(res.plot().axes) == 1
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(corr, x, y, method="studentized")
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(corr, x, y, level=95)
    with pytest.raises(ValueError, match="n: "):
        permutation_test("linear_cka", x, y, n=0)


def test_similarity_matrix_warns_and_gives_nan_for_a_constant_site():
    from interp_core.errors import InterpWarning

    rng = np.random.default_rng(0)
    feats = {"live": rng.normal(size=(50, 4)), "dead": np.zeros((50, 3))}
    for measure in ("linear_cka", "minibatch_cka"):
        with pytest.warns(InterpWarning, match=r"constant.*\['dead'\]"):
            res = similarity_matrix(feats, feats, measure=measure)
        assert np.isnan(res["dead", "live"]) and res["live", "live"] == pytest.approx(1.0)
