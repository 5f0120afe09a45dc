"""vision.featvis against planted units: hand-set filters whose preferred input is known in closed form."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from interp_core import ActivationCache, HookedModel
from vision import featvis as fv

BLOCK = torch.ones(3, 3)
CHECKER = torch.cat([torch.cat([BLOCK, -BLOCK], 1), torch.cat([-BLOCK, BLOCK], 1)], 0)  # 6x6, 3x3 squares
STRIPES = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0]).repeat(6, 1)  # vertical edge / stripe detector




def planted_net(kernel: torch.Tensor, seed: int = 0) -> nn.Module:
    """conv(1 -> 2, 6x6) + ReLU; channel 0 is ``kernel`` (zero-mean, norm 3), channel 1 random."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential()
    m.add_module("conv", nn.Conv2d(1, 2, 6, bias=True))
    m.add_module("relu", nn.ReLU())
    k = kernel - kernel.mean()
    with torch.no_grad():
        m.conv.weight[0, 0] = k / k.norm() * 3
        m.conv.weight[1, 0] = torch.randn(6, 6, generator=g)
        m.conv.bias.fill_(0.1)  # a grey image gives a small positive response: no dead unit at the start
    return m.eval()


def random_kernel(seed: int) -> torch.Tensor:
    return torch.randn(6, 6, generator=torch.Generator().manual_seed(100 + seed))


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.flatten() - a.mean()
    b = b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def top_ncc(img: torch.Tensor, pattern: torch.Tensor, k: int = 10) -> float:
    """Mean of the k best normalised cross-correlations between 6x6 patches of the image and ``pattern``."""
    patches = F.unfold(img[:1, :1], pattern.shape[-1])[0].T
    p = patches - patches.mean(1, keepdim=True)
    q = (pattern - pattern.mean()).flatten()
    c = (p @ q) / (p.norm(dim=1) * q.norm() + 1e-8)
    return float(c.topk(k).values.mean())


@pytest.mark.parametrize("param", ["fft", "pixel"])
def test_neuron_visualisation_recovers_the_planted_filter_and_not_a_random_one(param):
    # The pre-activation of one conv neuron is linear in its 6x6 receptive field, so under the [0, 1]
    # box its maximiser is the filter's sign pattern: the visualisation must equal the filter up to scale.
    obj = fv.neuron("conv", 0, (5, 5))  # output cell (5, 5) sees input rows/cols 5..10
    rf = (slice(5, 11), slice(5, 11))
    res = fv.visualize(planted_net(CHECKER), obj, steps=80, image_shape=(1, 16, 16), seed=0, param=param,
                       transforms=None)
    assert res.image.shape == (1, 1, 16, 16)
    assert corr(res.image[0, 0][rf], CHECKER) > 0.95
    for s in range(3):  # controls: the same procedure on random filters
        k = random_kernel(s)
        ctrl = fv.visualize(planted_net(k), obj, steps=80, image_shape=(1, 16, 16), seed=0, param=param,
                            transforms=None)
        patch = ctrl.image[0, 0][rf]
        assert abs(corr(patch, CHECKER)) < 0.45  # unrelated to the planted pattern ...
        assert corr(patch, k) > 0.7  # ... but the method recovers each unit's own filter


def test_channel_visualisation_with_robustness_transforms_shows_the_planted_stripes():
    # Channel objective (mean over all positions) with lucent's jitter/scale/rotate transforms: the image
    # must be tiled with the planted pattern, far more than for random filters.
    obj = fv.channel("relu", 0)
    planted = fv.visualize(planted_net(STRIPES), obj, steps=128, image_shape=(1, 32, 32), seed=0)
    score = top_ncc(planted.image, STRIPES)
    controls = [top_ncc(fv.visualize(planted_net(random_kernel(s)), obj, steps=128, image_shape=(1, 32, 32),
                                     seed=0).image, STRIPES) for s in range(3)]
    assert score > 0.88
    assert score > max(controls) + 0.15, (score, controls)
    assert planted.history[-1] > planted.history[0]


@pytest.mark.parametrize("param", ["fft", "pixel"])
def test_colour_unit_visualisation_has_the_preferred_colour(param):
    # A 1x1 conv that computes R - (G + B)/2 prefers red; G - (R + B)/2 green; B - (R + G)/2 blue.
    for target in (0, 1, 2):
        w = torch.full((3,), -0.5)
        w[target] = 1.0
        m = nn.Sequential()
        m.add_module("conv", nn.Conv2d(3, 1, 1, bias=False))
        with torch.no_grad():
            m.conv.weight[0, :, 0, 0] = w
        res = fv.visualize(m, fv.channel("conv", 0), steps=150, image_shape=(3, 8, 8), seed=0, param=param)
        means = res.image.mean((0, 2, 3))
        others = [means[c] for c in range(3) if c != target]
        assert float(means[target]) > max(float(o) for o in others) + 0.1, means


