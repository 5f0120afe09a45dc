"""The ViT adapter: exact per-head sites from fused timm attention, residual identities, writes, hygiene.

Truths: the fused forward (timm's own), closed forms of attention (softmax(q k^T / sqrt(F)) v, the output
projection split per head), the residual decomposition, and plain torch on timm's own submodules.
"""

import contextlib

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


# ------------------------------------------------------------------------------ forward overrides (one mechanism)
def test_instrumentation_is_one_stackable_forward_override(vit, x):
    """Head sites override attention's forward through interp_core.forwards: one override however many sites
    are attached, stacked with other overrides and removable in any order (before: the adapter assigned
    ``forward`` itself, so removing it first dropped an override added later and left its own forward behind)."""
    from interp_core.forwards import active_overrides, replace_forward

    attn = vit.model.blocks[1].attn
    snap = _snapshot(vit.model)
    with torch.no_grad():
        fused = vit(x)
    seen = {}
    stack = contextlib.ExitStack()
    stack.enter_context(vit.hooks({"blocks.1.attn.z": lambda a: seen.update(z=a.clone()),
                                   "blocks.1.attn.q": lambda a: None}))
    assert active_overrides(attn) == 1
    calls = []

    def counting(module, inner):
        def forward(*args, **kwargs):
            calls.append(1)
            return inner(*args, **kwargs)
        return forward

    outer = replace_forward(attn, counting)  # added after the instrumentation: wraps it
    assert active_overrides(attn) == 2
    with torch.no_grad():
        out = vit(x)
    assert calls and "z" in seen and (out - fused).abs().max() < 1e-5
    stack.close()  # the instrumentation goes first, the outer override stays and still runs
    assert active_overrides(attn) == 1
    calls.clear()
    with torch.no_grad():
        assert (vit(x) - fused).abs().max() < 1e-5
    assert calls
    outer.remove()
    assert active_overrides(attn) == 0 and "forward" not in attn.__dict__
    assert _same_model(vit.model, snap)
    # per-head values with another override underneath equal the fused forward's closed form
    inner_handle = replace_forward(attn, counting)
    try:
        out, c = vit.run_with_cache(x, sites=["blocks.1.attn.z"])
        assert (out - fused).abs().max() < 1e-5
    finally:
        inner_handle.remove()
    assert _same_model(vit.model, snap)


def test_attn_drop_site_runs_when_cached_alone(vit, x):
    """Before: 'blocks.1.attn.attn_drop' was listed but fused attention skips the module, so caching it alone
    raised 'did not run in this forward'. Now it is the pattern after dropout (= the pattern in eval mode)."""
    site = vit.sites["blocks.1.attn.attn_drop"]
    assert site.axes == ("batch", "head", "pos", "pos") and site.shape == (3, 5, 5)
    _, c = vit.run_with_cache(x, sites=["blocks.1.attn.attn_drop"])
    _, ref = vit.run_with_cache(x, sites=["blocks.1.attn.q", "blocks.1.attn.k"])
    q, k = ref["blocks.1.attn.q"].transpose(1, 2), ref["blocks.1.attn.k"].transpose(1, 2)
    want = torch.softmax(q @ k.transpose(-1, -2) / 64 ** 0.5, -1)
    torch.testing.assert_close(c["blocks.1.attn.attn_drop"], want, rtol=1e-5, atol=1e-6)
    # every listed module site of a plain ViT runs when cached alone
    for name in [n for n in vit.sites.names if n.startswith("blocks.0.")]:
        _, c = vit.run_with_cache(x[:1], sites=[name])
        assert name in c


# ------------------------------------------------------------------------------------------------- EVA02
@pytest.fixture(scope="module")
def eva():
    import timm

    torch.manual_seed(0)
    return timm.create_model("eva02_tiny_patch14_224", img_size=28, depth=3, num_classes=5,
                             init_values=0.5).eval()


