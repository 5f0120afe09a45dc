"""Latents become sites: reading, editing and patching single SAE latents through the core's site methods,
checked against the same edit done by hand on the base site."""

import pytest
import torch

from interp_core import HookedModel
from interp_core.errors import InputError, NotFittedError
from interp_core.features import SparseAutoencoder, with_latents
from interp_core.interventions import Ablate, Replace, Steer
from interp_core.metrics import logit_diff
from interp_core.patching import patch_sweep

from ..conftest import make_cnn, make_policy


def random_sae(d, n, seed=0, variant="relu"):
    g = torch.Generator().manual_seed(seed)
    return SparseAutoencoder.from_weights(torch.randn(n, d, generator=g), torch.zeros(n),
                                          torch.randn(n, d, generator=g), torch.randn(d, generator=g) * 0.1,
                                          variant=variant,
                                          shift=torch.randn(d, generator=g) * 0.1, scale=torch.full((d,), 1.5))


def by_hand(model, site, sae, x, edit, error_term=True):
    """Output with the base site's rows x replaced by decode(edit(f)) (+ x - decode(f))."""
    hm = HookedModel(model)

    def fn(act):
        rows = act.permute(0, 2, 3, 1).reshape(-1, act.shape[1]) if act.dim() == 4 else act
        f = sae.encode(rows)
        new = sae.decode(edit(f.clone()))
        if error_term:
            new = new + (rows - sae.decode(f))
        if act.dim() == 4:
            b, c, h, w = act.shape
            return new.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return new

    return hm.run_with_interventions(x, {site: Replace(fn)})


@pytest.mark.parametrize("kind", ["policy", "cnn"])
def test_latent_site_reads_and_edits_like_the_hand_computation(kind):
    model = make_policy() if kind == "policy" else make_cnn()
    x = torch.randn(6, 6) if kind == "policy" else torch.randn(4, 3, 5, 5)
    site, d = ("2", 16) if kind == "policy" else ("block", 8)
    sae = random_sae(d, 12)
    hm = with_latents(model, {site: sae})
    name = site + ".latents"
    out, cache = hm.run_with_cache(x, sites=[name, site])
    torch.testing.assert_close(out, model(x))  # reading leaves the forward untouched
    assert cache[name].shape == ((6, 12) if kind == "policy" else (4, 12, 5, 5))
    assert hm.sites[name].axes == (("batch", "feature") if kind == "policy" else ("batch", "feature", "pos", "pos"))
    torch.testing.assert_close(cache.features(name), sae.encode(cache.features(site)))
    # an unchanged latent pass-through gives the model's own output (error term kept)
    torch.testing.assert_close(hm.run_with_interventions(x, {name: Replace(lambda a: a * 1.0)}), model(x),
                               atol=1e-5, rtol=1e-5)

    def zero3(f):
        f[:, 3] = 0
        return f

    got = hm.run_with_interventions(x, {name: Ablate("zero", features=[3])})
    torch.testing.assert_close(got, by_hand(model, site, sae, x, zero3), atol=1e-5, rtol=1e-5)

    def steer5(f):
        f[:, 5] += 2.0
        return f

    e5 = torch.zeros(12)
    e5[5] = 1.0
    got = hm.run_with_interventions(x, {name: Steer(e5, alpha=2.0)})
    torch.testing.assert_close(got, by_hand(model, site, sae, x, steer5), atol=1e-5, rtol=1e-5)
    pure = with_latents(model, {site: sae}, error_term=False)
    got = pure.run_with_interventions(x, {name: Replace(lambda a: a * 1.0)})
    torch.testing.assert_close(got, by_hand(model, site, sae, x, lambda f: f, error_term=False), atol=1e-5,
                               rtol=1e-5)


def test_patch_sweep_per_latent_matches_a_loop():
    model = make_policy()
    g = torch.Generator().manual_seed(4)
    clean, corrupted = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    sae = random_sae(16, 10, seed=2)
    hm = with_latents(model, {"2": sae})
    metric = logit_diff(0, 1)
    res = patch_sweep(hm, clean=clean, corrupted=corrupted, sites=["2.latents"], metric=metric, progress=False)
    _, cc = HookedModel(model).run_with_cache(clean, sites=["2"])
    f_clean = sae.encode(cc["2"])
    with torch.no_grad():
        m_clean, m_corr = float(metric(model(clean)).mean()), float(metric(model(corrupted)).mean())
    want = []
    for i in range(10):
        def patch(f, i=i):
            f[:, i] = f_clean[:, i]
            return f
        m = float(metric(by_hand(model, "2", sae, corrupted, patch)).mean().detach())
        want.append((m - m_corr) / (m_clean - m_corr))
    torch.testing.assert_close(res.effects["2.latents"].float(), torch.tensor(want), atol=1e-4, rtol=1e-4)


def test_latent_site_errors():
    model = make_policy()
    with pytest.raises(NotFittedError):
        with_latents(model, {"2": SparseAutoencoder()})
    with pytest.raises(InputError, match="no site"):
        with_latents(model, {"nope": random_sae(16, 4)})
    hm = with_latents(model, {"0": random_sae(16, 4)})  # layer 0 has 16 units: fine
    with pytest.raises(InputError, match="fitted on 5"):
        with_latents(model, {"2": random_sae(5, 4)}).run_with_cache(torch.randn(2, 6), sites=["2.latents"])
    assert "0.latents" in hm.sites
