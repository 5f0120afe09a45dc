"""The ViT adapter: canonical sites for timm's VisionTransformer family (ViT, DeiT, DeiT distilled) and EVA.

Sites (names of /work/shared/DESIGN.md; ``B`` batch, ``N`` tokens = prefix tokens + patches, ``D`` width,
``H`` heads, ``F`` head dimension):

- ``embed`` ``[B, N, D]`` — tokens after position embedding and ``norm_pre`` (= ``blocks.0.resid_pre``);
- ``blocks.{i}.resid_pre`` / ``resid_mid`` / ``resid_post`` ``[B, N, D]`` — the residual stream before the
  block, after its attention branch, after its MLP branch;
- ``blocks.{i}.attn.q`` / ``k`` / ``v`` / ``z`` ``[B, N, H, F]`` — per-head queries (after ``q_norm``),
  keys (after ``k_norm``), values and head outputs ``z = pattern @ v`` before the output projection;
- ``blocks.{i}.attn.pattern`` ``[B, H, N_query, N_key]`` — softmax attention weights (rows sum to 1);
- ``blocks.{i}.attn.out`` ``[B, N, D]`` — the attention branch's contribution to the residual stream
  (``drop_path1(ls1(attn(norm1(x))))``, so layer scale is included): ``resid_mid = resid_pre + attn.out``;
- ``blocks.{i}.mlp.hidden`` ``[B, N, D_mlp]`` (after the activation) and ``blocks.{i}.mlp.out`` ``[B, N, D]``
  (``drop_path2(ls2(mlp(norm2(x))))``): ``resid_post = resid_mid + mlp.out``;
- ``final_norm`` ``[B, N, D]`` (``model.norm``) and ``logits`` ``[B, classes]`` (the model's output);
- ``blocks.{i}.attn.attn_drop`` ``[B, H, N_query, N_key]`` — the pattern after attention dropout (the same
  as ``attn.pattern`` in eval mode). timm's fused attention never calls the ``attn_drop`` module, so this name
  is a virtual site of the instrumented attention (below), not the module's output: it runs whenever asked;
- every other submodule's output by module path, as with the generic adapter.

**EVA / EVA02** (timm ``Eva`` with ``EvaBlock`` / ``EvaAttention``, rotary position embeddings): the same
token sites (``embed``, ``blocks.{i}.resid_pre|resid_mid|resid_post``, ``attn.out`` / ``mlp.out`` with layer
scale ``gamma`` included, ``final_norm``, ``logits``) and per-head sites ``blocks.{i}.attn.q|k|v|pattern|
attn_drop|z`` from an instrumented copy of ``EvaAttention``'s non-fused path, where ``q`` and ``k`` are taken
after the rotary embedding (prefix tokens unrotated): what enters the dot product. ``mlp.hidden`` exists only
for timm's plain ``Mlp`` (EVA02's SwiGLU has no single hidden activation).

Prefix tokens are named positions: ``cls``, ``reg0``, ``reg1``, ... (register tokens), ``dist`` (DeiT's
distillation token); patch tokens follow in row-major order over :func:`patch_grid`.

**Exact per-head sites.** timm computes attention with one fused ``qkv`` Linear and fused
``scaled_dot_product_attention``, so q/k/v/pattern/z never exist as module outputs. When any of them is
hooked, the attention instance's ``forward`` is temporarily replaced by an instrumented copy of timm's
non-fused path that calls the site functions at q, k, v, pattern and z (several sites share one
instrumentation). The replacement goes through :func:`interp_core.forwards.replace_forward` (one override
per instrumented module while any of its sites is attached), so it stacks with other overrides and can be
removed in any order; when the last site's handle is removed the module is exactly as before.
``resid_mid`` is obtained the same way on the block. The instrumented forward matches the fused one to
float rounding (tested to 1e-5).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from interp_core.forwards import replace_forward
from interp_core.sites import GenericAdapter, HookFn, Site

__all__ = ["ViTAdapter", "is_vit", "patch_grid", "prefix_names", "ATTN_SITES"]

ATTN_SITES = ("q", "k", "v", "pattern", "z")


def _timm_classes() -> tuple[type, type]:
    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    return Attention, Block


def _is_plain_attention(m: nn.Module) -> bool:
    """A timm ``Attention`` whose forward is timm's own (so the instrumented copy computes the same)."""
    Attention, _ = _timm_classes()
    return isinstance(m, Attention) and type(m).forward is Attention.forward


