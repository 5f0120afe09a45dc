"""The Swin adapter: channels-last maps and per-window attention get their true axes.

Truths: timm's own stage widths (``embed_dim * 2**i``), plain torch forward hooks, and single-image runs (a
site whose first axis is really the batch gives image ``b`` of a batch the same values as image ``b`` alone).
"""

import pytest
import torch

import vision
from interp_core import HookedModel
from interp_core.interventions import Ablate, Patch


@pytest.fixture(scope="module")
def swin():
    import timm

    torch.manual_seed(0)
    # 56 px: stage grids 14, 7, 4 (padded to one window), 2; windows of 7x7 tokens
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=56, num_classes=5).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))


def test_swin_is_routed_to_its_adapter_with_the_same_sites_either_way(swin):
    """Before: the CNN adapter labelled the channels-last (B, 14, 14, 96) block output (feature, pos, pos)."""
    a, b = HookedModel(swin), vision.wrap(swin)
    assert a.adapter.name == b.adapter.name == "swin"
    assert a.sites.names == b.sites.names
    assert a.default_sites[:2] == ["layers.0.blocks.0", "layers.0.blocks.1"]
    assert a.default_sites[-2:] == ["norm", "logits"] and len(a.default_sites) == 2 + 2 + 6 + 2 + 2


def test_every_map_has_its_channels_as_features(swin, x):
    hm = HookedModel(swin)
    widths = [96 * 2 ** i for i in range(4)]
    grids = [14, 7, 4, 2]
    for i in range(4):
        site = hm.sites[f"layers.{i}.blocks.0"]
        assert site.axes == ("batch", "pos", "pos", "feature")
        assert site.shape == (grids[i], grids[i], widths[i])
    assert hm.sites["patch_embed.proj"].axes == ("batch", "feature", "pos", "pos")  # the one NCHW conv
    assert hm.sites["layers.0.blocks.0.mlp.fc1"].axes == ("batch", "pos", "feature")
    assert hm.sites["layers.0.blocks.0.mlp.fc1"].shape == (14 * 14, 4 * 96)
    # no site anywhere has a feature axis that is not a stage width (or the MLP's 4x, qkv's 3x, heads, classes)
    allowed = {w * m for w in widths for m in (1, 3, 4)} | {5}
    for s in hm.sites.values():
        if s.axes is None or s.shape is None or "feature" not in s.axes:
            continue
        d = s.shape[s.axes.index("feature") - 1]
        assert d in allowed, (s.name, s.axes, s.shape)
    # the cached map equals a plain torch hook's output, and rows are cells with the channels as features
    seen = {}
    h = swin.layers[1].blocks[0].register_forward_hook(lambda m, a, o: seen.setdefault("o", o.detach()))
    with torch.no_grad():
        swin(x)
    h.remove()
    _, c = hm.run_with_cache(x, sites=["layers.1.blocks.0"])
    torch.testing.assert_close(c["layers.1.blocks.0"], seen["o"], rtol=0, atol=0)
    rows = c.features("layers.1.blocks.0")
    assert rows.shape == (2 * 7 * 7, 192)
    torch.testing.assert_close(rows[1], seen["o"][0, 0, 1])
    assert c.features("layers.1.blocks.0", pool="mean").shape == (2, 192)