def test_eva_gets_block_residual_sites_with_token_axes(eva):
    """Before: EVA02 went to the CNN adapter, whose default sites skipped the blocks."""
    from interp_core import HookedModel

    hm = HookedModel(eva)
    assert hm.adapter.name == "vit" and hm.sites.names == vision.wrap(eva).sites.names
    assert hm.default_sites == ["embed", "blocks.0.resid_post", "blocks.1.resid_post", "blocks.2.resid_post",
                                "final_norm", "logits"]
    for name in ("blocks.1.resid_pre", "blocks.1.resid_mid", "blocks.1.resid_post", "blocks.1.attn.out",
                 "blocks.1.mlp.out"):
        assert hm.sites[name].axes == ("batch", "pos", "feature")
        assert hm.sites[name].shape == (5, 192)  # CLS + 2x2 patches of 14 px
        assert hm.sites[name].pos_names == {"cls": 0}
    assert "blocks.1.mlp.hidden" not in hm.sites  # SwiGLU: no single hidden activation
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    sites = [f"blocks.{i}.{n}" for i in range(3)
             for n in ("resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out")]
    out, c = hm.run_with_cache(x, sites=sites + ["embed", "final_norm"])
    # truth: plain torch hooks on the blocks (input and output)
    seen = {}
    handles = [b.register_forward_hook(lambda m, a, o, i=i: seen.update({(i, "in"): a[0].detach(),
                                                                          (i, "out"): o.detach()}))
               for i, b in enumerate(eva.blocks)]
    with torch.no_grad():
        plain = eva(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    torch.testing.assert_close(c["embed"], seen[(0, "in")], rtol=0, atol=0)
    for i in range(3):
        b = f"blocks.{i}"
        torch.testing.assert_close(c[f"{b}.resid_pre"], seen[(i, "in")], rtol=0, atol=0)
        torch.testing.assert_close(c[f"{b}.resid_post"], seen[(i, "out")], rtol=0, atol=0)
        torch.testing.assert_close(c[f"{b}.resid_mid"], c[f"{b}.resid_pre"] + c[f"{b}.attn.out"], rtol=0, atol=1e-6)
        torch.testing.assert_close(c[f"{b}.resid_post"], c[f"{b}.resid_mid"] + c[f"{b}.mlp.out"], rtol=0, atol=1e-6)
    # a write at resid_mid reaches the MLP branch: zeroed, the block's output is the MLP of zeros
    _, z = hm.run_with_cache(x, sites=["blocks.2.resid_post"], interventions={"blocks.2.resid_mid": Ablate("zero")})
    blk = eva.blocks[2]
    with torch.no_grad():
        want = blk.gamma_2 * blk.mlp(blk.norm2(torch.zeros(2, 5, 192)))
    torch.testing.assert_close(z["blocks.2.resid_post"], want, rtol=1e-6, atol=1e-6)
    assert all("forward" not in m.__dict__ for m in eva.modules())
    # the logit lens of the last block is the model's output
    res = vision.logit_lens(hm, x, keep_logits=True)
    torch.testing.assert_close(res.logits[-1], plain, rtol=1e-5, atol=1e-5)
    # patching the last residual (EVA02 pools the patch tokens) carries the source's prediction
    x2 = torch.flip(x, dims=[0])
    out2, src = hm.run_with_cache(x2, sites=["blocks.2.resid_post"])
    patched = hm.run_with_interventions(x, {"blocks.2.resid_post": Patch(src)})
    torch.testing.assert_close(patched, out2, rtol=1e-5, atol=1e-5)


def test_eva_per_head_sites_match_the_fused_forward_and_closed_forms(eva):
    """EvaAttention (rotary embeddings, fused SDPA) instrumented: the same output within 1e-5, pattern =
    softmax(q k^T / sqrt(F)) on the rotated q and k, z = pattern v, and attn.out rebuilt from z."""
    from interp_core import HookedModel

    hm = HookedModel(eva)
    assert hm.sites["blocks.1.attn.z"].axes == ("batch", "pos", "head", "feature")
    assert hm.sites["blocks.1.attn.z"].shape == (5, 3, 64)
    assert hm.sites["blocks.1.attn.pattern"].shape == (3, 5, 5)
    assert eva.blocks[1].attn.fused_attn
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fused = eva(x)
    names = [f"blocks.1.attn.{k}" for k in ("q", "k", "v", "pattern", "attn_drop", "z")] + ["blocks.1.attn.out"]
    out, c = hm.run_with_cache(x, sites=names)
    assert (out - fused).abs().max() < 1e-5
    assert all("forward" not in m.__dict__ for m in eva.modules())
    q, k, v = (c[f"blocks.1.attn.{n}"].transpose(1, 2) for n in "qkv")
    pattern = torch.softmax(q @ k.transpose(-1, -2) / 64 ** 0.5, -1)
    torch.testing.assert_close(c["blocks.1.attn.pattern"], pattern, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c["blocks.1.attn.attn_drop"], pattern, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c["blocks.1.attn.z"], (pattern @ v).transpose(1, 2), rtol=1e-5, atol=1e-6)
    blk = eva.blocks[1]
    with torch.no_grad():
        rebuilt = blk.gamma_1 * blk.attn.proj(blk.attn.norm(c["blocks.1.attn.z"].reshape(2, 5, 192)))
    torch.testing.assert_close(c["blocks.1.attn.out"], rebuilt, rtol=1e-5, atol=1e-5)
    # the rotary embedding rotates patch tokens, not the CLS token: q of CLS is the plain projection
    with torch.no_grad():
        _, r = hm.run_with_cache(x, sites=["blocks.1.resid_pre"])
        qkv = blk.attn.qkv(blk.norm1(r["blocks.1.resid_pre"]))
        if blk.attn.q_bias is not None:
            qkv = qkv + torch.cat((blk.attn.q_bias, blk.attn.k_bias, blk.attn.v_bias))
        plain_q = blk.attn.q_norm(qkv.reshape(2, 5, 3, 3, 64)[:, :, 0].transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(c["blocks.1.attn.q"][:, 0], plain_q[:, 0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(c["blocks.1.attn.q"][:, 1:], plain_q[:, 1:], atol=1e-3)
    # a write: uniform attention makes z the mean of v over tokens
    _, w = hm.run_with_cache(x, sites=["blocks.1.attn.v", "blocks.1.attn.z"],
                             interventions={"blocks.1.attn.pattern": Replace(lambda a: torch.full_like(a, 0.2))})
    torch.testing.assert_close(w["blocks.1.attn.z"], w["blocks.1.attn.v"].mean(1, keepdim=True).expand(-1, 5, -1, -1),
                               rtol=1e-5, atol=1e-6)
