"""Labels against ground truth: planted latents recovered, AUROC against scikit-learn, correlation against
numpy, the permutation baseline, and latents collected from a model through latents-as-sites."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from interp_core.errors import InputError, InputTypeError
from interp_core.features import SparseAutoencoder, label_latents, latent_activations

from ..conftest import make_policy


def planted(n_rows=600, seed=0):
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 4, n_rows)
    flag = rng.random(n_rows) < 0.3
    size = rng.normal(size=n_rows)
    F = np.abs(rng.normal(size=(n_rows, 6))) * (rng.random((n_rows, 6)) < 0.2)  # sparse noise latents
    F[:, 0] = (cls == 2) * rng.uniform(1, 2, n_rows)  # fires exactly on class 2 (0 elsewhere: ties)
    F[:, 1] = flag * 3.0  # the binary flag
    F[:, 2] = np.maximum(size + 0.3 * rng.normal(size=n_rows), 0)  # a rectified continuous factor
    return F, {"cls": cls, "flag": flag, "size": size}


def test_planted_latents_get_their_variable_and_the_noise_does_not():
    F, variables = planted()
    res = label_latents(F, variables, n_permutations=100)
    lab = res.labels["latents"]
    assert (lab[0]["variable"], lab[0]["value"], lab[0]["measure"]) == ("cls", 2, "auroc")
    assert lab[0]["score"] == pytest.approx(1.0) and lab[0]["p_value"] == pytest.approx(1 / 101)
    assert (lab[1]["variable"], lab[1]["value"]) == ("flag", True) and lab[1]["score"] == pytest.approx(1.0)
    assert lab[2]["variable"] == "size" and lab[2]["measure"] == "corr" and lab[2]["score"] > 0.7
    assert all(e["significant"] for e in lab[:3])
    assert not any(e["significant"] for e in lab[3:])  # pure noise latents: at the permutation baseline
    assert all(e["strength"] <= e["baseline"] + 0.05 for e in lab[3:])
    top = res.table(top=3)
    assert [r["latent"] for r in top] == [0, 1, 2] or {r["latent"] for r in top} == {0, 1, 2}
    assert res.to_dict()["n_examples"] == 600


def test_scores_match_sklearn_auroc_and_numpy_correlation():
    F, variables = planted(seed=3)
    res = label_latents({"a": F, "b": torch.tensor(F[:, ::-1].copy())}, variables, n_permutations=0)
    names = res.label_names
    for j, (var, value) in enumerate(names):
        for i in range(F.shape[1]):
            if var == "size":
                want = np.corrcoef(F[:, i], variables["size"])[0, 1] if F[:, i].std() > 0 else 0.0
            else:
                want = roc_auc_score(variables[var] == value, F[:, i])
            assert res.scores["a"][i, j] == pytest.approx(want, abs=1e-10)
    np.testing.assert_allclose(res.scores["b"], res.scores["a"][::-1])
    assert np.isnan(res.labels["a"][0]["p_value"])


def test_kinds_and_errors():
    F, variables = planted()
    res = label_latents(F, {"cls": variables["cls"]}, kinds={"cls": "continuous"}, n_permutations=0)
    assert res.labels["latents"][0]["measure"] == "corr"
    with pytest.raises(InputError, match="variables\\['cls'\\]"):
        label_latents(F, {"cls": variables["cls"][:-1]})
    with pytest.raises(InputError, match="kinds"):
        label_latents(F, variables, kinds={"nope": "continuous"})
    with pytest.raises(InputError, match="N >= 2"):
        label_latents(F[:, 0], variables)
    with pytest.raises(InputError, match="NaN"):
        label_latents(np.full((5, 2), np.nan), {"c": np.arange(5)})
    with pytest.raises(InputError, match="constant"):
        label_latents(F, {"c": np.zeros(len(F))})
    with pytest.raises(InputTypeError, match="latents"):
        label_latents([[1.0]], variables)
    with pytest.raises(InputError, match="same examples"):
        label_latents({"a": F, "b": F[:10]}, variables)


def test_latent_activations_through_the_model_label_a_planted_latent():
    torch.manual_seed(0)
    model = make_policy()
    x = torch.randn(300, 6)
    with torch.no_grad():
        h = model[:3](x)  # the output of module "2"
    d = h.shape[1]
    # an SAE whose latent 0 reads unit 0 of site "2": its label is the variable made from that unit
    W = torch.zeros(3, d)
    W[0, 0], W[1, 1], W[2, 2] = 1.0, 1.0, 1.0
    sae = SparseAutoencoder.from_weights(W, torch.zeros(3), W, torch.zeros(d), variant="relu")
    F = latent_activations(model, {"2": sae}, x)
    assert F["2"].shape == (300, 3)
    torch.testing.assert_close(F["2"], torch.relu(h[:, :3]))
    res = label_latents(F, {"unit0_on": (h[:, 0] > 0).numpy(), "noise": np.random.default_rng(0).normal(size=300)},
                        n_permutations=50)
    assert res.labels["2"][0]["variable"] == "unit0_on" and res.labels["2"][0]["score"] == pytest.approx(1.0)
