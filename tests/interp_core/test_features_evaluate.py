"""SAE evaluation: every metric against a hand computation; splicing an identity SAE gives the model's own
output; splicing a zero SAE equals zero ablation; the error term restores the forward."""

import numpy as np
import pytest
import torch

from interp_core import ActivationCache, HookedModel
from interp_core.errors import InputError, InputTypeError, NotFittedError
from interp_core.features import SAEEvaluation, SparseAutoencoder, SpliceResult, evaluate_sae, splice_eval
from interp_core.features.evaluate import splice
from interp_core.interventions import Replace
from interp_core.metrics import logit_diff

from ..conftest import make_cnn, make_policy


def identity_sae(d):
    """ReLU SAE with 2d latents ``[relu(x), relu(-x)]`` and decoder ``[I, -I]``: reconstructs ``x`` exactly."""
    eye = torch.eye(d)
    return SparseAutoencoder.from_weights(torch.cat([eye, -eye]), torch.zeros(2 * d), torch.cat([eye, -eye]),
                                          torch.zeros(d), variant="relu")


def test_metrics_against_hand_computation():
    g = torch.Generator().manual_seed(0)
    n, d = 10, 4
    W_enc = torch.randn(n, d, generator=g)
    W_enc[7] = -10.0  # latent 7 never fires on positive-ish data below: dead
    W_dec = torch.randn(n, d, generator=g)
    b_enc = torch.zeros(n)
    b_enc[3] = 100.0  # latent 3 fires on every row: dense
    sae = SparseAutoencoder.from_weights(W_enc, b_enc, W_dec, torch.randn(d, generator=g), variant="relu",
                                         shift=torch.ones(d), scale=torch.full((d,), 2.0))
    X = torch.rand(300, d, generator=g) * 3 + 0.1
    ev = evaluate_sae(sae, X, batch_size=64, dense_threshold=0.5)
    x = X.double().numpy()
    xn = (x - 1) / 2
    f = np.maximum((xn - sae.module_.b_dec.double().numpy()) @ W_enc.double().numpy().T + b_enc.double().numpy(), 0)
    xh = (f @ W_dec.double().numpy() + sae.module_.b_dec.double().numpy()) * 2 + 1
    assert ev.mse == pytest.approx(((x - xh) ** 2).mean(), rel=1e-5)
    assert ev.fvu == pytest.approx(((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-5)
    assert ev.l0 == pytest.approx((f > 0).sum(1).mean(), rel=1e-6)
    freq = (f > 0).mean(0)
    np.testing.assert_allclose(ev.firing_frequency.numpy(), freq, rtol=1e-6)
    assert ev.dead_fraction == pytest.approx((freq == 0).mean()) and ev.dead_fraction >= 0.1
    assert ev.dense_fraction == pytest.approx((freq > 0.5).mean()) and ev.dense_fraction >= 0.1
    assert ev.n_rows == 300
    assert isinstance(ev, SAEEvaluation) and ev.to_dict()["n_rows"] == 300
    assert ev.plot() is not None
    # FVU is against the mean: reconstructing every row as the mean scores 1
    mean_sae = SparseAutoencoder.from_weights(torch.zeros(n, d), torch.zeros(n), torch.zeros(n, d), X.mean(0))
    assert evaluate_sae(mean_sae, X).fvu == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("kind", ["cnn", "policy"])
def test_identity_sae_spliced_in_gives_the_models_own_output(kind):
    model = make_cnn() if kind == "cnn" else make_policy()
    x = torch.randn(16, 3, 6, 6) if kind == "cnn" else torch.randn(16, 6)
    site, d = ("block", 8) if kind == "cnn" else ("2", 16)
    hm = HookedModel(model)
    sae = identity_sae(d)
    out = hm.run_with_interventions(x, {site: Replace(splice(sae))})
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-6)
    y = model(x).argmax(1)
    res = splice_eval(model, sae, (x, y), site, metric=logit_diff(0, 1))
    assert isinstance(res, SpliceResult)
    for measure in ("metric", "accuracy", "kl"):
        assert res.values["spliced"][measure] == pytest.approx(res.values["clean"][measure], abs=1e-5)
    assert res.values["clean"]["accuracy"] == 1.0 and res.values["clean"]["kl"] == pytest.approx(0, abs=1e-6)
    for measure in res.kept:
        for abl in ("zero", "mean"):
            assert res.kept[measure][abl] == pytest.approx(1.0, abs=1e-4) or np.isnan(res.kept[measure][abl])
    assert res.kept["kl"]["zero"] == pytest.approx(1.0, abs=1e-4)
    assert res.plot() is not None


def test_zero_sae_equals_zero_ablation_and_error_term_restores_the_forward():
    model = make_cnn()
    x = torch.randn(12, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    y = torch.arange(12) % 4
    zero = SparseAutoencoder.from_weights(torch.randn(5, 8), torch.zeros(5), torch.zeros(5, 8), torch.zeros(8))
    res = splice_eval(model, zero, (x, y), "block", target=2)
    for measure in ("metric", "accuracy", "kl"):
        assert res.values["spliced"][measure] == pytest.approx(res.values["zero"][measure], abs=1e-5)
    assert res.kept["metric"]["zero"] == pytest.approx(0.0, abs=1e-6)
    assert res.kept["kl"]["zero"] == pytest.approx(0.0, abs=1e-6)
    # by hand: the mean-ablated metric (site replaced by its mean over the data, per position)
    hm = HookedModel(model)
    _, cache = hm.run_with_cache(x, sites=["block"])
    mean = cache["block"].mean(0, keepdim=True)
    out = hm.run_with_interventions(x, {"block": Replace(lambda a: mean.expand_as(a))})
    assert res.values["mean"]["metric"] == pytest.approx(float(out[:, 2].mean().detach()), rel=1e-5)
    with_error = splice_eval(model, zero, (x, y), "block", target=2, error_term=True)
    assert with_error.values["spliced"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert with_error.values["spliced"]["metric"] == pytest.approx(with_error.values["clean"]["metric"], rel=1e-5)


def test_evaluation_errors():
    sae = identity_sae(4)
    with pytest.raises(InputError, match="fitted on 4"):
        evaluate_sae(sae, torch.randn(10, 5))
    with pytest.raises(NotFittedError):
        evaluate_sae(SparseAutoencoder(), torch.randn(10, 4))
    with pytest.raises(InputTypeError, match="sae"):
        evaluate_sae("sae", torch.randn(10, 4))
    with pytest.raises(InputError, match="dense_threshold"):
        evaluate_sae(sae, torch.randn(10, 4), dense_threshold=2)
    with pytest.raises(InputError, match="fitted on 4"):
        splice_eval(make_cnn(), sae, torch.randn(4, 3, 6, 6), "block")
    cache = ActivationCache({"a": torch.randn(10, 4)}, {"a": ("batch", "feature")})
    assert evaluate_sae(sae, cache).fvu == pytest.approx(0.0, abs=1e-10)
