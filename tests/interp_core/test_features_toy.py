"""Toy models of superposition (Elhage et al. 2022): the analyses against closed forms, and the paper's
claims reproduced: dense -> only the ~m most important features; sparse -> a pentagon with D_i = 2/5;
the n = 2, m = 1 phase diagram."""

import math

import pytest
import torch

from interp_core.errors import InputError
from interp_core.features import toy


def models_from(W):
    W = torch.as_tensor(W, dtype=torch.float32)[None]
    n = W.shape[-1]
    return toy.ToyModels(W=W, b=torch.zeros(1, n), sparsity=torch.zeros(1), importance=torch.ones(1, n),
                         loss=torch.zeros(1), grid=(1, 1))


def test_analyses_match_closed_forms():
    angles = torch.arange(5) * 2 * math.pi / 5
    pentagon = models_from(torch.stack([angles.cos(), angles.sin()]))
    torch.testing.assert_close(pentagon.dimensionality(), torch.full((1, 5), 0.4), atol=1e-5, rtol=0)
    torch.testing.assert_close(pentagon.feature_norms(), torch.ones(1, 5))
    # interference of feature 0: sum_j != 0 cos^2(2 pi j / 5) = 5/2 - 1
    torch.testing.assert_close(pentagon.interference(), torch.full((1, 5), 1.5), atol=1e-5, rtol=0)
    # one dedicated feature, one antipodal pair, one dropped feature (m = 2, n = 4)
    mixed = models_from([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, -1.0, 0.0]])
    torch.testing.assert_close(mixed.dimensionality(), torch.tensor([[1.0, 0.5, 0.5, 0.0]]))
    torch.testing.assert_close(mixed.interference(), torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    assert mixed.n_represented().tolist() == [3]
    assert pentagon.plot() is not None
    with pytest.raises(InputError, match="sparsity"):
        toy.train_toy_models(5, 2, sparsity=1.0)
    with pytest.raises(InputError, match="importance"):
        toy.train_toy_models(5, 2, importance=torch.ones(3))


def test_dense_regime_keeps_only_the_most_important_features():
    r = toy.train_toy_models(5, 2, sparsity=0.0, importance=0.9, n_init=2, n_steps=1500, batch_size=256, lr=1e-2)
    norms = r.feature_norms()[0]
    assert norms[:2].min() > 0.9 and norms[2:].max() < 0.2
    torch.testing.assert_close(r.dimensionality()[0, :2], torch.ones(2), atol=0.05, rtol=0)
    assert r.to_dict()["config"]["n_features"] == 5


@pytest.mark.slow
def test_sparse_regime_pentagon_with_dimensionality_two_fifths():
    r = toy.train_toy_models(5, 2, sparsity=[0.0, 0.97], importance=0.9, n_init=4, n_steps=2000, batch_size=512,
                             lr=5e-3)
    assert r.n_represented().tolist() == [2, 5]
    torch.testing.assert_close(r.dimensionality()[1], torch.full((5,), 0.4), atol=0.03, rtol=0)
    # the pentagon: consecutive directions 72 degrees apart
    w = r.W[1] / r.feature_norms()[1]
    angles = torch.sort(torch.atan2(w[1], w[0])).values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi]))
    torch.testing.assert_close(gaps, torch.full((5,), 2 * math.pi / 5), atol=0.05, rtol=0)
    assert r.plot() is not None


def test_phase_diagram_n2_m1():
    pd = toy.phase_diagram(sparsity=[0.0, 0.97], relative_importance=[0.5, 2.0], n_init=2, n_steps=1500,
                           batch_size=256, lr=1e-2)
    names = [[toy.PHASES[int(p)] for p in row] for row in pd.phase]
    assert names[0] == ["not represented", "dedicated"]  # dense: the more important feature wins the dimension
    assert names[1][1] == "superposition" or names[1][0] == "superposition"
    w = pd.models.W[:, 0, :].reshape(2, 2, 2)
    sup = pd.phase == 2
    assert bool((w[..., 0] * w[..., 1])[sup].lt(0).all())  # antipodal
    assert pd.plot() is not None


def test_readme_figures_are_written(tmp_path):
    import matplotlib.image

    paths = toy.readme_figures(tmp_path, n_steps=30, progress=False)
    assert [p.name for p in paths] == ["toy_geometry.png", "toy_phase.png"]
    for p in paths:
        img = matplotlib.image.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0  # a real, non-blank picture
