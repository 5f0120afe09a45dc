"""The ViT adapter: exact per-head sites from fused timm attention, residual identities, writes, hygiene.

Truths: the fused forward (timm's own), closed forms of attention (softmax(q k^T / sqrt(F)) v, the output
projection split per head), the residual decomposition, and plain torch on timm's own submodules.
"""

import pytest
import torch
from torch import nn

import vision
from interp_core.interventions import Ablate, Patch, Replace


def _vit(**kw):
    torch.manual_seed(0)
    args = dict(img_size=32, depth=3, num_classes=7)
    args.update(kw)
    return vision.load("timm:vit_tiny_patch16_224", **args)


@pytest.fixture(scope="module")
def vit():
    # layer scale (init_values) on, so attn.out / mlp.out include ls1 / ls2
    return _vit(init_values=0.5)


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _snapshot(model: nn.Module):
    return {name: (dict(m.__dict__), list(m._forward_hooks), list(m._forward_pre_hooks))
            for name, m in model.named_modules()}


def _same_model(model: nn.Module, snap) -> bool:
    now = _snapshot(model)
    if now.keys() != snap.keys():
        return False
    for name, (d, fh, ph) in snap.items():
        d2, fh2, ph2 = now[name]
        if d2.keys() != d.keys() or fh2 != fh or ph2 != ph:
            return False
        if any(d2[k] is not d[k] for k in d if k not in ("_forward_hooks", "_forward_pre_hooks", "training")):
            return False
    return True


ALL_HEAD_SITES = [f"blocks.1.attn.{k}" for k in ("q", "k", "v", "pattern", "z")]


def test_canonical_sites_and_axes(vit):
    s = vit.sites
    assert s["blocks.1.attn.z"].axes == ("batch", "pos", "head", "feature")
    assert s["blocks.1.attn.z"].shape == (5, 3, 64)  # 1 CLS + 2x2 patches, 3 heads of 64
    assert s["blocks.1.attn.pattern"].axes == ("batch", "head", "pos", "pos")
    assert s["blocks.1.attn.pattern"].shape == (3, 5, 5)
    assert s["blocks.1.resid_mid"].axes == ("batch", "pos", "feature")
    assert s["blocks.0.resid_pre"].pos_names == {"cls": 0}
    assert s["blocks.1.mlp.hidden"].shape == (5, 768)
    assert s["logits"].shape == (7,) and s["final_norm"].shape == (5, 192)
    for name in ["embed", "blocks.2.resid_post", "final_norm", "logits", "blocks.0.attn.qkv"]:
        assert name in s
    assert vit.default_sites == ["embed", "blocks.0.resid_post", "blocks.1.resid_post", "blocks.2.resid_post",
                                 "final_norm", "logits"]


def test_instrumented_forward_equals_fused_and_model_is_restored(vit, x):
    model = vit.model
    assert model.blocks[1].attn.fused_attn  # timm uses scaled_dot_product_attention
    snap = _snapshot(model)
    with torch.no_grad():
        fused = vit(x)
    out, cache = vit.run_with_cache(x, sites=ALL_HEAD_SITES + ["blocks.1.resid_mid", "blocks.0.attn.z"])
    assert (out - fused).abs().max() < 1e-5
    assert _same_model(model, snap)
    assert "forward" not in model.blocks[1].attn.__dict__ and "forward" not in model.blocks[1].__dict__
    # restored on error too, and a forward the user set on the instance survives
    sentinel = model.blocks[1].attn.forward
    model.blocks[1].attn.forward = sentinel  # the user's own instance attribute
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with vit.hooks({"blocks.1.attn.z": lambda a: (_ for _ in ()).throw(RuntimeError("boom"))}):
                vit(x)
        assert model.blocks[1].attn.__dict__["forward"] is sentinel
    finally:
        del model.blocks[1].attn.forward
    assert _same_model(model, snap)
    with torch.no_grad():
        assert torch.equal(vit(x), fused)


