"""Image attribution maps. Truths: captum called directly on the same model, Grad-CAM written here in plain
torch for ViT tokens, the closed form of attention rollout under planted patterns, scipy's Spearman, and the
published behaviour of the randomisation test (Adebayo et al. 2018) on a trained model."""

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

import vision
from interp_core.attribution import attribute
from interp_core.errors import InputError
from interp_core.interventions import Replace
from interp_core.metrics import logit
from vision.attribution import (
    attention_rollout,
    attribution_map,
    mass_fraction,
    overlay,
    randomization_test,
    spearman,
    tokens_to_grid,
)


@pytest.fixture(scope="module")
def cnn():
    return vision.zoo.load("digits-cnn")


@pytest.fixture(scope="module")
def digits():
    X, y = vision.zoo.test_data("digits-cnn")
    return X[:12], y[:12]


def test_input_methods_equal_captum(cnn, digits):
    X, y = digits
    net = cnn.model
    ig = attribution_map(cnn, X, "integrated_gradients", target=y, n_steps=20)
    ref = IntegratedGradients(net).attribute(X, target=y, n_steps=20, baselines=torch.zeros_like(X))
    torch.testing.assert_close(ig.maps, ref.sum(1), rtol=1e-5, atol=1e-6)
    assert ig.maps.shape == (12, 8, 8)
    sal = attribution_map(cnn, X, "saliency", target=y)
    torch.testing.assert_close(sal.maps, Saliency(net).attribute(X.clone(), target=y).sum(1), rtol=1e-6, atol=1e-7)
    # the default target is the model's prediction
    pred = net(X).argmax(1)
    torch.testing.assert_close(attribution_map(cnn, X, "saliency").maps,
                               Saliency(net).attribute(X.clone(), target=pred).sum(1))


def test_cnn_gradcam_equals_captum(cnn, digits):
    X, y = digits
    net = cnn.model
    res = attribution_map(cnn, X, "gradcam", site="layer2.0", target=y)
    ref = LayerGradCam(net, net.layer2[0]).attribute(X, target=y)  # [B, 1, 4, 4]
    torch.testing.assert_close(res.grid, ref[:, 0], rtol=1e-5, atol=1e-6)
    up = LayerAttribution.interpolate(ref, (8, 8), interpolate_mode="bilinear")
    torch.testing.assert_close(res.maps, up[:, 0], rtol=1e-5, atol=1e-6)


def test_vit_token_gradcam_on_patch_grid():
    hm = vision.zoo.load("digits-vit")
    X, y = vision.zoo.test_data("digits-vit")
    X, y = X[:6], y[:6]
    res = attribution_map(hm, X, "gradcam", site="blocks.1.resid_post", target=y)
    assert res.grid.shape == (6, 4, 4) and res.maps.shape == (6, 8, 8)  # 8x8 image, 2x2 patches
    # plain torch: keep the block output, take d logit / d tokens, average over patch tokens, weight, sum
    model = hm.model
    kept = {}

    def keep(m, a, o):
        o.retain_grad()
        kept["a"] = o

    h = model.blocks[1].register_forward_hook(keep)
    out = model(X)
    h.remove()
    out.gather(1, y[:, None]).sum().backward()
    a, g = kept["a"][:, 1:].detach(), kept["a"].grad[:, 1:]
    cam = (g.mean(1, keepdim=True) * a).sum(-1).reshape(6, 4, 4)
    torch.testing.assert_close(res.grid, cam, rtol=1e-5, atol=1e-6)
    model.zero_grad(set_to_none=True)


