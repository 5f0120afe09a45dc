"""Sparse autoencoders: forward passes against their definitions, sparse vs dense gradients, planted
dictionaries (Sharkey et al. 2022) for every variant, resumable training, any site of any axes."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from interp_core import ActivationCache, ActivationStore, HookedModel
from interp_core.errors import InputError, InputTypeError, NotFittedError, SiteError
from interp_core.features import SparseAutoencoder, evaluate_sae, fit_saes, geometric_median, train_saes
from interp_core.features.sae import SAEModule, _JumpReLU, _Step
from interp_core.features.train import _Trainer

from ..conftest import make_cnn, make_policy

VARIANTS = ["relu", "topk", "batchtopk", "jumprelu"]


def planted(n_true=32, d=16, n=4000, p=3, seed=0):
    """Rows made of sparse non-negative combinations (about ``p`` per row) of ``n_true`` unit directions."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_true, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    on = (torch.rand(n, n_true, generator=g) < p / n_true).float()
    coef = on * (0.5 + torch.rand(n, n_true, generator=g))
    return coef @ D, D


def mmcs(D, sae):
    """Mean over true directions of the max cosine similarity with a learned decoder direction."""
    return float((D @ sae.decoder_directions_.T).max(1).values.mean())


def random_sae(variant, d=6, n=10, k=3, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return SparseAutoencoder.from_weights(torch.randn(n, d, generator=g), torch.randn(n, generator=g) * 0.1,
                                          torch.randn(n, d, generator=g), torch.randn(d, generator=g) * 0.1,
                                          variant=variant, k=k, **kw)


# ---------------------------------------------------------------------------------------------- definitions
def test_topk_forward_matches_definition():
    sae = random_sae("topk", k=3)
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(1))
    W_enc, b_enc = sae.module_.W_enc.numpy(), sae.module_.b_enc.numpy()
    W_dec, b_dec = sae.module_.W_dec.numpy(), sae.module_.b_dec.numpy()
    pre = (x.numpy() - b_dec) @ W_enc.T + b_enc
    want = np.zeros_like(pre)
    for r in range(len(pre)):
        top = np.argsort(-pre[r])[:3]
        want[r, top] = np.maximum(pre[r, top], 0)
    np.testing.assert_allclose(sae.encode(x).numpy(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sae.decode(torch.as_tensor(want)).numpy(), want @ W_dec + b_dec, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(sae(x).numpy(), want @ W_dec + b_dec, rtol=1e-5, atol=1e-5)


def test_batchtopk_training_selection_and_inference_threshold():
    sae = random_sae("batchtopk", k=2, threshold=0.7)
    m = sae.module_
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(2))
    pre = ((x - m.b_dec) @ m.W_enc.T + m.b_enc).detach().numpy()
    # training: the k * batch largest ReLU'd pre-activations of the whole batch
    rows, cols, offsets, _ = m.select(x)
    flat = np.maximum(pre, 0).reshape(-1)
    want = {divmod(int(i), pre.shape[1]) for i in np.argsort(-flat)[:16] if flat[i] > 0}
    assert set(zip(rows.tolist(), cols.tolist())) == want
    assert offsets.tolist() == [sum(r < b for r, _ in want) for b in range(8)]
    # the shortcut through each row's 4k largest is exact (rows with many large entries fall back)
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        act = torch.relu(torch.randn(16, 64, generator=g) + torch.randn(16, 1, generator=g) * 2 * (seed % 2))
        if seed % 3 == 0:
            act[3] += 10.0  # one row holding more than 4k of the batch's top entries
        flat = act.reshape(-1)
        top = flat.topk(32)
        want = top.indices[top.values > 0].sort().values
        assert torch.equal(m._batch_top(act), want)
    # inference: pre where pre > threshold
    np.testing.assert_allclose(sae.encode(x).numpy(), pre * (pre > 0.7), rtol=1e-5, atol=1e-6)
    assert sae.threshold_ == pytest.approx(0.7)


def test_jumprelu_forward_and_straight_through_gradients():
    eps = 0.3
    sae = random_sae("jumprelu", threshold=torch.full((10,), 0.4), bandwidth=eps)
    m = sae.module_
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(3))
    pre = ((x - m.b_dec) @ m.W_enc.T + m.b_enc).detach().numpy()
    theta = 0.4
    np.testing.assert_allclose(sae.encode(x).numpy(), pre * (pre > theta), rtol=1e-5, atol=1e-6)
    # d/dlog(theta) of sum(c * JumpReLU(pre)) + sum(H(pre - theta)) by the paper's STE formulas
    c = torch.randn(50, 10, generator=torch.Generator().manual_seed(4))
    m.log_threshold.requires_grad_(True)
    pre_t = m.pre_acts(x).detach()
    loss = (c * _JumpReLU.apply(pre_t, m.log_threshold, eps)).sum() + _Step.apply(pre_t, m.log_threshold, eps).sum()
    (g,) = torch.autograd.grad(loss, m.log_threshold)
    K = (np.abs((pre - theta) / eps) < 0.5).astype(np.float64)
    d_theta = (c.numpy() * -(theta / eps) * K).sum(0) + (-(1 / eps) * K).sum(0)
    np.testing.assert_allclose(g.numpy(), d_theta * theta, rtol=1e-4, atol=1e-6)


