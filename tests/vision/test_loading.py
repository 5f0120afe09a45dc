"""vision.load / vision.wrap on real timm and torchvision architectures (random init, small inputs).

The same core calls (run_with_cache, intervene with Patch and Ablate) run on every architecture; each result
is checked against plain torch (forward hooks written here, or the model's own output).
"""

import pytest
import torch
from torch import nn

import vision
from interp_core import HookedModel
from interp_core.errors import InputError, StoreError
from interp_core.interventions import Ablate, Patch

# (name, constructor kwargs, input size): random init, small inputs so the sweep stays fast
ARCHS = [
    ("timm:vit_tiny_patch16_224", {"img_size": 32}, 32),
    ("timm:deit_tiny_patch16_224", {"img_size": 32}, 32),
    ("timm:resnet18", {}, 32),
    ("timm:convnext_atto", {}, 32),
    ("torchvision:resnet18", {}, 32),
    ("torchvision:vgg11", {"num_classes": 10}, 32),
    ("torchvision:mobilenet_v3_small", {}, 32),
]
EXPECTED_ADAPTER = {"timm:vit_tiny_patch16_224": "vit", "timm:deit_tiny_patch16_224": "vit"}
LAST_BLOCK = {
    "timm:vit_tiny_patch16_224": "blocks.11.resid_post", "timm:deit_tiny_patch16_224": "blocks.11.resid_post",
    "timm:resnet18": "layer4.1", "timm:convnext_atto": "stages.3.blocks.1", "torchvision:resnet18": "layer4.1",
    "torchvision:vgg11": "features.20", "torchvision:mobilenet_v3_small": "features.12",
}
MID_BLOCK = {
    "timm:vit_tiny_patch16_224": "blocks.5.resid_post", "timm:deit_tiny_patch16_224": "blocks.5.resid_post",
    "timm:resnet18": "layer2.0", "timm:convnext_atto": "stages.1.blocks.0", "torchvision:resnet18": "layer2.0",
    "torchvision:vgg11": "features.5", "torchvision:mobilenet_v3_small": "features.3",
}


@pytest.fixture(scope="module", params=ARCHS, ids=[a[0] for a in ARCHS])
def arch(request):
    name, kwargs, size = request.param
    torch.manual_seed(0)
    hm = vision.load(name, example_input=torch.zeros(1, 3, size, size), **kwargs)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, size, size, generator=g)
    x2 = torch.randn(2, 3, size, size, generator=g)
    return name, hm, x, x2


def _hook_free(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and "forward" not in m.__dict__
               for m in model.modules())


def test_adapter_and_default_sites(arch):
    name, hm, x, _ = arch
    assert isinstance(hm, HookedModel)
    assert hm.adapter.name == EXPECTED_ADAPTER.get(name, "cnn")
    assert not hm.model.training
    defaults = hm.default_sites
    assert LAST_BLOCK[name] in defaults and MID_BLOCK[name] in defaults and defaults[-1] == "logits"
    with torch.no_grad():
        plain = hm(x)
    out, cache = hm.run_with_cache(x, sites=defaults)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    torch.testing.assert_close(cache["logits"], plain, rtol=0, atol=0)
    block = cache[MID_BLOCK[name]]
    if hm.adapter.name == "cnn":
        assert cache.axes(MID_BLOCK[name]) == ("batch", "feature", "pos", "pos")
        rows = cache.features(MID_BLOCK[name])  # cells folded into rows, channels as features
        assert rows.shape == (2 * block.shape[2] * block.shape[3], block.shape[1])
        torch.testing.assert_close(rows[1], block[0, :, 0, 1])
    else:
        assert cache.axes(MID_BLOCK[name]) == ("batch", "pos", "feature")
        assert cache.features(MID_BLOCK[name], pool="cls").shape == (2, block.shape[-1])
    # the site equals what a plain torch hook on the module sees
    seen = {}
    module = hm.model.get_submodule(hm.sites[MID_BLOCK[name]].module_path)
    h = module.register_forward_hook(lambda m, a, o: seen.setdefault("o", o.detach().clone()))
    with torch.no_grad():
        hm(x)
    h.remove()
    torch.testing.assert_close(block, seen["o"], rtol=0, atol=0)
    assert _hook_free(hm.model)


