"""Path patching on a trained ViT against the closed form of a residual stream.

In a pre-norm transformer the final residual is the sum of every component's output. Freezing every
component downstream of a head at its clean value leaves one path from the head to the output: the direct
one, along which the head's change reaches the final residual through its slice of the output projection,
``delta = (z_corr[h] - z_clean[h]) @ W_O[:, h].T``. Path patching with the final norm as receiver must give
``metric(head(norm(resid_clean + delta)))`` exactly.
"""

import pytest
import torch

import vision
from interp_core import metrics
from interp_core.interventions import Patch
from interp_core.patching import path_patching


def test_direct_path_of_a_head_matches_the_residual_closed_form():
    hm = vision.zoo.load("digits-vit")
    vit = hm.model
    x, y = vision.zoo.test_data("digits-vit")
    clean, corrupted = x[y == 3][:16], x[y == 8][:16]
    metric = metrics.logit_diff(3, 8)
    head, dh = 1, vit.blocks[0].attn.head_dim
    later = ["blocks.0.mlp.out"] + [f"blocks.{i}.{c}" for i in (1, 2) for c in ("attn.out", "mlp.out")]
    res = path_patching(hm, clean, corrupted, "blocks.0.attn.z", ["final_norm"], metric, freeze=later,
                        sender_heads=[head])

    _, c = hm.run_with_cache(clean, sites=["blocks.0.attn.z", "blocks.2.resid_post"])
    _, k = hm.run_with_cache(corrupted, sites=["blocks.0.attn.z"])
    w = vit.blocks[0].attn.proj.weight[:, head * dh:(head + 1) * dh]
    delta = (k["blocks.0.attn.z"][:, :, head] - c["blocks.0.attn.z"][:, :, head]) @ w.T
    with torch.no_grad():
        expected = float(metric(vit.forward_head(vit.norm(c["blocks.2.resid_post"] + delta))).mean())
    assert abs(res.metric - expected) < 1e-4
    # the direct path is not the whole effect: patching the head alone also moves the later blocks
    total = hm.run_with_interventions(clean, {"blocks.0.attn.z": Patch(k, heads=[head])})
    assert abs(float(metric(total.detach()).mean()) - expected) > 1e-3
    assert abs(res.clean_metric - float(metric(vit(clean).detach()).mean())) < 1e-5


def test_plain_module_numpy_inputs_and_plot_give_the_zoo_models_result():
    """Through the boundary: the bare timm module (wrapped by the vision adapter) with numpy inputs gives the
    HookedModel's numbers, and the result draws its standard figure."""
    hm = vision.zoo.load("digits-vit")
    x, y = vision.zoo.test_data("digits-vit")
    clean, corrupted = x[y == 3][:8], x[y == 8][:8]
    metric = metrics.logit_diff(3, 8)
    ref = path_patching(hm, clean, corrupted, "blocks.0.attn.z", ["blocks.2.resid_pre"], metric, sender_heads=[0])
    got = path_patching(hm.model, clean.numpy(), corrupted.numpy(), "blocks.0.attn.z", ["blocks.2.resid_pre"],
                        metric, sender_heads=[0])
    assert got.metric == ref.metric and got.effect == ref.effect
    assert got.effect == pytest.approx((got.metric - got.corrupted_metric) / (got.clean_metric - got.corrupted_metric),
                                       rel=1e-12)
    fig = got.plot()
    assert [p.get_height() for p in fig.axes[0].patches] == [got.clean_metric, got.metric, got.corrupted_metric]