def test_objective_algebra_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    cnn = torch.randn(4, 5, 3, 3, generator=g)
    vit = torch.randn(4, 7, 6, generator=g)
    cache = ActivationCache({"cnn": cnn, "vit": vit},
                            {"cnn": ("batch", "feature", "pos", "pos"), "vit": ("batch", "pos", "feature")})
    v = torch.randn(6, generator=g)
    obj = 2 * fv.channel("cnn", 1) - fv.neuron("cnn", 3, (1, 2)) + fv.direction("vit", v) / 4 - 1.5
    expected = 2 * cnn[:, 1].mean((1, 2)) - cnn[:, 3, 1, 2] + (vit @ (v / v.norm())).mean(1) / 4 - 1.5
    torch.testing.assert_close(obj(cache), expected)
    assert set(obj.sites) == {"cnn", "vit"}
    assert "channel(cnn, 1)" in obj.description
    total = sum([fv.channel("cnn", 0), fv.channel("cnn", 2)])
    torch.testing.assert_close(total(cache), cnn[:, 0].mean((1, 2)) + cnn[:, 2].mean((1, 2)))
    # cosine direction and a position: cos(a[b, p], v) at one token
    cos = fv.direction("vit", v, cosine=True, pos=3)(cache)
    torch.testing.assert_close(cos, F.cosine_similarity(vit[:, 3], v[None], dim=-1))
    # neuron defaults to the centre cell (lucent); a features function sees [N, d] rows
    torch.testing.assert_close(fv.neuron("cnn", 0)(cache), cnn[:, 0, 1, 1])
    feat = fv.feature("vit", lambda rows: rows.relu() * 2, 4)
    torch.testing.assert_close(feat(cache), (vit[..., 4].relu() * 2).mean(1))
    with pytest.raises(TypeError):
        fv.channel("cnn", 0) * fv.channel("cnn", 1)
    with pytest.raises(IndexError):
        fv.channel("cnn", 9)(cache)


def test_fft_parameterisation_scales_each_frequency_by_one_over_f():
    # A single Fourier coefficient renders to a cosine whose amplitude is 2 * scale(f) / sqrt(HW) / 4 with
    # scale(f) = 1 / max(f, 1/max(H, W)) (irfft with norm="ortho", lucid's magic 4).
    h = w = 16
    (spec,), render = fv.fft_image((1, 1, h, w), sd=0.0)
    for kx in (1, 2, 5):
        with torch.no_grad():
            spec.zero_()
            spec[0, 0, 0, kx, 0] = 1.0
        img = render()[0, 0].detach()
        f = kx / w
        xs = torch.arange(w, dtype=torch.float32)
        expected = (2 / f / math.sqrt(h * w) / 4) * torch.cos(2 * math.pi * f * xs)
        torch.testing.assert_close(img, expected.expand(h, w), atol=1e-5, rtol=1e-4)


def test_visualize_is_deterministic_and_leaves_the_model_untouched(tmp_path):
    net = planted_net(CHECKER).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.conv.bias.requires_grad_(False)
    hm = HookedModel(net)
    a = fv.visualize(hm, fv.channel("relu", 0), steps=15, image_shape=(1, 12, 12), seed=3, batch=2)
    b = fv.visualize(hm, fv.channel("relu", 0), steps=15, image_shape=(1, 12, 12), seed=3, batch=2)
    assert torch.equal(a.image, b.image) and a.history == b.history
    assert a.image.shape == (2, 1, 12, 12) and not torch.equal(a.image[0], a.image[1])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training and not net.conv.bias.requires_grad and net.conv.weight.requires_grad
    assert all(p.grad is None for p in net.parameters())
    assert not net.conv._forward_hooks and not net.relu._forward_hooks
    fig = a.plot()
    assert len(fig.axes) == 2
    d = json.loads(a.save(tmp_path / "fv.json").read_text())
    assert d["image_shape"] == [2, 1, 12, 12] and d["config"]["seed"] == 3 and len(d["history"]) == 15


def test_visualize_reports_bad_input_clearly():
    net = planted_net(CHECKER)
    with pytest.raises(KeyError, match="closest"):
        fv.visualize(net, fv.channel("rleu", 0), steps=1, image_shape=(1, 12, 12))
    with pytest.raises(ValueError, match="image_shape"):
        fv.visualize(net, fv.channel("relu", 0), steps=1, image_shape=(12, 12))
    with pytest.raises(TypeError, match="Objective"):
        fv.visualize(net, "relu", steps=1, image_shape=(1, 12, 12))