def test_patch_last_block_gives_source_output(arch):
    """Patching the whole last block with the source's activation makes the output the source's output."""
    name, hm, x, x2 = arch
    site = LAST_BLOCK[name]
    src_out, src = hm.run_with_cache(x2, sites=[site])
    out = hm.run_with_interventions(x, {site: Patch(src)})
    torch.testing.assert_close(out, src_out, rtol=1e-5, atol=1e-5)
    assert _hook_free(hm.model)


def test_ablate_one_position_matches_plain_torch_hook(arch):
    """Ablate('zero', positions=[p]) at a mid block equals zeroing that cell/token with a plain torch hook."""
    name, hm, x, _ = arch
    site = hm.sites[MID_BLOCK[name]]
    pos = (0, 0) if hm.adapter.name == "cnn" else 2  # (0, 0) survives every stride-2 1x1 downsampling
    with torch.no_grad():
        got = hm.run_with_interventions(x, {site.name: Ablate("zero", positions=[pos])})

    def zero(m, a, o):
        o = o.clone()
        if hm.adapter.name == "cnn":
            o[:, :, pos[0], pos[1]] = 0
        else:
            o[:, pos] = 0
        return o

    h = hm.model.get_submodule(site.module_path).register_forward_hook(zero)
    with torch.no_grad():
        want = hm(x)
    h.remove()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with torch.no_grad():
        plain = hm(x)
    assert not torch.equal(got, plain)
    # mean ablation with the cached activations of the same batch: the mean over the batch, per position
    _, stats = hm.run_with_cache(x, sites=[site.name])
    with torch.no_grad():
        got_mean = hm.run_with_interventions(x, {site.name: Ablate("mean", stats=stats)})
    mean = stats[site.name].mean(0, keepdim=True)
    h = hm.model.get_submodule(site.module_path).register_forward_hook(lambda m, a, o: mean.expand_as(o).clone())
    with torch.no_grad():
        want_mean = hm(x)
    h.remove()
    torch.testing.assert_close(got_mean, want_mean, rtol=0, atol=0)
    assert _hook_free(hm.model)