def test_relu_penalty_is_l1_weighted_by_decoder_norms():
    sae = random_sae("relu")
    m = sae.module_
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(5))
    f = torch.relu((x - m.b_dec) @ m.W_enc.T + m.b_enc)
    want = (f * m.W_dec.norm(dim=1)).sum(1).mean()
    assert float(m.train_forward(x)["l1"]) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("variant", ["topk", "batchtopk"])
def test_sparse_decode_gives_the_dense_gradients(variant):
    grads = []
    for sparse in (True, False):
        torch.manual_seed(0)
        m = SAEModule(12, 40, variant, k=4, sparse_decode=sparse)
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        x = torch.randn(32, 12, generator=torch.Generator().manual_seed(7))
        out = m.train_forward(x)
        loss = (out["xhat"] - x).pow(2).sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-4)


def test_normalisation_stated_and_undone():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 5, generator=g) * torch.tensor([1.0, 10, 0.1, 3, 5]) + torch.tensor([5.0, -3, 0, 2, 100])
    sae = SparseAutoencoder(8, variant="relu", normalize="standard", epochs=1).fit(X)
    m = sae.module_
    torch.testing.assert_close(m.shift, X.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m.scale, X.std(0, unbiased=False), rtol=1e-4, atol=1e-4)
    f = torch.relu(((X - m.shift) / m.scale - m.b_dec) @ m.W_enc.T + m.b_enc)
    torch.testing.assert_close(sae.encode(X), f, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sae(X), (f @ m.W_dec + m.b_dec) * m.scale + m.shift, rtol=1e-4, atol=1e-4)
    scalar = SparseAutoencoder(8, variant="relu", normalize="scalar", epochs=1).fit(X)
    xn = scalar.module_.normalize(X)
    assert float(xn.pow(2).sum(1).mean()) == pytest.approx(5.0, rel=1e-4)  # E ||x_n||^2 = d


