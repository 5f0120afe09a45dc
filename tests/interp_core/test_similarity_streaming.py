"""Streaming linear CKA at lower cost: float32 products on 4,096-row blocks accumulated in float64 agree with
all-float64 products and with closed-form CKA; accumulators over disjoint rows combine exactly (merge, and the
torch.distributed all_reduce on a one-process group)."""

import numpy as np
import pytest
import torch.distributed as dist

from interp_core.errors import InputError, InputTypeError
from interp_core.similarity import LinearCKAAccumulator, MinibatchCKA, similarity_matrix


def layers(n: int, seed: int = 0):
    """Three layers of A and two of B sharing a 6-d signal, with large offsets and unequal scales (the hard
    case for float32: the products are taken after centring on the first block's mean)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 6))
    xs = [(z @ rng.normal(size=(6, d)) + s * rng.normal(size=(n, d))) * scale + off
          for d, s, scale, off in ((64, 0.3, 1.0, 40.0), (48, 1.0, 20.0, -3.0), (32, 3.0, 0.05, 0.5))]
    ys = [z[:, :4] @ rng.normal(size=(4, d)) + rng.normal(size=(n, d)) + off for d, off in ((40, 100.0), (24, 0.0))]
    return [x.astype(np.float32) for x in xs], [y.astype(np.float32) for y in ys]


def closed_form_linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Kornblith et al. 2019, eq. (6) in float64: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)."""
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return float(np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)))


def stream(acc, xs, ys, batch=500):
    for s in range(0, len(xs[0]), batch):
        acc.update([x[s:s + batch] for x in xs], [y[s:s + batch] for y in ys])
    return acc


@pytest.mark.parametrize("debiased", [False, True])
def test_float32_blocks_agree_with_float64_products_to_1e6(debiased):
    xs, ys = layers(12_500)  # two blocks of 4,500 rows (>= 4,096) in float32, the last 3,500 in float64
    fast = stream(LinearCKAAccumulator(debiased=debiased), xs, ys)
    exact = stream(LinearCKAAccumulator(debiased=debiased, product_dtype=None), xs, ys)
    M, E = fast.matrix(), exact.matrix()
    assert fast.n_ == exact.n_ == 12_500
    assert np.abs(M - E).max() < 1e-6
    assert np.abs(M - E).max() > 0  # the float32 path really ran
    if not debiased:
        ref = np.array([[closed_form_linear_cka(x, y) for y in ys] for x in xs])
        np.testing.assert_allclose(E, ref, atol=1e-10)
        np.testing.assert_allclose(M, ref, atol=1e-6)
    # debiased: the float64 path equals cka(..., debiased=True) (tests/interp_core/test_similarity.py); an
    # N x N reference at 12,500 rows would cost minutes


def test_rows_under_one_block_use_the_accumulation_dtype():
    xs, ys = layers(900, seed=1)
    fast = stream(LinearCKAAccumulator(), xs, ys, batch=128)
    ref = np.array([[closed_form_linear_cka(x, y) for y in ys] for x in xs])
    np.testing.assert_allclose(fast.matrix(), ref, atol=1e-10)
    # asking for the matrix mid-stream and continuing gives the same as not asking
    a = stream(LinearCKAAccumulator(block_rows=256), [x[:500] for x in xs], [y[:500] for y in ys], batch=100)
    a.matrix()
    stream(a, [x[500:] for x in xs], [y[500:] for y in ys], batch=100)
    np.testing.assert_allclose(a.matrix(), ref, atol=1e-6)