def test_random_init_and_local_weights(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    a = vision.load("torchvision:resnet18", num_classes=5, example_input=torch.zeros(1, 3, 32, 32))
    torch.manual_seed(1)
    b = vision.load("torchvision:resnet18", num_classes=5, example_input=torch.zeros(1, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))  # random init, different seeds
    state = {k: v.contiguous() for k, v in a.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": a.model.state_dict()}, tmp_path / "w.pt")
    for path in (tmp_path / "w.safetensors", tmp_path / "w.pt"):
        c = vision.load("torchvision:resnet18", weights=path, num_classes=5,
                        example_input=torch.zeros(1, 3, 32, 32))
        with torch.no_grad():
            torch.testing.assert_close(c(x), a(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_classes"):
        vision.load("torchvision:resnet18", weights=tmp_path / "w.pt", example_input=torch.zeros(1, 3, 32, 32))
    with pytest.raises(StoreError, match="missing.pt"):
        vision.load("torchvision:resnet18", weights=tmp_path / "missing.pt")


def test_bad_weights_files_are_named_with_what_is_wrong(tmp_path):
    """Before: a missing or unreadable file gave a raw FileNotFoundError / UnpicklingError / safetensors error
    (no file name from the suite, a traceback in ``interp sites --weights``)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = vision.loading.build("timm:resnet18", num_classes=5)
    # a checkpoint saved for 5 classes, loaded into the default 1000-class model: suggest num_classes=5
    torch.save(ref.state_dict(), tmp_path / "five.pt")
    with pytest.raises(InputError, match=r"num_classes=5") as e:
        vision.load("timm:resnet18", weights=tmp_path / "five.pt")
    assert "five.pt" in str(e.value) and "fc.weight is (5, 512) in the file, (1000, 512) in the model" in str(e.value)
    # a greyscale checkpoint into an RGB model: suggest in_chans=1
    grey = vision.loading.build("timm:resnet18", num_classes=5, in_chans=1)
    save_file({k: v.contiguous() for k, v in grey.state_dict().items()}, str(tmp_path / "grey.safetensors"))
    with pytest.raises(InputError, match=r"in_chans=1"):
        vision.load("timm:resnet18", weights=tmp_path / "grey.safetensors", num_classes=5)
    # a file that is not a checkpoint at all
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(StoreError, match=r"notes\.pt.*could not be read as a torch checkpoint"):
        vision.load("timm:resnet18", weights=tmp_path / "notes.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(StoreError, match=r"broken\.safetensors.*not a readable safetensors file"):
        vision.load("timm:resnet18", weights=tmp_path / "broken.safetensors")
    # a torch file that holds something else than a state dict
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(StoreError, match=r"list\.pt.*holds a list, not a state dict"):
        vision.load("timm:resnet18", weights=tmp_path / "list.pt")
    torch.save({"epoch": 3, "fc.weight": torch.zeros(2)}, tmp_path / "mixed.pt")
    with pytest.raises(StoreError, match=r"mixed\.pt.*non-tensor entries \('epoch'\)"):
        vision.load("timm:resnet18", weights=tmp_path / "mixed.pt")
    with pytest.raises(StoreError, match="is a directory"):
        vision.load("timm:resnet18", weights=tmp_path)
    # all of them are the suite's errors (InterpError), which the CLI reports without a traceback
    from interp_core.errors import InterpError

    with pytest.raises(InterpError):
        vision.load("timm:resnet18", weights=tmp_path / "nothing-here.safetensors")


@pytest.mark.parametrize("make", ["vit", "cnn", "torchvision"])
def test_hooked_model_and_vision_wrap_give_the_same_sites(make):
    import timm
    import torchvision

    torch.manual_seed(0)
    model = {"vit": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=3),
             "cnn": lambda: timm.create_model("resnet18", num_classes=3),
             "torchvision": lambda: torchvision.models.resnet18(num_classes=3)}[make]().eval()
    x = torch.randn(2, 3, 32, 32)
    a, b = HookedModel(model, example_input=x[:1]), vision.wrap(model, example_input=x[:1])
    assert a.adapter.name == b.adapter.name == ("vit" if make == "vit" else "cnn")
    assert a.sites.names == b.sites.names and a.default_sites == b.default_sites
    assert [a.sites[n].axes for n in a.sites.names] == [b.sites[n].axes for n in b.sites.names]
    out_a, ca = a.run_with_cache(x, sites=a.default_sites)
    out_b, cb = b.run_with_cache(x, sites=b.default_sites)
    for n in a.default_sites:
        torch.testing.assert_close(ca[n], cb[n], rtol=0, atol=0)


def test_unknown_names_list_close_names():
    with pytest.raises(ValueError, match="timm:resnet18"):
        vision.load("timm:resnet19")
    with pytest.raises(ValueError, match="torchvision:resnet18"):
        vision.load("torchvision:resnt18")
    with pytest.raises(ValueError, match="timm:NAME"):
        vision.load("resnet18")
    with pytest.raises(ValueError, match="timm:vit_tiny"):
        vision.load("tim:vit_tiny_patch16_224")


def test_wrap_picks_adapter_and_example_input():
    from timm.models.vision_transformer import Block

    class TinyTokens(nn.Module):  # not a VisionTransformer, but built from timm's Block
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(Block(16, 2), Block(16, 2))

        def forward(self, x):
            return self.blocks(x).mean(1)

    hm = vision.wrap(TinyTokens(), example_input=torch.zeros(1, 5, 16))
    assert hm.adapter.name == "vit"
    assert "blocks.1.attn.z" in hm.sites and hm.sites["blocks.1.attn.z"].shape == (5, 2, 8)
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    conv(torch.zeros(1, 1, 8, 8))
    hc = vision.wrap(conv, example_input=torch.zeros(1, 1, 8, 8))
    assert hc.adapter.name == "cnn" and hc.default_sites == ["0", "1", "2", "3", "logits"]
    # default example input: first conv's channels, timm's pretrained input size
    import timm

    m = timm.create_model("resnet18", in_chans=1)
    assert hm.adapter.example_input(hm.model).shape == (1, 5, 16)
    assert vision.wrap(m).adapter.example_input(m).shape == (1, 1, 224, 224)
    assert vision.wrap(hm).model is hm.model  # wrapping a hooked model wraps its module (same example input)
    # a model the guessed (3, 224, 224) input does not fit is traced on its first real input instead
    lazy = vision.wrap(TinyTokens().eval())
    out, cache = lazy.run_with_cache(torch.randn(2, 5, 16), sites=["blocks.0.attn.pattern"])
    assert cache["blocks.0.attn.pattern"].shape == (2, 2, 5, 5)
