"""Shortcut finding end to end on the zoo's ``shapes-cnn-shortcut`` (trained on shapes whose class 0 always
carries a white corner mark). The planted truth: the mark's pixel box (``mark_box``) and counterfactual twins
of the same images with and without the mark (``force_mark``). Three independent views must find it:

1. attribution mass concentrates on the mark's pixels (integrated gradients, Sundararajan et al. 2017);
2. patching only the corner cells of a block from the no-mark twin removes the mark's effect on the
   prediction, while patching the opposite corner changes nothing;
3. a linear probe (scikit-learn logistic regression) on the block's features detects the mark on data where
   the mark is independent of the class.
"""

import numpy as np
import pytest
import torch

import vision
from interp_core.interventions import Patch
from vision.attribution import attribution_map


@pytest.fixture(scope="module")
def model():
    return vision.zoo.load("shapes-cnn-shortcut")


@pytest.fixture(scope="module")
def twins():
    on = vision.data.shapes(n=150, seed=7, shortcut=True, force_mark=True)
    off = vision.data.shapes(n=150, seed=7, shortcut=True, force_mark=False)
    x_on, y = on.tensors()
    x_off, _ = off.tensors()
    return x_on, x_off, y, on.mark_mask()


def test_twins_differ_only_in_the_mark(twins):
    x_on, x_off, _, mask = twins
    diff = (x_on - x_off).abs().amax((0, 1)) > 0
    assert torch.equal(diff, mask)


def test_attribution_mass_concentrates_on_the_mark(model, twins):
    x_on, x_off, _, mask = twins
    target = torch.zeros(len(x_on), dtype=torch.long)  # the shortcut class
    area = float(mask.float().mean())  # 9 of 1024 pixels
    on = attribution_map(model, x_on, "integrated_gradients", target=target, n_steps=16, abs=True)
    off = attribution_map(model, x_off, "integrated_gradients", target=target, n_steps=16, abs=True)
    frac_on, frac_off = on.mass_in(mask), off.mass_in(mask)
    assert frac_on.mean() > 10 * area          # ~25x the mark's share of the pixels
    assert (frac_on > 3 * area).float().mean() > 0.95
    assert frac_on.mean() > 5 * frac_off.mean()  # it is the mark, not the corner, that draws the mass


def test_patching_the_corner_cells_removes_the_shortcut(model, twins):
    x_on, x_off, y, _ = twins
    other = y != 0  # circles and triangles wearing the class-0 mark
    site = "layer2.0"  # [32, 8, 8]: one cell = 4x4 pixels
    assert model.sites[site].shape == (32, 8, 8)
    corner = [(0, 0), (0, 1), (1, 0), (1, 1)]  # pixels 0-7: the mark (pixels 1-3) and its receptive-field halo
    opposite = [(7 - i, 7 - j) for i, j in corner]
    _, src = model.run_with_cache(x_off, sites=[site])
    with torch.no_grad():
        p_clean = model(x_on).softmax(1)[other, 0]
        p_twin = model(x_off).softmax(1)[other, 0]
    p_corner = model.run_with_interventions(x_on, {site: Patch(src, positions=corner)}).softmax(1)[other, 0]
    p_opposite = model.run_with_interventions(x_on, {site: Patch(src, positions=opposite)}).softmax(1)[other, 0]
    assert p_clean.mean() > 0.4 and p_twin.mean() < 0.05  # the mark alone pulls other shapes to class 0
    assert p_corner.mean() < 0.25 * p_clean.mean()        # patching 4 of 64 cells undoes most of it
    assert (p_opposite - p_clean).abs().max() < 1e-4      # patching the opposite corner changes nothing
    flipped_clean = float((p_clean > 0.5).float().mean())
    flipped_corner = float((p_corner > 0.5).float().mean())
    assert flipped_corner < 0.5 * flipped_clean


def test_linear_probe_detects_the_mark(model):
    from sklearn.linear_model import LogisticRegression

    # shortcut=0.5: the mark is independent of the class, so a probe cannot read it off the shape
    train = vision.data.shapes(n=400, seed=11, shortcut=0.5)
    test = vision.data.shapes(n=200, seed=12, shortcut=0.5)
    feats = {}
    for name, ds in (("train", train), ("test", test)):
        x, _ = ds.tensors()
        _, cache = model.run_with_cache(x, sites=["layer2.0"], pool="mean")
        feats[name] = (cache.features("layer2.0").numpy(), ds.factors()["mark"].numpy(), ds.labels.numpy())
    (Xtr, mtr, _), (Xte, mte, yte) = feats["train"], feats["test"]
    assert 0.3 < mte.mean() < 0.7 and abs(np.corrcoef(mte, yte == 0)[0, 1]) < 0.3
    probe = LogisticRegression(max_iter=2000).fit(Xtr, mtr)
    acc = probe.score(Xte, mte)
    assert acc > 0.95
    # control task (Hewitt & Liang 2019): the same probe on shuffled labels stays near chance
    rng = np.random.default_rng(0)
    control = LogisticRegression(max_iter=2000).fit(Xtr, rng.permutation(mtr)).score(Xte, mte)
    assert control < 0.75 and acc - control > 0.2