def test_attention_rollout_closed_forms():
    torch.manual_seed(0)
    hm = vision.load("timm:vit_tiny_patch16_224", img_size=32, depth=3, num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    n = 5  # CLS + 2x2 patches
    uniform = {f"blocks.{i}.attn.pattern": Replace(lambda a: torch.full_like(a, 1 / n)) for i in range(3)}
    ro = attention_rollout(hm, x, interventions=uniform)
    # (0.5 U + 0.5 I)^L = 0.5^L I + (1 - 0.5^L) U for the idempotent U = 1 1^T / n
    want = 0.5 ** 3 * torch.eye(n) + (1 - 0.5 ** 3) / n
    torch.testing.assert_close(ro.config["rollout"], want.expand(2, n, n), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ro.grid, torch.full((2, 2, 2), (1 - 0.5 ** 3) / n), rtol=1e-6, atol=1e-7)
    # attention only to oneself: the rollout is the identity and no patch gets CLS mass
    eye = {f"blocks.{i}.attn.pattern": Replace(lambda a: torch.eye(n).expand_as(a).clone()) for i in range(3)}
    torch.testing.assert_close(attention_rollout(hm, x, interventions=eye).config["rollout"],
                               torch.eye(n).expand(2, n, n))
    # the real model: rows are distributions (products of row-stochastic matrices)
    ro = attention_rollout(hm, x)
    r = ro.config["rollout"]
    torch.testing.assert_close(r.sum(-1), torch.ones(2, n))
    assert (r >= 0).all() and ro.maps.shape == (2, 32, 32)
    # a rollout of one block without the residual term is that block's head-averaged CLS attention
    _, c = hm.run_with_cache(x, sites=["blocks.0.attn.pattern"])
    one = attention_rollout(hm, x, residual=False, blocks=[0])
    torch.testing.assert_close(one.grid, tokens_to_grid(c["blocks.0.attn.pattern"].mean(1)[:, 0], hm.model))


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 30, generator=g), torch.randn(4, 30, generator=g)
    b[:, :10] = a[:, :10]
    a[:, 20:] = 0.0  # ties
    got = spearman(a, b)
    want = [spearmanr(a[i].numpy(), b[i].numpy()).statistic for i in range(4)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_randomization_sanity_check_on_trained_model(cnn, digits):
    X, _ = digits
    before = {k: v.clone() for k, v in cnn.model.state_dict().items()}
    res = randomization_test(cnn, X, method="saliency", steps=["fc", "layer2", "layer1", "stem"])
    assert res.steps == ["original", "fc", "layer2", "layer1", "stem"]
    assert res.spearman_abs[0] == pytest.approx(1.0)
    # Adebayo et al.: maps of a faithful method decorrelate as the weights are randomised
    assert res.spearman_abs[-1] < 0.5 and res.spearman_abs[-1] < res.spearman_abs[0] - 0.4
    assert res.spearman_abs_per_image.shape == (5, 12)
    # the model itself is untouched (the test randomises a copy)
    for k, v in cnn.model.state_dict().items():
        assert torch.equal(v, before[k])
    assert len(res.plot().axes) == 1
    assert res.to_dict()["steps"] == res.steps


def test_overlay_and_mass(cnn, digits):
    X, y = digits
    res = attribution_map(cnn, X[:3], "integrated_gradients", target=y[:3], n_steps=8)
    fig = res.plot(n=3)
    assert len(fig.axes) == 4  # three captioned overlays and one colour bar
    assert [a.get_title() for a in fig.axes[:3]] == [f"image {i}, target {int(y[i])}" for i in range(3)]
    assert fig.axes[3].get_ylabel() == "attribution"
    fig2 = overlay(X[0], res.grid[0])
    assert len(fig2.axes) == 1
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4] = True
    frac = mass_fraction(res.maps, mask)
    want = res.maps.abs()[:, :4].sum((1, 2)) / res.maps.abs().sum((1, 2))
    torch.testing.assert_close(frac, want)
    torch.testing.assert_close(res.mass_in(~mask), 1 - want)
    with pytest.raises(InputError, match="site="):
        attribution_map(cnn, X, "gradcam")
    with pytest.raises(InputError, match="closest"):
        attribution_map(cnn, X, "gradcan", site="layer2.0")