@pytest.mark.parametrize("name, site, lr, model_size", [("digits-cnn", "fc", 0.05, None),
                                                         ("digits-vit", "head", 0.2, (8, 8))])
def test_class_logit_visualisations_are_classified_as_their_class(name, site, lr, model_size):
    # Maximising a class logit must give an image the model assigns to that class, for every digit.
    import vision.zoo as zoo
    from vision.data import DIGITS_MEAN, DIGITS_STD

    hm = zoo.load(name)
    site = "logits" if "logits" in hm.sites else site  # the vision adapter's canonical name, when present
    norm = fv.normalizer(DIGITS_MEAN, DIGITS_STD)
    obj = [fv.channel(site, c) for c in range(10)]
    for c in range(10):
        res = fv.visualize(hm, obj[c], steps=100, image_shape=(1, 8, 8), seed=0, lr=lr, preprocess=norm,
                           model_size=model_size)
        assert int(hm(norm(res.image)).argmax(-1)[0]) == c


def test_transforms_keep_or_change_size_as_documented():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    assert fv.shift(2)(x, g).shape == x.shape and fv.pad(3)(x, g).shape == (2, 3, 38, 38)
    assert fv.jitter(4)(x, g).shape == (2, 3, 29, 29)
    assert fv.random_rotate([90])(x, g).shape == x.shape
    torch.testing.assert_close(fv.random_rotate([0])(x, g), x)
    # a 90 degree rotation of a square image is a transpose-and-flip (up to interpolation at the border)
    rot = fv.random_rotate([90])(x, g)
    torch.testing.assert_close(rot[..., 2:-2, 2:-2], torch.rot90(x, 1, (2, 3))[..., 2:-2, 2:-2], atol=1e-4,
                               rtol=1e-4)
    shifted = fv.shift(1)(x, g)  # a translation: some 30x30 window of the input reappears unchanged
    assert any(torch.equal(shifted[..., 1:-1, 1:-1], x[..., 1 + dy:31 + dy, 1 + dx:31 + dx])
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_a_unit_that_never_fires_is_reported_with_its_dataset_maximum():
    """Before: a dead unit returned its initial noise with objective 0 and no warning."""
    import numpy as np

    from interp_core.errors import InterpWarning
    from interp_core.results import Result

    net = planted_net(CHECKER)
    with torch.no_grad():
        net.conv.bias[1] = -1000.0  # channel 1 is negative on every [0, 1] image: its ReLU never fires
    data = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with pytest.warns(InterpWarning, match=r"never fired.*initial noise.*maximum over the 40 examples"):
        res = fv.visualize(net, fv.channel("relu", 1), steps=6, image_shape=(1, 16, 16), data=data.numpy(),
                           progress=False)
    assert res.dead and res.history == [0.0] * 6 and isinstance(res, Result)
    with torch.no_grad():
        truth = float(net(data)[:, 1].mean((1, 2)).max())  # brute force over the data
    assert res.dataset_max == pytest.approx(truth)
    (_, render) = fv.fft_image((1, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.image, fv.to_valid_image(render(), False).detach())  # the initial noise
    assert "dataset max" in res.plot()._suptitle.get_text()
    # without data the warning says how to get the maximum; a live unit gives no warning
    with pytest.warns(InterpWarning, match="pass data="):
        fv.visualize(net, fv.channel("relu", 1), steps=2, image_shape=(1, 16, 16), progress=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", InterpWarning)
        live = fv.visualize(net, fv.channel("relu", 0), steps=3, image_shape=(1, 16, 16), data=data,
                            progress=False)
    with torch.no_grad():
        assert not live.dead and live.dataset_max == pytest.approx(float(net(data)[:, 0].mean((1, 2)).max()))
    np.testing.assert_allclose(live.to_dict()["dataset_max"], live.dataset_max)


def test_default_transforms_scale_to_the_input_and_fixed_size_models_get_their_size():
    """Before: the standard transforms grew the canvas (pad + jitter), which a fixed-size ViT rejects."""
    import timm

    assert [t.__qualname__.split(".")[0] for t in fv.standard_transforms(8)] == ["shift"]
    g = torch.Generator().manual_seed(0)
    for size in (8, 16, 24):
        x = torch.rand(1, 1, size, size)
        tfs = fv.standard_transforms(size)
        assert all(t(x, g).shape == x.shape for t in tfs)  # size preserved below 32 px
    with pytest.raises(ValueError, match="image_size"):
        fv.standard_transforms(0)
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3).eval()
    assert fv.fixed_input_size(vit) == (32, 32)
    res = fv.visualize(vit, fv.channel("logits", 1), steps=3, image_shape=(3, 32, 32), progress=False)
    assert res.config["model_size"] == [32, 32] and res.image.shape == (1, 3, 32, 32)
    assert fv.fixed_input_size(planted_net(CHECKER)) is None