def test_initialisation_encoder_transpose_and_bias():
    X, _ = planted(n=600)
    X = X + 2.0
    sae = SparseAutoencoder(20, variant="topk", k=3, normalize=None, bias_init="mean")
    m = sae.build(X)
    # TopK ("auto"): rescaled decoder with rows of norm decoder_init_norm, W_enc [n, d] = (W_dec^T)^T
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.full((20,), sae.decoder_init_norm))
    torch.testing.assert_close(m.W_enc, m.W_dec)
    m = SparseAutoencoder(20, variant="topk", k=3, normalize=None, bias_init="mean", decoder="unit").build(X)
    torch.testing.assert_close(m.W_enc, 0.1 * m.W_dec)  # W_enc [n, d] = 0.1 (W_dec^T)^T for unit TopK ("auto")
    for variant, scale, want in (("relu", "auto", 1.0), ("jumprelu", "auto", 1.0), ("topk", 0.5, 0.5)):
        m2 = SparseAutoencoder(20, variant=variant, k=3, normalize=None, encoder_init_scale=scale,
                               decoder="unit" if variant == "topk" else "auto").build(X)
        torch.testing.assert_close(m2.W_enc, want * m2.W_dec)
    with pytest.raises(InputError, match="encoder_init_scale"):
        SparseAutoencoder(20, encoder_init_scale=0).build(X)
    torch.testing.assert_close(m.W_dec.norm(dim=1), torch.ones(20))
    torch.testing.assert_close(m.b_dec, X.mean(0))
    med = SparseAutoencoder(20, variant="topk", k=3, normalize=None, bias_init="geometric_median").build(X).b_dec
    ref = minimize(lambda y: np.linalg.norm(X.double().numpy() - y, axis=1).sum(), X.mean(0).double().numpy(),
                   method="BFGS").x
    np.testing.assert_allclose(med.detach().numpy(), ref, atol=2e-3)
    torch.testing.assert_close(geometric_median(X.double()).float(), med, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- planted truth
@pytest.mark.parametrize("variant", VARIANTS)
def test_planted_dictionary_recovered_and_undersized_worse(variant):
    X, D = planted()
    kw = {"k": 3} if variant in ("topk", "batchtopk") else {}
    kw.update(epochs=30, batch_size=512, lr=1e-2)
    right = SparseAutoencoder(32, variant=variant, **kw).fit(X)
    small = SparseAutoencoder(8, variant=variant, **kw).fit(X)
    assert mmcs(D, right) > 0.85
    assert mmcs(D, small) < mmcs(D, right) - 0.15
    if variant != "relu":  # unit-norm decoder rows where the variant needs them
        torch.testing.assert_close(right.module_.W_dec.norm(dim=1), torch.ones(32), atol=1e-4, rtol=1e-4)
    ev = evaluate_sae(right, X)
    assert ev.fvu < 0.35 and ev.l0 < 8


def test_auxk_loss_matches_its_definition():
    X, _ = planted(n=256)
    sae = SparseAutoencoder(24, variant="topk", k=3, aux_k=4, aux_coef=0.5, dead_after=10, decoder="unit")
    t = _Trainer("rows", sae, X)
    dead = torch.zeros(24, dtype=torch.bool)
    dead[[1, 5, 7, 11, 20]] = True
    t.since_fired[dead] = 10
    m = t.m
    xn = m.normalize(X)
    parts, _ = t.losses(xn)
    with torch.no_grad():  # Gao et al. 2024: e_hat from the aux_k largest dead pre-activations, no bias
        pre = (xn - m.b_dec) @ m.W_enc.T + m.b_enc
        f = sae.encode(X)
        e = xn - (f @ m.W_dec + m.b_dec)
        pre_dead = pre.masked_fill(~dead, -float("inf"))
        vals, idx = pre_dead.topk(4, dim=1)
        z = torch.zeros_like(pre).scatter(1, idx, vals.clamp_min(0))
        want = 0.5 * (e - z @ m.W_dec).pow(2).sum(1).mean() / 16
    assert float(parts["aux"].detach()) == pytest.approx(float(want), rel=1e-4)
    (g,) = torch.autograd.grad(parts["aux"], m.W_dec)
    assert g[~dead].abs().max() == 0 and g[dead].abs().max() > 0  # only dead latents learn from it
    t.since_fired.zero_()
    assert float(t.losses(xn)[0]["aux"]) == 0.0


def test_resampling_follows_its_definition():
    X, _ = planted(n=256)
    sae = SparseAutoencoder(24, variant="relu", dead="resample", dead_after=10)
    t = _Trainer("rows", sae, X)
    m = t.m
    xn = m.normalize(X)
    t.train_step(X)  # creates Adam moments
    dead = torch.tensor([2, 3, 17])
    t.since_fired[:] = 0
    t.since_fired[dead] = 10
    alive = torch.ones(24, dtype=torch.bool)
    alive[dead] = False
    enc_norm = m.W_enc[alive].norm(dim=1).mean()
    with torch.no_grad():
        err = xn - m.reconstruct(m.latents(xn))
        unit_err = err / err.norm(dim=1, keepdim=True)
    before = m.W_dec[alive].clone()
    t._resample(xn)
    for i in dead:  # decoder: the unit error direction of some batch row; encoder: that x 0.2 x mean live norm
        cos = unit_err @ m.W_dec[i]
        assert float(cos.max().detach()) == pytest.approx(1.0, abs=1e-5)
        torch.testing.assert_close(m.W_enc[i], m.W_dec[i] * 0.2 * enc_norm)
        assert float(m.b_enc[i].detach()) == 0.0
        assert float(t.opt.state[m.W_dec]["exp_avg"][i].abs().max()) == 0.0
    torch.testing.assert_close(m.W_dec[alive], before)
    assert int(t.since_fired.max()) == 0


# ---------------------------------------------------------------------------------------------- training
class Dies(Exception):
    pass


class DyingSource:
    """A cache that raises after ``after`` training batches (a killed run)."""

    def __init__(self, cache, after):
        self.cache, self.after, self.seen = cache, after, 0

    def __getattr__(self, name):
        return getattr(self.cache, name)

    def iter_batches(self, *args, **kwargs):
        for b in self.cache.iter_batches(*args, **kwargs):
            if kwargs.get("batch_size", 0) < 1000:
                self.seen += 1
                if self.seen > self.after:
                    raise Dies()
            yield b


@pytest.mark.parametrize("variant", ["batchtopk", "relu"])
def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path, variant):
    X, _ = planted(n=1200)
    cache = ActivationCache({"a": X, "b": X[:, :8].clone()}, {"a": ("batch", "feature"), "b": ("batch", "feature")})
    make = {"a": [SparseAutoencoder(24, variant=variant, k=3, dead_after=300, resample_every=7, seed=1),
                  SparseAutoencoder(12, variant="topk", k=2, dead_after=300, seed=2)],
            "b": SparseAutoencoder(16, variant="jumprelu", seed=3)}

    def fresh():
        return {k: ([s.clone() for s in v] if isinstance(v, list) else v.clone()) for k, v in make.items()}

    ref = fit_saes(cache, fresh(), epochs=3, batch_size=64, checkpoint=None, progress=False)
    ckpt = tmp_path / "run.pt"
    with pytest.raises(Dies):
        fit_saes(DyingSource(cache, after=40), fresh(), epochs=3, batch_size=64, checkpoint=ckpt,
                 checkpoint_every=9, progress=False)
    assert ckpt.exists() and not (tmp_path / "run.pt.tmp").exists()
    resumed = fit_saes(cache, fresh(), epochs=3, batch_size=64, checkpoint=ckpt, checkpoint_every=9, progress=False)
    pairs = [(ref["a"][0], resumed["a"][0]), (ref["a"][1], resumed["a"][1]), (ref["b"], resumed["b"])]
    for a, b in pairs:
        for (name, p), q in zip(a.module_.state_dict().items(), b.module_.state_dict().values()):
            assert torch.equal(p, q) or (torch.isnan(p).all() and torch.isnan(q).all()), name
        assert a.history_ == b.history_
    with pytest.raises(InputError, match="checkpoint"):
        fit_saes(cache, {"a": SparseAutoencoder(25, seed=9)}, epochs=3, batch_size=64, checkpoint=ckpt,
                 progress=False)


