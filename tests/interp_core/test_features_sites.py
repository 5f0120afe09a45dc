"""SAEs on sites of every kind: ViT tokens and per-head outputs, and a recurrent policy's ``memory.h``
(through the registered adapters), trained, evaluated and spliced through the boundary."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from interp_core import HookedModel
from interp_core.boundary import as_hooked
from interp_core.features import SparseAutoencoder, evaluate_sae, splice_eval, train_saes
from interp_core.features.evaluate import splice
from interp_core.interventions import Replace

from ..conftest import make_cnn, make_policy, make_vit


def identity_sae(d):
    eye = torch.eye(d)
    return SparseAutoencoder.from_weights(torch.cat([eye, -eye]), torch.zeros(2 * d), torch.cat([eye, -eye]),
                                          torch.zeros(d), variant="relu")


def test_vit_token_and_head_sites():
    vit = make_vit()
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    sites = ["blocks.1.resid_post", "blocks.1.attn.z"]
    fitted = train_saes(vit, x, sites=sites, sae=SparseAutoencoder(48, k=4, epochs=2), progress=False)
    hm = as_hooked(vit)
    _, cache = hm.run_with_cache(x, sites=sites)
    assert cache.axes("blocks.1.attn.z") == ("batch", "pos", "head", "feature")
    for s in sites:  # tokens are rows; heads x head features are the row's features
        assert fitted[s].n_features_in_ == 32
        assert evaluate_sae(fitted[s], cache, s).n_rows == 8 * 17
    for s in sites:
        out = hm.run_with_interventions(x, {s: Replace(splice(identity_sae(32)))})
        torch.testing.assert_close(out, vit(x), atol=1e-5, rtol=1e-5)


class GRUPolicy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.memory = nn.GRUCell(16, 12)
        self.actor = nn.Linear(12, 3)


def test_recurrent_policy_memory_h():
    import rl

    agent = rl.agents.wrap(GRUPolicy(), obs_shape=(6,))
    obs = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    fitted = train_saes(agent, obs, sites=["memory.h", "encoder.out"], sae=SparseAutoencoder(24, k=3, epochs=2),
                        progress=False)
    assert fitted["memory.h"].n_features_in_ == 12 and fitted["encoder.out"].n_features_in_ == 16
    res = splice_eval(agent, identity_sae(12), obs, "memory.h", target=0)
    assert res.values["spliced"]["kl"] < 1e-10
    assert abs(res.values["spliced"]["metric"] - res.values["clean"]["metric"]) < 1e-5


@pytest.mark.parametrize("kind", ["cnn", "vit", "policy"])
def test_same_saes_and_splice_numbers_for_every_input_form(kind):
    if kind == "cnn":
        model, x, site = make_cnn(), torch.randn(24, 3, 6, 6, generator=torch.Generator().manual_seed(1)), "block"
    elif kind == "vit":
        model, x, site = make_vit(), torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(1)), \
            "blocks.0.resid_post"
    else:
        model, x, site = make_policy(), torch.randn(24, 6, generator=torch.Generator().manual_seed(1)), "2"
    y = torch.arange(24) % 3
    template = SparseAutoencoder(16, k=2, epochs=2, batch_size=64)
    ref = train_saes(HookedModel(model), x, site, sae=template, progress=False)[site]
    ref_splice = splice_eval(HookedModel(model), ref, x, site, labels=y, target=0)
    ds = TensorDataset(x, y)
    for data, labels in [(x.double().numpy(), y.numpy()), (ds, None), (DataLoader(ds, batch_size=7), None)]:
        got = train_saes(model, data, site, sae=template, progress=False)[site]
        for a, b in zip(ref.module_.state_dict().values(), got.module_.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)
        res = splice_eval(model, ref, data, site, labels=labels, target=0)
        for cond, vals in ref_splice.values.items():
            for measure, v in vals.items():
                assert res.values[cond][measure] == pytest.approx(v, rel=1e-4, abs=1e-6), (cond, measure)
