"""Documentation tests: every invariance or property the similarity table claims is checked against the code.

The table printed in ``interp_core.similarity``'s docstring is parsed and must equal the machine-readable
``PROPERTIES``; then every cell of every row is tested both ways (an invariance marked ``yes`` holds, one marked
``no`` fails, ``Y only`` holds for ``Y`` and fails for ``X``), as are the range and the self-similarity.
"""

import numpy as np
import pytest
import scipy.spatial
from scipy.spatial.distance import pdist
from scipy.stats import ortho_group

import interp_core.similarity as sim
from interp_core.similarity import cka
from interp_core.similarity.properties import PROPERTIES, TRANSFORMS, parse_table, render_table

N, D1, D2 = 80, 6, 5
SAME, CHANGED = 1e-7, 1e-3  # "invariant": equal to rounding; "not invariant": moves by more than this


def pair(seed=0):
    """X with a decaying variance spectrum (so SVCCA's 99% truncation drops directions) and a related Y."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D1)) * np.array([3.0, 2.0, 1.0, 0.3, 0.1, 0.05])
    Y = np.tanh(X @ rng.normal(size=(D1, D2))) + 0.3 * rng.normal(size=(N, D2))
    return X, Y


def transform(name, Z, seed=1):
    rng = np.random.default_rng(seed)
    d = Z.shape[1]
    if name == "orthogonal":
        return Z @ ortho_group.rvs(d, random_state=seed)
    if name == "isotropic scaling":
        return 3.7 * Z
    if name == "invertible linear":
        A = rng.normal(size=(d, d))
        assert np.linalg.cond(A) < 1e4
        return Z @ A
    if name == "translation":
        return Z + rng.uniform(2.0, 8.0, size=d) * rng.choice([-1, 1], size=d)
    raise AssertionError(name)


def test_docstring_table_is_the_machine_readable_table():
    doc_rows = parse_table(sim.__doc__)
    assert doc_rows == [p.row() for p in PROPERTIES.values()]
    assert render_table() in sim.__doc__  # layout too, so a hand edit of either side fails here


def test_parse_table_reads_cells_with_spaces():
    rows = parse_table(render_table())
    assert rows[0][0] == "cka" and ("pwcca", "Y only") == (rows[6][0], rows[6][3])


@pytest.mark.parametrize("name", list(PROPERTIES))
def test_every_invariance_claim_holds_both_ways(name):
    p = PROPERTIES[name]
    X, Y = pair()
    base = p.call(X, Y)
    for t in TRANSFORMS:
        claim = p.claim(t)
        assert claim in ("yes", "no", "Y only"), (name, t, claim)
        dx = abs(p.call(transform(t, X), Y) - base)
        dy = abs(p.call(X, transform(t, Y)) - base)
        if claim == "yes":
            assert dx < SAME and dy < SAME, f"{name}: claimed invariant to {t}, moved by {dx:.2g} / {dy:.2g}"
        elif claim == "no":
            assert dx > CHANGED and dy > CHANGED, f"{name}: claimed NOT invariant to {t}, moved by {dx:.2g} / {dy:.2g}"
        else:
            assert dy < SAME, f"{name}: claimed invariant to {t} of Y, moved by {dy:.2g}"
            assert dx > CHANGED, f"{name}: claimed NOT invariant to {t} of X, moved by {dx:.2g}"
    # invariance to every invertible linear map implies invariance to its special cases (consistency of the row)
    if p.invertible_linear == "yes":
        assert p.orthogonal == p.isotropic_scaling == "yes"
    if p.invertible_linear == "Y only":
        assert p.orthogonal in ("yes", "Y only")


@pytest.mark.parametrize("name", list(PROPERTIES))
def test_range_and_self_value(name):
    p = PROPERTIES[name]
    rng = np.random.default_rng(3)
    X, Y = pair(4)
    top = p.high if p.kind == "similarity" else p.low
    assert p.call(X, X) == pytest.approx(top, abs=1e-9)
    cases = [pair(s) for s in range(3)] + [(rng.normal(size=(N, D1)), rng.normal(size=(N, D2))),
                                           (X, -X), (X, X + 0.01 * rng.normal(size=X.shape))]
    for A, B in cases:
        v = p.call(A, B)
        assert p.low - 1e-12 <= v <= p.high + 1e-12, (name, v)


def test_debiased_cka_can_be_negative_and_biased_cannot():
    rng = np.random.default_rng(0)
    vals = [cka(rng.normal(size=(20, 3)), rng.normal(size=(20, 3)), debiased=True) for _ in range(40)]
    assert min(vals) < 0  # why its documented range is [-1, 1], not [0, 1]


def kornblith_gram_rbf(x, threshold=1.0):
    """Verbatim from google-research/representation_similarity (Kornblith et al. 2019), demo notebook."""
    dot_products = x.dot(x.T)
    sq_norms = np.diag(dot_products)
    sq_distances = -2 * dot_products + sq_norms[:, None] + sq_norms[None, :]
    sq_median_distance = np.median(sq_distances)
    return np.exp(-sq_distances / (2 * threshold ** 2 * sq_median_distance))


def centered_cka(K, L):
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    h = lambda A, B: np.trace(A @ H @ B @ H)  # noqa: E731
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def test_rbf_bandwidth_conventions_by_name():
    X, Y = pair(5)
    for frac in (0.5, 1.0):
        ref_all = centered_cka(kornblith_gram_rbf(X, frac), kornblith_gram_rbf(Y, frac))
        assert cka(X, Y, kernel="rbf", bandwidth=frac, median="all") == pytest.approx(ref_all, abs=1e-10)

        def gram_pairs(Z):
            sigma = frac * np.median(pdist(Z))
            return np.exp(-scipy.spatial.distance.squareform(pdist(Z, "sqeuclidean")) / (2 * sigma ** 2))
        ref_pairs = centered_cka(gram_pairs(X), gram_pairs(Y))
        assert cka(X, Y, kernel="rbf", bandwidth=frac) == pytest.approx(ref_pairs, abs=1e-10)  # the default
        assert cka(X, Y, kernel="rbf", bandwidth=frac, median="pairs") == pytest.approx(ref_pairs, abs=1e-10)
    # the two conventions are different numbers (the diagonal zeros shrink the "all" median, most for small N)
    assert abs(cka(X[:12], Y[:12], kernel="rbf", median="all") - cka(X[:12], Y[:12], kernel="rbf")) > 1e-3
    with pytest.raises(ValueError, match="median: must be one of"):
        cka(X, Y, kernel="rbf", median="mean")