def test_several_saes_share_one_pass_over_the_data():
    X, _ = planted(n=800)
    cache = ActivationCache({"a": X, "b": -X}, {"a": ("batch", "feature"), "b": ("batch", "feature")})
    calls = []

    class Counting(DyingSource):
        def iter_batches(self, *args, **kwargs):
            calls.append(args[0])
            return self.cache.iter_batches(*args, **kwargs)

    saes = {"a": [SparseAutoencoder(16, k=2), SparseAutoencoder(32, variant="relu")],
            "b": SparseAutoencoder(16, variant="batchtopk", k=2)}
    fit_saes(Counting(cache, 0), saes, epochs=2, batch_size=100, progress=False)
    assert calls == [["a", "b"]] * 3  # one initialisation sample, then one stream per epoch for all sites
    assert all(s.is_fitted for s in (*saes["a"], saes["b"]))
    assert saes["a"][0].history_ and saes["b"].history_[-1]["step"] == 10  # 16 steps, logged every 10


def test_train_saes_on_cnn_cells_and_policy_layers():
    cnn = make_cnn()
    x = torch.randn(24, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    fitted = train_saes(cnn, x, sites=["block", "flat"], sae=SparseAutoencoder(16, k=2, epochs=1), progress=False)
    hm = HookedModel(cnn)
    _, cache = hm.run_with_cache(x, sites=["block", "flat"])
    assert fitted["block"].n_features_in_ == 8  # channels are features; cells are rows
    assert evaluate_sae(fitted["block"], cache, "block").n_rows == 24 * 36
    assert evaluate_sae(fitted["flat"], cache, "flat").n_rows == 24
    pooled = train_saes(cnn, x, sites="block", sae=[SparseAutoencoder(8, k=2, epochs=1)], pool="max", progress=False)
    assert isinstance(pooled["block"], list) and pooled["block"][0].n_features_in_ == 8
    assert cnn.training is False and all(not m.training for m in cnn.modules())

    policy = make_policy()
    obs = torch.randn(200, 6, generator=torch.Generator().manual_seed(1))
    fitted = train_saes(policy, obs, sites=["1", "3"], sae=SparseAutoencoder(32, variant="jumprelu", epochs=2),
                        progress=False)
    assert fitted["3"].n_latents_ == 32 and fitted["3"].n_features_in_ == 16


def test_fit_streams_from_an_activation_store(tmp_path):
    policy = make_policy()
    hm = HookedModel(policy)
    obs = torch.randn(640, 6, generator=torch.Generator().manual_seed(2))
    store = ActivationStore.collect(hm, list(obs.split(64)), sites=["1"], path=tmp_path / "s", batches_per_shard=2,
                                    progress=False)
    sae = SparseAutoencoder(32, k=4, epochs=3, batch_size=64).fit(store, site="1")
    ev_store = evaluate_sae(sae, store, "1")
    ev_rows = evaluate_sae(sae, store.features("1"))
    assert ev_store.n_rows == 640
    assert ev_store.fvu == pytest.approx(ev_rows.fvu, rel=1e-5)


def test_train_saes_through_a_disk_store_matches_the_in_memory_path(tmp_path):
    cnn = make_cnn()
    x = torch.randn(20, 3, 6, 6, generator=torch.Generator().manual_seed(5))
    template = SparseAutoencoder(16, k=2, epochs=2, batch_size=5000)  # one batch per epoch: same rows either way
    mem = train_saes(cnn, x, sites="block", sae=template, pool="mean", batch_size=4, progress=False)
    disk = train_saes(cnn, x, sites="block", sae=template, pool="mean", batch_size=4, store=tmp_path / "s",
                      progress=False)
    assert (tmp_path / "s" / "manifest.json").exists()
    for a, b in zip(mem["block"].module_.state_dict().values(), disk["block"].module_.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert disk["block"].n_features_in_ == 8
    assert evaluate_sae(disk["block"], ActivationStore(tmp_path / "s"), "block").n_rows == 20


def test_save_and_load_round_trip(tmp_path):
    X, _ = planted(n=500)
    sae = SparseAutoencoder(16, variant="batchtopk", k=2, epochs=2).fit(X)
    back = SparseAutoencoder.load(sae.save(tmp_path / "sae.pt"))
    torch.testing.assert_close(back.encode(X), sae.encode(X))
    assert back.get_params() == sae.get_params()


def test_errors_name_the_argument_and_the_fix():
    with pytest.raises(NotFittedError, match="fit"):
        SparseAutoencoder().encode(torch.randn(3, 4))
    X, _ = planted(n=300)
    with pytest.raises(InputError, match="variant"):
        SparseAutoencoder(variant="gated").fit(X)
    with pytest.raises(InputError, match="k: 9"):
        SparseAutoencoder(4, k=9).fit(X)
    with pytest.raises(InputError, match=r"\[N, d\]"):
        SparseAutoencoder().fit(torch.randn(5, 4, 3))
    bad = X.clone()
    bad[7, 2] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        SparseAutoencoder(8, epochs=1).fit(bad)
    with pytest.raises(InputTypeError):
        SparseAutoencoder().fit("rows")
    with pytest.raises(InputError, match="dead='auxk'"):
        SparseAutoencoder(variant="relu", dead="auxk").fit(X)
    sae = SparseAutoencoder(8, epochs=1).fit(X)
    with pytest.raises(InputError, match="16 features"):
        sae.encode(torch.randn(3, 5))
    cache = ActivationCache({"a": X, "b": X}, {"a": ("batch", "feature"), "b": ("batch", "feature")})
    with pytest.raises(InputError, match="site="):
        SparseAutoencoder(8).fit(cache)
    with pytest.raises(SiteError, match="holds"):
        SparseAutoencoder(8).fit(cache, site="c")


def test_scikit_learn_conventions():
    from sklearn.base import clone

    sae = SparseAutoencoder(16, variant="relu", l1_coef=0.2, epochs=1)
    assert vars(sae) == sae.get_params()  # the constructor stores its parameters and nothing else
    copy = clone(sae)
    assert copy.get_params() == sae.get_params() and copy is not sae
    X, _ = planted(n=300)
    assert sae.fit(X) is sae
    learned = set(vars(sae)) - set(sae.get_params())
    assert learned and all(name.endswith("_") for name in learned)
    assert sae.set_params(k=5).k == 5
    with pytest.raises(InputError, match="not a parameter"):
        sae.set_params(sparsity=3)
