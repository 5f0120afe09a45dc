"""vision.data: the digits split against scikit-learn itself, shapes against their generating factors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from vision import data as vdata


# ------------------------------------------------------------------------------------------------ digits
def test_digits_split_is_fixed_disjoint_stratified_and_traceable_to_sklearn():
    train, test = vdata.digits("train"), vdata.digits("test")
    assert (len(train), len(test)) == (1437, 360)
    tr, te = set(train.indices.tolist()), set(test.indices.tolist())
    assert not tr & te and len(tr | te) == 1797
    raw = load_digits()
    # every item is the sklearn image it claims to be, with its label
    x01 = test.images * vdata.DIGITS_STD + vdata.DIGITS_MEAN
    np.testing.assert_allclose(x01[:, 0].numpy(), raw.images[test.indices.numpy()] / 16.0, atol=1e-5)
    assert torch.equal(test.labels, torch.from_numpy(raw.target[test.indices.numpy()]).long())
    # stratified: each class has 20% of its images in the test split (up to rounding)
    counts = np.bincount(raw.target, minlength=10)
    test_counts = np.bincount(test.labels.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1)
    # fixed: a second call gives the same split
    assert torch.equal(vdata.digits("test").indices, test.indices)


def test_digits_normalisation_constants_are_the_train_statistics():
    raw = load_digits()
    train = vdata.digits("train", normalize=False)
    x = raw.images[train.indices.numpy()] / 16.0
    assert abs(x.mean() - vdata.DIGITS_MEAN) < 1e-4 and abs(x.std() - vdata.DIGITS_STD) < 1e-4
    z = vdata.digits("train").images
    assert abs(float(z.mean())) < 1e-3 and abs(float(z.std()) - 1) < 1e-3


def test_digits_upscaling_nearest_is_exactly_invertible_and_bilinear_preserves_the_mean():
    small = vdata.digits("test", size=8, normalize=False).images
    big = vdata.digits("test", size=16, normalize=False, mode="nearest").images
    assert big.shape == (360, 1, 16, 16)
    torch.testing.assert_close(F.avg_pool2d(big, 2), small)
    bil = vdata.digits("test", size=32).images
    assert bil.shape == (360, 1, 32, 32)
    assert abs(float(bil.mean()) - float(vdata.digits("test").images.mean())) < 0.05


def test_digits_tensors_and_loader_agree_and_labels_are_learnable():
    from sklearn.linear_model import LogisticRegression

    xtr, ytr = vdata.digits_tensors("train")
    xte, yte = vdata.digits_tensors("test")
    ds = vdata.digits("test")
    xb, yb = next(iter(DataLoader(ds, batch_size=360, shuffle=False)))
    assert torch.equal(xb, xte) and torch.equal(yb, yte)
    # independent check that images and labels line up: a linear classifier learns the split well
    clf = LogisticRegression(max_iter=2000).fit(xtr.flatten(1).numpy(), ytr.numpy())
    assert clf.score(xte.flatten(1).numpy(), yte.numpy()) > 0.93


def test_digits_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        vdata.digits("val")
    with pytest.raises(ValueError, match="size"):
        vdata.digits("train", size=4)


# ------------------------------------------------------------------------------------------------ shapes
def test_shapes_are_deterministic_per_item_and_seed():
    a, b = vdata.shapes(50, seed=3), vdata.shapes(50, seed=3)
    c = vdata.shapes(50, seed=4)
    xa, ya = a.tensors()
    assert torch.equal(xa, b.tensors()[0])
    assert not torch.equal(xa, c.tensors()[0])
    # any item regenerated on its own equals the same item in a full pass (and in a larger dataset)
    big = vdata.shapes(500, seed=3)
    for i in (0, 17, 49):
        assert torch.equal(big[i][0], xa[i]) and big[i][1] == int(ya[i])


def test_shapes_render_their_factors():
    ds = vdata.shapes(300, seed=0, shortcut=0.5)
    f = ds.factors()
    for i in range(300):
        img, label, fi = ds[i]
        assert img.shape == (3, 32, 32) and 0 <= float(img.min()) and float(img.max()) <= 1
        assert label == fi["shape"] == int(f["shape"][i])
        assert {k: fi[k] for k in ("x", "y", "size", "colour", "mark")} == {
            k: int(f[k][i]) for k in ("x", "y", "size", "colour", "mark")}
        colour = vdata.COLOURS[fi["colour"]]
        mask = ds.shape_mask(i)
        # the shape's pixels carry its colour, every other pixel outside the mark is the background
        assert torch.allclose(img[:, mask], colour[:, None].expand(3, int(mask.sum())))
        outside = ~mask & ~ds.mark_mask()
        assert torch.allclose(img[:, outside], torch.tensor(fi["background"]))
        assert bool(mask[fi["y"], fi["x"]])
        # the mark never overlaps the shape; it is white exactly when present
        assert not (mask & ds.mark_mask()).any()
        top, left, h, w = ds.mark_box
        corner = img[:, top:top + h, left:left + w]
        assert bool((corner == 1).all()) == bool(fi["mark"])


def test_shape_areas_match_their_geometry():
    ds = vdata.shapes(200, seed=1)
    f = ds.factors()
    for i in range(200):
        r, area = int(f["size"][i]), int(ds.shape_mask(i).sum())
        kind = vdata.SHAPE_NAMES[int(f["shape"][i])]
        if kind == "square":
            assert area == (2 * r + 1) ** 2
        elif kind == "circle":
            assert abs(area - math.pi * (r + 0.5) ** 2) < 2 * math.pi * (r + 0.5)  # lattice-count error bound
        else:  # triangle: base 2r+1 wide, 2r+1 tall → about half the square
            assert 0.4 * (2 * r + 1) ** 2 < area < 0.65 * (2 * r + 1) ** 2


@pytest.mark.parametrize("p", [1.0, 0.8, 0.5])
def test_shortcut_mark_has_the_requested_correlation_with_the_label(p):
    n = 3000
    f = vdata.shapes(n, seed=7, shortcut=p).factors()
    is0 = f["shape"] == 0
    p0 = float(f["mark"][is0].float().mean())
    p_other = float(f["mark"][~is0].float().mean())
    if p == 1.0:
        assert torch.equal(f["mark"].bool(), is0)
    # binomial tolerance: 5 standard errors
    tol0 = 5 * math.sqrt(max(p * (1 - p), 1e-4) / int(is0.sum()))
    tol1 = 5 * math.sqrt(max(p * (1 - p), 1e-4) / int((~is0).sum()))
    assert abs(p0 - p) <= tol0 and abs(p_other - (1 - p)) <= tol1
    assert (vdata.shapes(100, seed=7).factors()["mark"] == 0).all()  # shortcut=False: never


def test_forced_mark_gives_counterfactual_twins():
    base = vdata.shapes(40, seed=5, shortcut=1.0)
    on, off = vdata.shapes(40, seed=5, force_mark=True), vdata.shapes(40, seed=5, force_mark=False)
    xon, xoff = on.tensors()[0], off.tensors()[0]
    mark = base.mark_mask()
    assert torch.equal(xon[:, :, ~mark], xoff[:, :, ~mark])  # identical outside the mark
    assert (xon[:, :, mark] == 1).all()
    assert torch.equal(on.labels, base.labels)
    for k in ("x", "y", "size", "colour", "shape"):
        assert torch.equal(on.factors()[k], base.factors()[k])


def test_shapes_loader_collates_factors():
    ds = vdata.shapes(16, seed=0, shortcut=True)
    x, y, f = next(iter(DataLoader(ds, batch_size=16)))
    assert x.shape == (16, 3, 32, 32) and torch.equal(y, ds.labels)
    assert torch.equal(f["mark"], ds.factors()["mark"]) and torch.equal(f["x"], ds.factors()["x"])


def test_shapes_reject_bad_arguments():
    with pytest.raises(ValueError, match="shortcut"):
        vdata.shapes(10, shortcut=1.5)
    with pytest.raises(ValueError, match="image_size"):
        vdata.shapes(10, image_size=12)
    with pytest.raises(IndexError):
        vdata.shapes(10)[10]


def test_shapes_noise_is_deterministic_bounded_and_zero_mean_before_clamping():
    clean = vdata.shapes(20, seed=4).tensors()[0]
    noisy = vdata.shapes(20, seed=4, noise=0.05).tensors()[0]
    assert torch.equal(noisy, vdata.shapes(20, seed=4, noise=0.05).tensors()[0])
    assert 0 <= float(noisy.min()) and float(noisy.max()) <= 1
    inner = (clean > 0.2) & (clean < 0.8)  # away from the clamp, the noise is N(0, 0.05^2)
    diff = (noisy - clean)[inner]
    assert abs(float(diff.mean())) < 0.005 and abs(float(diff.std()) - 0.05) < 0.005