def _is_plain_block(m: nn.Module) -> bool:
    _, Block = _timm_classes()
    return isinstance(m, Block) and type(m).forward is Block.forward


def _eva_classes() -> tuple[type, ...]:
    try:
        from timm.models.eva import Eva, EvaBlock
    except ImportError:  # pragma: no cover - older timm
        return ()
    return Eva, EvaBlock


def _is_plain_eva_attention(m: nn.Module) -> bool:
    try:
        from timm.models.eva import EvaAttention
    except ImportError:  # pragma: no cover - older timm
        return False
    return isinstance(m, EvaAttention) and type(m).forward is EvaAttention.forward


def _is_plain_eva_block(m: nn.Module) -> bool:
    eva = _eva_classes()
    return bool(eva) and isinstance(m, eva[1]) and type(m).forward is eva[1].forward


def _is_block(m: nn.Module) -> bool:
    """A transformer block whose input and output are the residual stream ``[B, N, D]``."""
    _, Block = _timm_classes()
    eva = _eva_classes()
    return isinstance(m, Block) or (bool(eva) and isinstance(m, eva[1]))


def _is_plain_mlp(m: nn.Module) -> bool:
    """timm's ``Mlp`` (fc1 -> act -> fc2): the output of ``act`` is the hidden layer."""
    from timm.layers import Mlp

    return type(m) is Mlp


def is_vit(model: nn.Module) -> bool:
    """True for timm VisionTransformer-family and EVA models, and any model built from timm's
    ``Block`` / ``Attention`` / ``EvaBlock``."""
    try:
        Attention, Block = _timm_classes()
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    eva = _eva_classes()
    if isinstance(model, (VisionTransformer, *eva)):
        return True
    return any(isinstance(m, (Attention, Block, *eva)) for m in model.modules())


def prefix_names(model: nn.Module) -> dict[str, int]:
    """Named prefix tokens -> position: ``{"cls": 0, "reg0": 1, ...}`` or ``{"cls": 0, "dist": 1}``."""
    names: dict[str, int] = {}
    i = 0
    if getattr(model, "cls_token", None) is not None:
        names["cls"] = i
        i += 1
    if getattr(model, "dist_token", None) is not None:
        names["dist"] = i
        i += 1
    reg = getattr(model, "reg_token", None)
    if reg is not None:
        for r in range(reg.shape[1]):
            names[f"reg{r}"] = i
            i += 1
    n_prefix = getattr(model, "num_prefix_tokens", i)
    if n_prefix != i:  # an unusual layout: keep what timm says, unnamed
        names = {k: v for k, v in names.items() if v < n_prefix}
    return names


def patch_grid(model: nn.Module) -> tuple[int, int] | None:
    """``(rows, cols)`` of the patch-token grid, or ``None`` if the model has no ``patch_embed.grid_size``."""
    pe = getattr(model, "patch_embed", None)
    g = getattr(pe, "grid_size", None)
    if g is None:
        return None
    return int(g[0]), int(g[1])


# ---------------------------------------------------------------------------------------- instrumentation
class _Instrumentation:
    """The site callbacks attached to one module, whose forward is overridden (through
    :func:`interp_core.forwards.replace_forward`) while any callback is attached."""

    def __init__(self, module: nn.Module, make_forward: Callable[[nn.Module, "_Instrumentation"], Callable]):
        self.fns: dict[str, list[HookFn]] = {}
        # the instrumented copy recomputes the module from its submodules, so ``inner`` is not called
        self.handle = replace_forward(module, lambda m, inner: make_forward(m, self))

    def call(self, key: str, t: torch.Tensor) -> torch.Tensor:
        for fn in self.fns.get(key, ()):
            new = fn(t)
            if new is not None:
                t = new
        return t

    def active(self, key: str) -> bool:
        return bool(self.fns.get(key))