@pytest.mark.parametrize("debiased", [False, True])
def test_merge_of_disjoint_rows_equals_one_accumulator(debiased):
    xs, ys = layers(1500, seed=2)
    one = stream(LinearCKAAccumulator(debiased=debiased, product_dtype=None), xs, ys, batch=100).matrix()
    # three parts, each centred on its own first rows (very different means), one of them empty
    parts = [LinearCKAAccumulator(debiased=debiased, product_dtype=None) for _ in range(4)]
    order = np.random.default_rng(0).permutation(1500)
    for p, idx in zip(parts, (order[:200], order[200:1100], order[1100:])):
        stream(p, [x[np.sort(idx)] for x in xs], [y[np.sort(idx)] for y in ys], batch=150)
    merged = parts[3]  # starts empty
    for p in parts[:3]:
        merged.merge(p)
    assert merged.n_ == 1500
    np.testing.assert_allclose(merged.matrix(), one, atol=1e-12)
    with pytest.raises(InputTypeError, match="debiased"):
        merged.merge(LinearCKAAccumulator(debiased=not debiased))
    with pytest.raises(InputError, match="feature sizes"):
        merged.merge(LinearCKAAccumulator(debiased=debiased).update(np.ones((5, 3)), np.ones((5, 2))))


def test_bad_arguments_are_refused():
    with pytest.raises(InputError, match="block_rows"):
        LinearCKAAccumulator(block_rows=0)
    acc = LinearCKAAccumulator().update(np.random.rand(10, 4), np.random.rand(10, 3))
    with pytest.raises(InputError, match="feature sizes changed"):
        acc.update(np.random.rand(10, 5), np.random.rand(10, 3))  # still pending, not yet multiplied
    with pytest.raises(InputError, match="NaN"):
        acc.update(np.full((10, 4), np.nan), np.random.rand(10, 3))


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_all_reduce_is_a_no_op_without_torch_distributed():
    xs, ys = layers(600, seed=3)
    acc = stream(LinearCKAAccumulator(debiased=True), xs, ys)
    before = acc.matrix()
    assert not dist.is_initialized()
    np.testing.assert_array_equal(acc.all_reduce().matrix(), before)
    mb = MinibatchCKA().update(xs[0][:100], ys[0][:100])
    assert mb.all_reduce().value() == mb.value()


@pytest.mark.parametrize("debiased", [False, True])
def test_all_reduce_on_one_rank_keeps_the_values(one_process_group, debiased):
    """One rank: the collective re-centres on the common shift and sums over itself; values unchanged. (The
    2-process equality with one process over all rows is in tests/interp_core/test_distributed*.py.)"""
    xs, ys = layers(5000, seed=4)
    acc = stream(LinearCKAAccumulator(debiased=debiased, product_dtype=None), xs, ys)
    ref = stream(LinearCKAAccumulator(debiased=debiased, product_dtype=None), xs, ys).matrix()
    assert acc.all_reduce() is acc and acc.n_ == 5000
    np.testing.assert_allclose(acc.matrix(), ref, atol=1e-12)
    empty = LinearCKAAccumulator(debiased=debiased).all_reduce()  # no rows anywhere: stays empty
    with pytest.raises(InputError, match="at least"):
        empty.matrix()
    mb = MinibatchCKA()
    for s in range(0, 400, 100):
        mb.update(xs[0][s:s + 100], ys[0][s:s + 100])
    v = mb.value()
    assert mb.all_reduce().value() == pytest.approx(v, abs=1e-12) and mb.n_batches_ == 4


def test_similarity_matrix_all_reduce_on_one_rank_and_its_errors(one_process_group):
    xs, ys = layers(700, seed=5)
    a = {f"a{i}": x for i, x in enumerate(xs)}
    b = {f"b{j}": y for j, y in enumerate(ys)}
    plain = similarity_matrix(a, b, measure="linear_cka", progress=False)
    reduced = similarity_matrix(a, b, measure="linear_cka", progress=False, all_reduce=True)
    np.testing.assert_allclose(reduced.matrix, plain.matrix, atol=1e-12)
    assert reduced.n_rows == plain.n_rows == 700 and reduced.config["all_reduce"]
    ref = np.array([[closed_form_linear_cka(x, y) for y in ys] for x in xs])
    np.testing.assert_allclose(reduced.matrix, ref, atol=1e-10)
    with pytest.raises(InputError, match="all_reduce"):
        similarity_matrix(a, b, measure="rsa", progress=False, all_reduce=True)