def test_signed_saliency_is_passed_through(cnn, digits):
    X, y = digits
    net = cnn.model
    signed = attribution_map(cnn, X, "saliency", target=y, abs=False)
    ref = Saliency(net).attribute(X.clone(), target=y, abs=False)
    torch.testing.assert_close(signed.maps, ref.sum(1), rtol=1e-6, atol=1e-7)
    assert (signed.maps < 0).any()
    absolute = attribution_map(cnn, X, "saliency", target=y, abs=True)
    torch.testing.assert_close(absolute.maps, ref.abs().sum(1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("site", ["blocks.1.resid_post", "blocks.1"])
def test_one_gradcam_for_vision_and_core(site):
    # the same call gives the same numbers: vision's map is the core's map placed on the patch grid
    hm = vision.zoo.load("digits-vit")
    X, y = vision.zoo.test_data("digits-vit")
    X, y = X[:5], y[:5]
    img = attribution_map(hm, X, "gradcam", site=site, target=y)
    core = attribute(hm, X, "gradcam", site=site, target=y)
    assert core.axes == ("batch", "pos") and core.config["positions"] == list(range(1, 17))
    torch.testing.assert_close(img.grid, core.attributions.reshape(5, 4, 4))
    # and through a plain nn.Module (the registry gives it the same adapter)
    torch.testing.assert_close(attribution_map(hm.model, X, "gradcam", site=site, target=y).grid, img.grid)


def test_one_gradcam_on_a_cnn(cnn, digits):
    X, y = digits
    img = attribution_map(cnn, X, "gradcam", site="layer2.0", target=y)
    core = attribute(cnn.model, X, "gradcam", site="layer2.0", target=y)
    torch.testing.assert_close(img.grid, core.attributions)


def test_vit_gradcam_on_frozen_model_and_under_no_grad():
    import copy

    hm = vision.zoo.load("digits-vit")
    X, y = vision.zoo.test_data("digits-vit")
    X, y = X[:4], y[:4]
    want = attribution_map(hm, X, "gradcam", site="blocks.1.resid_post", target=y).grid
    frozen = copy.deepcopy(hm.model).requires_grad_(False)
    torch.testing.assert_close(attribution_map(frozen, X, "gradcam", site="blocks.1.resid_post", target=y).grid,
                               want)
    with torch.no_grad():
        got = attribution_map(hm, X, "gradcam", site="blocks.1.resid_post", target=y).grid
        ig = attribution_map(frozen, X, "integrated_gradients", target=y, n_steps=8).maps
    torch.testing.assert_close(got, want)
    ref = IntegratedGradients(hm.model).attribute(X, target=y, n_steps=8).sum(1)
    torch.testing.assert_close(ig, ref, rtol=1e-5, atol=1e-6)


def test_randomization_test_with_a_metric_and_signed_saliency(cnn, digits):
    # truth: captum's signed saliency and scipy's Spearman on a copy re-initialised by hand the same way
    import copy

    from scipy.stats import spearmanr

    from vision.attribution import _reinit

    X, y = digits
    torch.manual_seed(7)
    state = torch.get_rng_state()
    by_metric = randomization_test(cnn, X, method="saliency", metric=logit(y), steps=["fc"], seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the re-initialisation uses a private generator
    by_target = randomization_test(cnn, X, method="saliency", target=y, steps=["fc"], seed=3)
    np.testing.assert_allclose(by_metric.spearman, by_target.spearman)
    np.testing.assert_allclose(by_metric.spearman_abs, by_target.spearman_abs)
    net = copy.deepcopy(cnn.model).eval()
    _reinit(net.fc, torch.Generator().manual_seed(3))
    a = Saliency(cnn.model).attribute(X.clone(), target=y, abs=False).sum(1)
    b = Saliency(net).attribute(X.clone(), target=y, abs=False).sum(1)
    signed = np.mean([spearmanr(a[i].flatten(), b[i].flatten()).statistic for i in range(len(X))])
    absolute = np.mean([spearmanr(a[i].abs().flatten(), b[i].abs().flatten()).statistic for i in range(len(X))])
    assert by_metric.spearman[1] == pytest.approx(signed, abs=1e-5)
    assert by_metric.spearman_abs[1] == pytest.approx(absolute, abs=1e-5)
    assert abs(signed - absolute) > 1e-3  # the signed column is not the absolute one