def test_attention_closed_forms(vit, x):
    blk = vit.model.blocks[1]
    names = ALL_HEAD_SITES + ["blocks.1.resid_pre", "blocks.1.attn.out"]
    _, c = vit.run_with_cache(x, sites=names)
    B, N, H, Fd = c["blocks.1.attn.q"].shape
    with torch.no_grad():
        qkv = blk.attn.qkv(blk.norm1(c["blocks.1.resid_pre"])).reshape(B, N, 3, H, Fd)
    torch.testing.assert_close(c["blocks.1.attn.q"], qkv[:, :, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c["blocks.1.attn.k"], qkv[:, :, 1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c["blocks.1.attn.v"], qkv[:, :, 2], rtol=1e-5, atol=1e-6)
    q, k, v = (c[f"blocks.1.attn.{n}"].transpose(1, 2) for n in "qkv")
    pattern = c["blocks.1.attn.pattern"]
    torch.testing.assert_close(pattern, torch.softmax(q @ k.transpose(-1, -2) / Fd ** 0.5, -1), rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(B, H, N), rtol=0, atol=1e-6)
    z = c["blocks.1.attn.z"]
    torch.testing.assert_close(z, (pattern @ v).transpose(1, 2), rtol=1e-5, atol=1e-6)
    # z through per-head slices of proj.weight, summed over heads, + bias, times layer scale = attn.out
    W = blk.attn.proj.weight.detach().reshape(-1, H, Fd)  # [D, head, F]
    per_head = torch.einsum("bnhf,dhf->bnhd", z, W)
    recon = (per_head.sum(2) + blk.attn.proj.bias.detach()) * blk.ls1.gamma.detach()
    torch.testing.assert_close(c["blocks.1.attn.out"], recon, rtol=1e-5, atol=1e-5)


def test_residual_identities(vit, x):
    sites = []
    for i in range(3):
        sites += [f"blocks.{i}.{n}" for n in ("resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out")]
    _, c = vit.run_with_cache(x, sites=sites + ["embed"])
    torch.testing.assert_close(c["embed"], c["blocks.0.resid_pre"], rtol=0, atol=0)
    for i in range(3):
        b = f"blocks.{i}"
        torch.testing.assert_close(c[f"{b}.resid_mid"], c[f"{b}.resid_pre"] + c[f"{b}.attn.out"], rtol=0, atol=1e-6)
        torch.testing.assert_close(c[f"{b}.resid_post"], c[f"{b}.resid_mid"] + c[f"{b}.mlp.out"], rtol=0, atol=1e-6)
        if i:
            torch.testing.assert_close(c[f"{b}.resid_pre"], c[f"blocks.{i - 1}.resid_post"], rtol=0, atol=0)


def test_writes_at_head_sites(vit, x):
    blk = vit.model.blocks[1]
    H, Fd = 3, 64
    x2 = torch.flip(x, dims=[0])
    _, src = vit.run_with_cache(x2, sites=["blocks.1.attn.z"])
    _, clean = vit.run_with_cache(x, sites=["blocks.1.attn.z"])
    # patch head 2's z from another input: attn.out follows the closed form with the mixed z
    _, c = vit.run_with_cache(x, sites=["blocks.1.attn.z", "blocks.1.attn.out"],
                              interventions={"blocks.1.attn.z": Patch(src, heads=[2])})
    mixed = clean["blocks.1.attn.z"].clone()
    mixed[:, :, 2] = src["blocks.1.attn.z"][:, :, 2]
    torch.testing.assert_close(c["blocks.1.attn.z"], mixed, rtol=0, atol=0)
    W = blk.attn.proj.weight.detach().reshape(-1, H, Fd)
    want = (torch.einsum("bnhf,dhf->bnd", mixed, W) + blk.attn.proj.bias.detach()) * blk.ls1.gamma.detach()
    torch.testing.assert_close(c["blocks.1.attn.out"], want, rtol=1e-5, atol=1e-5)
    # uniform attention pattern: z is the mean of v over positions
    _, c = vit.run_with_cache(x, sites=["blocks.1.attn.v", "blocks.1.attn.z", "blocks.1.attn.pattern"],
                              interventions={"blocks.1.attn.pattern": Replace(lambda a: torch.full_like(a, 1 / 5))})
    torch.testing.assert_close(c["blocks.1.attn.pattern"], torch.full_like(c["blocks.1.attn.pattern"], 0.2))
    torch.testing.assert_close(c["blocks.1.attn.z"], c["blocks.1.attn.v"].mean(1, keepdim=True).expand(-1, 5, -1, -1),
                               rtol=1e-5, atol=1e-6)
    # zero values: z is 0 and attn.out is the projection bias (times layer scale)
    _, c = vit.run_with_cache(x, sites=["blocks.1.attn.z", "blocks.1.attn.out"],
                              interventions={"blocks.1.attn.v": Ablate("zero")})
    assert torch.count_nonzero(c["blocks.1.attn.z"]) == 0
    torch.testing.assert_close(c["blocks.1.attn.out"],
                               (blk.attn.proj.bias * blk.ls1.gamma).detach().expand_as(c["blocks.1.attn.out"]))
    # q and k edits reach the pattern: equal queries for every token give equal pattern rows
    _, c = vit.run_with_cache(x, sites=["blocks.1.attn.pattern"],
                              interventions={"blocks.1.attn.q": Replace(lambda a: a[:, :1].expand_as(a).clone())})
    p = c["blocks.1.attn.pattern"]
    torch.testing.assert_close(p, p[:, :, :1].expand_as(p), rtol=1e-5, atol=1e-6)
    _, c = vit.run_with_cache(x, sites=["blocks.1.attn.pattern"],
                              interventions={"blocks.1.attn.k": Ablate("zero")})
    torch.testing.assert_close(c["blocks.1.attn.pattern"], torch.full_like(c["blocks.1.attn.pattern"], 0.2))


def test_write_resid_mid_and_cls_patch(vit, x):
    blk = vit.model.blocks[2]
    _, c = vit.run_with_cache(x, sites=["blocks.2.resid_post", "blocks.2.mlp.out"],
                              interventions={"blocks.2.resid_mid": Ablate("zero")})
    with torch.no_grad():
        mlp_of_zero = blk.ls2(blk.mlp(blk.norm2(torch.zeros(3, 5, 192))))
    torch.testing.assert_close(c["blocks.2.mlp.out"], mlp_of_zero, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c["blocks.2.resid_post"], mlp_of_zero, rtol=1e-6, atol=1e-6)
    # patching the CLS token of the last residual carries the source's prediction (token pooling)
    x2 = torch.flip(x, dims=[0])
    out2, src = vit.run_with_cache(x2, sites=["blocks.2.resid_post"])
    out = vit.run_with_interventions(x, {"blocks.2.resid_post": Patch(src, positions="cls")})
    torch.testing.assert_close(out, out2, rtol=1e-5, atol=1e-5)


def test_prefix_tokens_are_named():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    reg = vision.wrap(VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                        reg_tokens=2, num_classes=3))
    assert reg.sites["blocks.0.resid_post"].pos_names == {"cls": 0, "reg0": 1, "reg1": 2}
    assert reg.sites["blocks.0.attn.z"].shape == (7, 2, 16)
    deit = vision.load("timm:deit_tiny_distilled_patch16_224", img_size=32, depth=1)
    assert deit.sites["embed"].pos_names == {"cls": 0, "dist": 1}
    _, c = deit.run_with_cache(torch.randn(2, 3, 32, 32), sites=["blocks.0.resid_post"], pool="dist")
    assert c["blocks.0.resid_post"].shape == (2, 192)


def test_gradients_flow_through_instrumented_attention(vit, x):
    """grad=True caching of a per-head site works (attribution patching needs it)."""
    out, cache = vit.run_with_cache(x, sites=["blocks.1.attn.z"], grad=True)
    g, = torch.autograd.grad(out[:, 0].sum(), cache["blocks.1.attn.z"])
    assert g.shape == cache["blocks.1.attn.z"].shape and g.abs().sum() > 0


def test_core_patch_sweep_over_heads_matches_manual_patches():
    """interp_core.patching on the virtual per-head site (with prefix reuse) equals one Patch per head."""
    from interp_core import metrics
    from interp_core.patching import patch_sweep

    hm = vision.zoo.load("digits-vit")
    X, y = vision.zoo.test_data("digits-vit")
    clean, corrupted = X[:4], X[4:8]
    metric = metrics.logit_diff(int(y[0]), int(y[4]))
    res = patch_sweep(hm, clean=clean, corrupted=corrupted, sites=["blocks.1.attn.z"], metric=metric,
                      per="head", normalize=False, progress=False)
    _, src = hm.run_with_cache(clean, sites=["blocks.1.attn.z"])
    manual = torch.stack([metric(hm.run_with_interventions(corrupted, {"blocks.1.attn.z": Patch(src, heads=[h])}))
                          .mean() for h in range(4)])
    torch.testing.assert_close(res.metric_values["blocks.1.attn.z"], manual, rtol=1e-4, atol=1e-5)