# one instrumentation per module, shared by every site (and every HookedModel) attached to it: two stacked
# instrumented copies would hide the inner one's callbacks
_INSTRUMENTED: "weakref.WeakKeyDictionary[nn.Module, _Instrumentation]" = weakref.WeakKeyDictionary()


class _Handle:
    def __init__(self, module: nn.Module, key: str, fn: HookFn):
        self.module_ref = weakref.ref(module)
        self.key = key
        self.fn = fn
        self.removed = False

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        module = self.module_ref()
        if module is None:
            return
        inst = _INSTRUMENTED.get(module)
        if inst is None:
            return
        fns = inst.fns.get(self.key, [])
        for i, f in enumerate(fns):
            if f is self.fn:
                del fns[i]
                break
        if not fns:
            inst.fns.pop(self.key, None)
        if not inst.fns:
            del _INSTRUMENTED[module]
            inst.handle.remove()


def _attach(module: nn.Module, key: str, fn: HookFn, make_forward: Callable) -> _Handle:
    inst = _INSTRUMENTED.get(module)
    if inst is None:
        inst = _INSTRUMENTED[module] = _Instrumentation(module, make_forward)
    inst.fns.setdefault(key, []).append(fn)
    return _Handle(module, key, fn)


def _attention_forward(attn: nn.Module, inst: _Instrumentation) -> Callable:
    """timm ``Attention.forward`` (non-fused path) with site callbacks at q, k, v, pattern and z."""
    from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask

    def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        gate = attn.gate(x).sigmoid() if attn.gate is not None else None
        qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, F]
        q, k = attn.q_norm(q), attn.k_norm(k)
        # sites see [B, N, H, F]
        if inst.active("q"):
            q = inst.call("q", q.transpose(1, 2)).transpose(1, 2)
        if inst.active("k"):
            k = inst.call("k", k.transpose(1, 2)).transpose(1, 2)
        if inst.active("v"):
            v = inst.call("v", v.transpose(1, 2)).transpose(1, 2)
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        bias = resolve_self_attn_mask(N, scores, attn_mask, is_causal)
        scores = maybe_add_mask(scores, bias)
        pattern = scores.softmax(dim=-1)  # [B, H, Nq, Nk]
        if inst.active("pattern"):
            pattern = inst.call("pattern", pattern)
        pattern = attn.attn_drop(pattern)
        if inst.active("attn_drop"):
            pattern = inst.call("attn_drop", pattern)
        z = pattern @ v
        if inst.active("z"):
            z = inst.call("z", z.transpose(1, 2)).transpose(1, 2)
        out = z.transpose(1, 2).reshape(B, N, attn.attn_dim)
        out = attn.norm(out)
        if gate is not None:
            out = out * gate
        out = attn.proj(out)
        return attn.proj_drop(out)

    return forward


