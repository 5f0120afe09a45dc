"""TopK training with a rescaled decoder (sae-lens' ``rescale_acts_by_decoder_norm``; Anthropic, "Training
SAEs", April 2024): selection on pre-activation x decoder-row norm, reconstruction from the raw rows, the
norms folded into the encoder at the end (exact); and the exact block shortcut for row-wise top-k."""

import pytest
import torch

from interp_core.errors import InputError
from interp_core.features import SparseAutoencoder
from interp_core.features.sae import SAEModule, topk_indices
from interp_core.features.train import _Trainer

from .test_features_sae import mmcs, planted


def random_module(variant="topk", d=12, n=64, k=4, seed=0, **kw):
    m = SAEModule(d, n, variant, k=k, rescale=True, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        m.W_dec.mul_(torch.rand(n, 1, generator=g) * 3 + 0.05)  # rows of unequal norms
    return m


@pytest.mark.parametrize("shape,k", [((300, 1536), 32), ((50, 64), 4), ((40, 40), 4), ((7, 100), 3)])
def test_topk_indices_selects_the_same_values_as_torch_topk(shape, k):
    g = torch.Generator().manual_seed(shape[1])
    for x in (torch.randn(shape, generator=g), torch.randint(0, 5, shape, generator=g).float()):  # ties too
        got = x.gather(1, topk_indices(x, k)).sort(1).values
        want = x.topk(k, dim=1).values.sort(1).values
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert all(len(set(r.tolist())) == k for r in topk_indices(x, k))  # k distinct columns per row


def test_rescaled_training_forward_matches_its_definition():
    m = random_module()
    x = torch.randn(30, 12, generator=torch.Generator().manual_seed(3))
    out = m.train_forward(x)
    with torch.no_grad():
        raw = (x - m.b_dec) @ m.W_enc.T + m.b_enc
        norms = m.W_dec.norm(dim=1)
        top = (raw * norms).topk(4, dim=1).indices
        f_raw = torch.zeros_like(raw).scatter(1, top, raw.gather(1, top).clamp_min(0))
        want = f_raw @ m.W_dec + m.b_dec  # = sum_i relu(raw_i) ||W_dec_i|| * W_dec_i / ||W_dec_i||
        f = torch.zeros_like(raw).index_put((out["rows"], out["cols"]), out["vals"])
    torch.testing.assert_close(out["xhat"], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f, f_raw * norms, rtol=1e-5, atol=1e-5)  # latents in unit-direction units
    torch.testing.assert_close(m.latents(x), f_raw * norms, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_rescaled_sparse_decode_gives_the_dense_gradients(variant):
    grads = []
    for sparse in (True, False):
        m = random_module(variant, sparse_decode=sparse)
        x = torch.randn(32, 12, generator=torch.Generator().manual_seed(7))
        out = m.train_forward(x)
        (out["xhat"] - x).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-4)


def test_fold_is_exact_and_leaves_unit_decoder_rows():
    m = random_module()
    m.threshold.fill_(0.3)
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before_f, before_x, before_pre = m.latents(x), m(x), m.pre_acts(x)
        m.fold()
        torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(64))
        assert not m.rescale
        torch.testing.assert_close(m.pre_acts(x), before_pre, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.latents(x), before_f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m(x), before_x, rtol=1e-5, atol=1e-5)


def test_rescaled_auxk_matches_its_definition():
    X, _ = planted(n=256)
    sae = SparseAutoencoder(24, variant="topk", k=3, aux_k=4, aux_coef=0.5, dead_after=10)
    t = _Trainer("rows", sae, X)
    m = t.m
    assert m.rescale
    with torch.no_grad():
        m.W_dec.mul_(torch.linspace(0.2, 2.0, 24)[:, None])
    dead = torch.zeros(24, dtype=torch.bool)
    dead[[1, 5, 7, 11, 20]] = True
    t.since_fired[dead] = 10
    xn = m.normalize(X)
    parts, out = t.losses(xn)
    with torch.no_grad():
        raw = (xn - m.b_dec) @ m.W_enc.T + m.b_enc
        e = xn - out["xhat"]
        idx = (raw * m.W_dec.norm(dim=1)).masked_fill(~dead, -float("inf")).topk(4, dim=1).indices
        z = torch.zeros_like(raw).scatter(1, idx, raw.gather(1, idx).clamp_min(0))
        want = 0.5 * (e - z @ m.W_dec).pow(2).sum(1).mean() / 16
    assert float(parts["aux"].detach()) == pytest.approx(float(want), rel=1e-4)


def test_fit_folds_the_norms_and_recovers_the_planted_dictionary(tmp_path):
    X, D = planted()
    sae = SparseAutoencoder(32, variant="topk", k=3, epochs=30, batch_size=512, lr=1e-2).fit(X)
    m = sae.module_
    assert not m.rescale
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(32))
    assert mmcs(D, sae) > 0.85
    f = sae.encode(X)
    assert int((f != 0).sum(1).max()) <= 3
    again = SparseAutoencoder.load(sae.save(tmp_path / "sae.pt"))
    torch.testing.assert_close(again.encode(X), f)
    unit = SparseAutoencoder(32, variant="topk", k=3, epochs=30, batch_size=512, lr=1e-2, decoder="unit").fit(X)
    assert not unit.module_.rescale and mmcs(D, unit) > 0.85


def test_decoder_parameters_are_checked():
    X, _ = planted(n=100)
    with pytest.raises(InputError, match="decoder: must be"):
        SparseAutoencoder(8, decoder="free").build(X)
    with pytest.raises(InputError, match="decoder='rescaled' is for the TopK"):
        SparseAutoencoder(8, variant="relu", decoder="rescaled").build(X)
    with pytest.raises(InputError, match="decoder_init_norm"):
        SparseAutoencoder(8, decoder_init_norm=0).build(X)
    m = SparseAutoencoder(8, variant="jumprelu").build(X)
    assert not m.rescale
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(8))
