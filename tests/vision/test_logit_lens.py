"""The ViT logit lens. Truths: the model's own logits (last layer), the zoo card's test accuracy, and a
plain-torch decoding of an intermediate block written here (forward hook + timm's norm and head)."""

import json

import numpy as np
import pytest
import torch

import vision
from vision.lens import LogitLensResult, decode


@pytest.mark.parametrize("kwargs", [{}, {"global_pool": "avg"}, {"init_values": 0.1}],
                         ids=["token-pool", "avg-pool+fc_norm", "layer-scale"])
def test_last_layer_equals_logits(kwargs):
    torch.manual_seed(0)
    hm = vision.load("timm:vit_tiny_patch16_224", img_size=32, depth=3, num_classes=5, **kwargs)
    if kwargs.get("global_pool") == "avg":  # timm moves the final norm to fc_norm after pooling
        assert isinstance(hm.model.norm, torch.nn.Identity) and isinstance(hm.model.fc_norm, torch.nn.LayerNorm)
    x = torch.randn(6, 3, 32, 32)
    res = vision.logit_lens(hm, x, keep_logits=True)
    with torch.no_grad():
        logits = hm(x)
    assert torch.equal(res.logits[-1], logits)
    assert res.kl_to_final[-1] == 0 and res.agreement[-1] == 1
    assert res.sites == ["embed", "blocks.0.resid_post", "blocks.1.resid_post", "blocks.2.resid_post"]


def test_distilled_deit_last_layer_equals_logits():
    torch.manual_seed(0)
    hm = vision.load("timm:deit_tiny_distilled_patch16_224", img_size=32, depth=2, num_classes=4)
    x = torch.randn(3, 3, 32, 32)
    res = vision.logit_lens(hm, x, keep_logits=True)
    with torch.no_grad():
        assert torch.equal(res.logits[-1], hm(x))


def test_trained_vit_lens_against_plain_torch_and_card():
    hm = vision.zoo.load("digits-vit")
    X, y = vision.zoo.test_data("digits-vit")
    res = vision.logit_lens(hm, (X, y), keep_logits=True)
    card = vision.zoo.card("digits-vit")
    # last layer: the model's accuracy as recorded when it was trained
    assert res.final_accuracy == pytest.approx(card["test_accuracy"], abs=1e-9)
    assert res.accuracy[-1] == pytest.approx(card["test_accuracy"], abs=1e-9)
    # block 1 decoded by hand: forward hook on the block, then timm's norm, CLS token, head
    model = hm.model
    seen = {}
    h = model.blocks[1].register_forward_hook(lambda m, a, o: seen.setdefault("r", o.detach()))
    with torch.no_grad():
        final = model(X)
        manual = model.head(model.fc_norm(model.norm(seen["r"])[:, 0]))
    h.remove()
    k = res.sites.index("blocks.1.resid_post")
    torch.testing.assert_close(res.logits[k], manual, rtol=1e-5, atol=1e-5)
    assert res.accuracy[k] == pytest.approx(float((manual.argmax(1) == y).double().mean()))
    p, q = final.log_softmax(1), manual.log_softmax(1)
    assert res.kl_to_final[k] == pytest.approx(float((p.exp() * (p - q)).sum(1).mean()), rel=1e-4)
    # the class becomes decodable with depth: embeddings are near chance, the last block is not
    assert res.accuracy[0] < 0.5 < res.accuracy[-1]
    # pool='cls' is what this token-pooled model does
    torch.testing.assert_close(decode(model, seen["r"], "cls"), manual, rtol=0, atol=0)


def test_result_plot_and_save(tmp_path):
    torch.manual_seed(0)
    hm = vision.load("timm:vit_tiny_patch16_224", img_size=32, depth=2, num_classes=3)
    ds = torch.utils.data.TensorDataset(torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1]))
    res = vision.logit_lens(hm, ds, batch_size=2)
    assert isinstance(res, LogitLensResult) and res.n == 5 and res.accuracy.shape == (3,)
    fig = res.plot()
    assert len(fig.axes) == 2
    res.save(tmp_path / "lens.json")
    d = json.loads((tmp_path / "lens.json").read_text())
    assert np.allclose(d["kl_to_final"], res.kl_to_final) and d["config"]["pool"] == "auto"
    with pytest.raises(ValueError, match="token residuals"):
        vision.logit_lens(hm, torch.randn(2, 3, 32, 32), sites=["blocks.0.attn.z"])


def test_logit_lens_is_a_function_and_the_module_is_plain():
    """Before: ``vision.logit_lens`` was the submodule with its class swapped to make it callable."""
    import inspect
    import types

    import vision.lens

    assert inspect.isfunction(vision.logit_lens) and not isinstance(vision.logit_lens, types.ModuleType)
    assert type(vision.lens) is types.ModuleType and inspect.isfunction(vision.lens.logit_lens)
    assert vision.logit_lens.__module__ == "vision"  # importing vision.lens does not shadow the function


def test_lens_takes_models_and_data_through_the_boundary():
    """A plain timm model (the ViT adapter via the registry), numpy inputs, an (x, y) pair and a DataLoader of
    (x, y) all give the same numbers; the model's train flag is restored (the lens runs in eval mode)."""
    import timm
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=3, drop_rate=0.5)
    vit.train()
    x = torch.randn(5, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1])
    a = vision.logit_lens(vit, (x, y), keep_logits=True, progress=False)
    b = vision.logit_lens(vit, x.numpy(), labels=y.numpy(), keep_logits=True, progress=False)
    c = vision.logit_lens(vit, DataLoader(TensorDataset(x, y), batch_size=2), keep_logits=True, progress=False)
    assert vit.training and all(m.training for m in vit.modules())
    vit.eval()
    with torch.no_grad():
        logits = vit(x)
    for r in (a, b, c):
        torch.testing.assert_close(r.logits[-1], logits, rtol=1e-5, atol=1e-5)  # eval mode: dropout off
        np.testing.assert_allclose(r.accuracy, a.accuracy)
        assert r.final_accuracy == pytest.approx(float((logits.argmax(1) == y).double().mean()))


def test_lens_refuses_models_without_token_residuals():
    import torchvision

    from interp_core.errors import InputError, SiteError

    with pytest.raises(SiteError, match="resid_post"):
        vision.logit_lens(torchvision.models.resnet18(num_classes=3), torch.randn(2, 3, 32, 32))
    torch.manual_seed(0)
    hm = vision.load("timm:vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3)
    with pytest.raises(InputError, match="pool"):
        vision.logit_lens(hm, torch.randn(2, 3, 32, 32), pool="max")
    with pytest.raises(InputError, match="NaN"):
        vision.logit_lens(hm, torch.full((2, 3, 32, 32), float("nan")))