def test_window_attention_sites_are_regrouped_per_image(swin, x):
    """Before: window attention's (B * windows, tokens, C) outputs had the windows on the batch axis."""
    hm = HookedModel(swin)
    site = hm.sites["layers.0.blocks.1.attn"]
    assert site.kind == "virtual" and site.axes == ("batch", "pos", "pos", "feature")
    assert site.shape == (4, 49, 96)  # 2x2 windows of 7x7 tokens
    names = ["layers.0.blocks.1.attn", "layers.0.blocks.1.attn.qkv"]
    _, c = hm.run_with_cache(x, sites=names)
    for b in range(2):
        _, alone = hm.run_with_cache(x[b:b + 1], sites=names)
        for n in names:
            torch.testing.assert_close(c[n][b:b + 1], alone[n], rtol=1e-5, atol=1e-5)
    assert c["layers.0.blocks.1.attn.qkv"].shape == (2, 4, 49, 3 * 96)
    # writes go back in the module's layout: zero attention output -> the attention branch adds nothing
    _, z = hm.run_with_cache(x, sites=["layers.0.blocks.1.drop_path1", "layers.0.blocks.1"],
                             interventions={"layers.0.blocks.1.attn": Ablate("zero")})
    assert torch.count_nonzero(z["layers.0.blocks.1.drop_path1"]) == 0
    # patching window 0 from another input equals a plain torch hook on timm's (B * windows) layout, B outer
    x2 = torch.flip(x, dims=[0])
    _, src = hm.run_with_cache(x2, sites=["layers.0.blocks.1.attn"])
    out = hm.run_with_interventions(x, {"layers.0.blocks.1.attn": Patch(src, positions=[(0, t) for t in range(49)])})
    attn = swin.layers[0].blocks[1].attn
    raw = {}
    h = attn.register_forward_hook(lambda m, a, o: raw.setdefault("src", o.detach().clone()))
    with torch.no_grad():
        swin(x2)
    h.remove()

    def patch(m, a, o):
        o = o.clone()
        o[[0, 4]] = raw["src"][[0, 4]]  # window 0 of image 0 and of image 1
        return o

    h = attn.register_forward_hook(patch)
    with torch.no_grad():
        want = swin(x)
    h.remove()
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    with torch.no_grad():
        assert not torch.equal(out, swin(x))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in swin.modules())


def test_swin_v2_blocks_and_windows():
    import timm

    torch.manual_seed(0)
    m = timm.create_model("swinv2_tiny_window8_256", img_size=64, depths=(2, 2), num_heads=(3, 6),
                          num_classes=3).eval()
    hm = vision.wrap(m)
    assert hm.adapter.name == "swin" and hm.sites.names == HookedModel(m).sites.names
    assert hm.sites["layers.1.blocks.1"].axes == ("batch", "pos", "pos", "feature")
    assert hm.sites["layers.1.blocks.1"].shape == (8, 8, 192)
    assert hm.sites["layers.0.blocks.0.norm1"].shape == (16, 16, 96)
    assert not [n for n in hm.sites.names if "cpb_mlp" in n]  # no batch axis there: not a site
    assert hm.sites["layers.0.blocks.0.attn"].shape == (4, 64, 96)  # 2x2 windows of 8x8 tokens
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    _, c = hm.run_with_cache(x, sites=["layers.0.blocks.1.attn"])
    _, alone = hm.run_with_cache(x[1:], sites=["layers.0.blocks.1.attn"])
    torch.testing.assert_close(c["layers.0.blocks.1.attn"][1:], alone["layers.0.blocks.1.attn"], rtol=1e-5,
                               atol=1e-5)


def test_exemplar_boxes_on_window_sites_are_refused_or_receptive(swin, x):
    from vision.exemplars import top_exemplars

    with pytest.raises(ValueError, match="per attention window"):
        top_exemplars(swin, x, "layers.0.blocks.1.attn", k=1)
    # block maps are the image grid: stride boxes tile the 56 px input in 4 px cells
    res = top_exemplars(swin, x, "layers.0.blocks.0", channels=[3], k=2, progress=False)
    h, w = res.cells[0, 0].tolist()
    assert res.boxes[0, 0].tolist() == [4 * h, 4 * w, 4 * h + 4, 4 * w + 4]
    _, c = HookedModel(swin).run_with_cache(x, sites=["layers.0.blocks.0"])
    assert float(res.scores[0, 0]) == pytest.approx(float(c["layers.0.blocks.0"][..., 3].amax()))
