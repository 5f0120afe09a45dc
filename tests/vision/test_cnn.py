"""The CNN adapter: default block sites per family, reused modules, in-place activations, channels-last
internals, cell patching. Truths: plain torch forward hooks and the architectures' own structure."""

import torch
from torch import nn

import vision
from interp_core.interventions import Patch
from vision.cnn import block_sites

X32 = torch.zeros(1, 3, 32, 32)


def test_default_block_sites_per_family():
    import timm
    import torchvision

    tv = torchvision.models.resnet18()
    assert block_sites(tv) == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert block_sites(timm.create_model("resnet18")) == block_sites(tv)
    cnx = timm.create_model("convnext_atto")
    assert block_sites(cnx) == [f"stages.{i}.blocks.{j}" for i, n in enumerate((2, 2, 6, 2)) for j in range(n)]
    vgg = torchvision.models.vgg11(num_classes=3)
    assert block_sites(vgg) == [f"features.{i}" for i in range(len(vgg.features))]
    mob = torchvision.models.mobilenet_v3_small()
    assert block_sites(mob) == [f"features.{i}" for i in range(13)]
    hm = vision.wrap(tv, example_input=X32)
    assert hm.default_sites == block_sites(tv) + ["logits"]


def test_reused_relu_and_inplace_activations():

    torch.manual_seed(0)
    hm = vision.load("torchvision:resnet18", example_input=X32)
    # torchvision's BasicBlock calls one ReLU twice: one site per call
    assert "layer1.0.relu#0" in hm.sites and "layer1.0.relu#1" in hm.sites
    x = torch.randn(2, 3, 32, 32)
    _, c = hm.run_with_cache(x, sites=["layer1.0.relu#1", "layer1.0"])
    torch.testing.assert_close(c["layer1.0.relu#1"], c["layer1.0"], rtol=0, atol=0)
    # VGG: features.0 (conv) is followed by ReLU(inplace=True); the cached conv output keeps its negatives
    torch.manual_seed(0)
    vgg = vision.load("torchvision:vgg11", num_classes=3, example_input=X32)
    assert isinstance(vgg.model.features[1], nn.ReLU) and vgg.model.features[1].inplace
    _, c = vgg.run_with_cache(x, sites=["features.0", "features.1"])
    conv = vgg.model.features[0]
    with torch.no_grad():
        want = conv(x)
    torch.testing.assert_close(c["features.0"], want, rtol=0, atol=0)
    assert (c["features.0"] < 0).any()
    torch.testing.assert_close(c["features.1"], want.clamp_min(0), rtol=0, atol=0)


def test_convnext_channels_last_axes():
    torch.manual_seed(0)
    atto = vision.load("timm:convnext_atto", example_input=X32)  # conv_mlp=True: all NCHW
    assert atto.sites["stages.0.blocks.0.mlp.fc1"].axes == ("batch", "feature", "pos", "pos")
    hm = vision.load("timm:convnext_atto", conv_mlp=False, example_input=X32)  # LayerNorm + Linear MLP, NHWC
    blk = "stages.0.blocks.0"
    assert hm.sites[f"{blk}.conv_dw"].axes == ("batch", "feature", "pos", "pos")
    assert hm.sites[f"{blk}.mlp.fc1"].axes == ("batch", "pos", "pos", "feature")
    assert hm.sites[f"{blk}.norm"].axes == ("batch", "pos", "pos", "feature")
    _, c = hm.run_with_cache(torch.randn(2, 3, 32, 32), sites=[f"{blk}.mlp.fc1", blk])
    fc1 = c[f"{blk}.mlp.fc1"]  # [B, h, w, 4C]
    rows = c.features(f"{blk}.mlp.fc1")
    assert rows.shape == (2 * fc1.shape[1] * fc1.shape[2], fc1.shape[3])
    torch.testing.assert_close(rows[1], fc1[0, 0, 1])
    assert c.axes(blk) == ("batch", "feature", "pos", "pos")


def test_patch_cells_changes_only_their_receptive_field():
    """Patching one cell of a ResNet stage changes later cells only within the next blocks' receptive field."""
    torch.manual_seed(0)
    hm = vision.load("torchvision:resnet18", example_input=torch.zeros(1, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    x2 = torch.randn(1, 3, 64, 64)
    _, src = hm.run_with_cache(x2, sites=["layer1.0"])
    _, clean = hm.run_with_cache(x, sites=["layer1.1"])
    _, patched = hm.run_with_cache(x, sites=["layer1.1", "layer1.0"],
                                   interventions={"layer1.0": Patch(src, positions=[(0, 0)])})
    torch.testing.assert_close(patched["layer1.0"][0, :, 0, 0], src["layer1.0"][0, :, 0, 0])
    diff = (patched["layer1.1"] - clean["layer1.1"]).abs().amax(1)[0]  # [h, w]
    # layer1.1 has two 3x3 convs: a change at (0, 0) reaches at most cells (<=2, <=2)
    assert diff[:3, :3].max() > 0
    assert diff[3:, :].max() == 0 and diff[:, 3:].max() == 0