def _block_forward(block: nn.Module, inst: _Instrumentation) -> Callable:
    """timm ``Block.forward`` with a callback on the residual stream between the two branches."""

    def forward(x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        x = inst.call("resid_mid", x)
        x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return x

    return forward


def _eva_attention_forward(attn: nn.Module, inst: _Instrumentation) -> Callable:
    """timm ``EvaAttention.forward`` (non-fused path) with site callbacks at q, k (after ``q_norm`` /
    ``k_norm`` and the rotary embedding, i.e. what enters the dot product), v, pattern, attn_drop and z."""
    import torch.nn.functional as F
    from timm.layers import apply_rot_embed_cat
    from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask

    def forward(x: torch.Tensor, rope: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        B, N, C = x.shape
        gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
        if attn.qkv is not None:
            if attn.q_bias is None:
                qkv = attn.qkv(x)
            else:
                qkv_bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
                if getattr(attn, "qkv_bias_separate", False):
                    qkv = attn.qkv(x) + qkv_bias
                else:
                    qkv = F.linear(x, weight=attn.qkv.weight, bias=qkv_bias)
            q, k, v = qkv.reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q = attn.q_proj(x).reshape(B, N, attn.num_heads, -1).transpose(1, 2)
            k = attn.k_proj(x).reshape(B, N, attn.num_heads, -1).transpose(1, 2)
            v = attn.v_proj(x).reshape(B, N, attn.num_heads, -1).transpose(1, 2)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if rope is not None:
            npt = attn.num_prefix_tokens
            half = getattr(attn, "rotate_half", False)
            q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2).type_as(v)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        if inst.active("q"):
            q = inst.call("q", q.transpose(1, 2)).transpose(1, 2)
        if inst.active("k"):
            k = inst.call("k", k.transpose(1, 2)).transpose(1, 2)
        if inst.active("v"):
            v = inst.call("v", v.transpose(1, 2)).transpose(1, 2)
        scores = (q * attn.scale) @ k.transpose(-2, -1)
        scores = maybe_add_mask(scores, resolve_self_attn_mask(N, scores, attn_mask, is_causal=is_causal))
        pattern = scores.softmax(dim=-1)
        if inst.active("pattern"):
            pattern = inst.call("pattern", pattern)
        pattern = attn.attn_drop(pattern)
        if inst.active("attn_drop"):
            pattern = inst.call("attn_drop", pattern)
        z = pattern @ v
        if inst.active("z"):
            z = inst.call("z", z.transpose(1, 2)).transpose(1, 2)
        out = attn.norm(z.transpose(1, 2).reshape(B, N, C))
        if gate is not None:
            out = out * gate
        return attn.proj_drop(attn.proj(out))

    return forward


def _eva_block_forward(block: nn.Module, inst: _Instrumentation) -> Callable:
    """timm ``EvaBlock.forward`` with a callback on the residual stream between the two branches."""

    def forward(x: torch.Tensor, rope: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        x_attn = block.attn(block.norm1(x), rope=rope, attn_mask=attn_mask, is_causal=is_causal)
        if block.gamma_1 is not None:
            x_attn = block.gamma_1 * x_attn
        x = x + block.drop_path1(x_attn)
        x = inst.call("resid_mid", x)
        x_mlp = block.mlp(block.norm2(x))
        if block.gamma_2 is not None:
            x_mlp = block.gamma_2 * x_mlp
        return x + block.drop_path2(x_mlp)

    return forward


def _virtual_attach(path: str, key: str, make_forward: Callable) -> Callable[[nn.Module, HookFn], _Handle]:
    def attach(root: nn.Module, fn: HookFn) -> _Handle:
        module = root.get_submodule(path)
        return _attach(module, key, fn, make_forward)
    return attach


# ---------------------------------------------------------------------------------------- adapter
class ViTAdapter:
    """Canonical ViT sites (see the module docstring) plus every module path of the generic adapter.

    Args:
        example_input: optional input for the trace; default ``[1, C, H, W]`` zeros at the model's image size.
    """

    name = "vit"

    def __init__(self, example_input: Any = None):
        self._example = example_input
        self.trace_lazily = False  # True: no guessed example input (the trace runs on the first real input)

    def _blocks(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        blocks = getattr(model, "blocks", None)
        if isinstance(blocks, nn.Sequential | nn.ModuleList):
            return [(f"blocks.{i}", b) for i, b in enumerate(blocks)]
        return [(p, m) for p, m in model.named_modules() if _is_block(m)]

    def sites(self, model: nn.Module) -> list[Site]:
        # timm keeps q/k and the pattern as [B, H, N, F] / [B, H, N, N] inside Attention
        internal = {}
        for path, m in model.named_modules():
            if _is_plain_attention(m) or _is_plain_eva_attention(m):
                internal[f"{path}.q_norm"] = internal[f"{path}.k_norm"] = ("batch", "head", "pos", "feature")
        out = list(GenericAdapter(axes=internal, include_root=False).sites(model))
        names = prefix_names(model)
        tok = ("batch", "pos", "feature")
        head = ("batch", "pos", "head", "feature")
        modules = dict(model.named_modules())
        if "norm_pre" in modules:
            out.append(Site("embed", "norm_pre", axes=tok, pos_names=names,
                            description="token embeddings + position embeddings (input of the first block)"))
        for i, (path, block) in enumerate(self._blocks(model)):
            canon = f"blocks.{i}"
            out.append(Site(f"{canon}.resid_pre", path, kind="input", axes=tok, pos_names=names,
                            description=f"residual stream before block {i}"))
            out.append(Site(f"{canon}.resid_post", path, axes=tok, pos_names=names,
                            description=f"residual stream after block {i}"))
            mid = _block_forward if _is_plain_block(block) else _eva_block_forward if _is_plain_eva_block(block) \
                else None
            if mid is not None:
                out.append(Site(f"{canon}.resid_mid", path, kind="virtual", axes=tok, pos_names=names,
                                attach=_virtual_attach(path, "resid_mid", mid),
                                description=f"residual stream between attention and MLP of block {i}"))
            attn = getattr(block, "attn", None)
            if all(isinstance(getattr(block, sub, None), nn.Module) for sub in ("drop_path1", "drop_path2")):
                out.append(Site(f"{canon}.attn.out", f"{path}.drop_path1", axes=tok, pos_names=names,
                                description=f"attention branch added to the residual stream (block {i})"))
                out.append(Site(f"{canon}.mlp.out", f"{path}.drop_path2", axes=tok, pos_names=names,
                                description=f"MLP branch added to the residual stream (block {i})"))
            mlp = getattr(block, "mlp", None)
            if mlp is not None and _is_plain_mlp(mlp):
                out.append(Site(f"{canon}.mlp.hidden", f"{path}.mlp.act", axes=tok, pos_names=names,
                                description=f"MLP hidden units after the activation (block {i})"))
            instrumented = (_attention_forward if attn is not None and _is_plain_attention(attn) else
                            _eva_attention_forward if attn is not None and _is_plain_eva_attention(attn) else None)
            if instrumented is not None:
                for key in ATTN_SITES:
                    what = {"q": "queries", "k": "keys", "v": "values", "z": "head outputs before proj",
                            "pattern": "attention pattern [query, key]"}[key]
                    out.append(Site(f"{canon}.attn.{key}", f"{path}.attn", kind="virtual",
                                    axes=("batch", "head", "pos", "pos") if key == "pattern" else head,
                                    pos_names={} if key == "pattern" else names,
                                    attach=_virtual_attach(f"{path}.attn", key, instrumented),
                                    description=f"per-head {what} (block {i})"))
                # the module-path site of attn_drop would only run when some other head site is attached
                # (fused attention skips the module): replace it by the instrumented pattern after dropout
                drop = f"{path}.attn.attn_drop"
                out = [o for o in out if o.name != drop]
                out.append(Site(drop, f"{path}.attn", kind="virtual", axes=("batch", "head", "pos", "pos"),
                                attach=_virtual_attach(f"{path}.attn", "attn_drop", instrumented),
                                description=f"attention pattern after dropout (block {i})"))
        if isinstance(modules.get("norm"), nn.Module):
            out.append(Site("final_norm", "norm", axes=tok, pos_names=names,
                            description="final normalisation of the tokens (before pooling)"))
        out.append(Site("logits", "", axes=("batch", "feature"), description="class logits (model output)"))
        return out

    def default_sites(self, model: nn.Module) -> list[str]:
        names = ["embed"] + [f"blocks.{i}.resid_post" for i in range(len(self._blocks(model)))]
        return names + ["final_norm", "logits"]

    def example_input(self, model: nn.Module) -> Any | None:
        if self._example is not None:
            return self._example
        if self.trace_lazily:
            return None
        pe = getattr(model, "patch_embed", None)
        size = getattr(pe, "img_size", None)
        proj = getattr(pe, "proj", None)
        chans = getattr(proj, "in_channels", None)
        if size is None or chans is None:
            from .loading import default_input_size

            c, h, w = default_input_size(model)
            return torch.zeros(1, c, h, w)
        return torch.zeros(1, chans, int(size[0]), int(size[1]))

