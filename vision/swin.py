"""The Swin adapter: timm Swin Transformers (v1 and V2) run channels-last and attend inside windows.

timm's ``SwinTransformer`` keeps its feature maps as ``[B, H, W, C]`` (channels last), so the CNN rule
(``[B, C, H, W]`` -> ``("batch", "feature", "pos", "pos")``) would call the 14 rows of a ``(B, 14, 14, 96)``
map its features. Its window attention runs on ``[B * windows, tokens per window, C]``, whose first axis is
not the batch. This adapter labels both correctly (``B`` batch, ``H x W`` the stage's grid, ``C`` its width,
``nW`` windows, ``T`` tokens per window, ``heads``):

- channels-last maps ``("batch", "pos", "pos", "feature")`` ``[B, H, W, C]``: ``patch_embed`` (and its norm),
  ``layers.{i}`` (stages), ``layers.{i}.downsample`` (patch merging, with its norm and reduction),
  ``layers.{i}.blocks.{j}`` (blocks: the residual stream after the block), their ``norm1`` and
  ``drop_path1`` (the attention branch; in V2 ``norm1`` follows the attention), and the final ``norm``;
- token rows ``("batch", "pos", "feature")`` ``[B, H*W, C]`` (row-major over the grid): a block's ``norm2``,
  ``mlp.*`` and ``drop_path2`` (the MLP branch);
- window attention, every module under ``layers.{i}.blocks.{j}.attn``: regrouped per image, ``[B, nW, T, C]``
  with axes ``("batch", "pos", "pos", "feature")`` (window, token in window: windows of the *cyclically
  shifted* grid in shifted blocks) and ``[B, nW, heads, T, T]`` ``("batch", "pos", "head", "pos", "pos")`` for
  the softmax / dropout of the non-fused path. These are virtual sites: a hook reshapes the module's
  ``[B * nW, ...]`` output to ``[B, nW, ...]`` (the block's input gives ``B``) and writes back the same way;
- Swin V2's continuous position-bias MLP (``attn.cpb_mlp``) computes from the window geometry, not from the
  images (no batch axis): it is not a site;
- convolutions (``patch_embed.proj``) keep ``("batch", "feature", "pos", "pos")``; the head's 2-d outputs are
  ``("batch", "feature")``; ``logits`` is the model's output.

Default sites: every block (``layers.{i}.blocks.{j}``), the final ``norm`` and ``logits``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from interp_core.sites import GenericAdapter, HookFn, Site

__all__ = ["SwinAdapter", "is_swin"]

CHANNELS_LAST = ("batch", "pos", "pos", "feature")
TOKENS = ("batch", "pos", "feature")
WINDOW_TOKENS = ("batch", "pos", "pos", "feature")
WINDOW_PATTERN = ("batch", "pos", "head", "pos", "pos")


def _swin_classes() -> tuple[tuple[type, ...], tuple[type, ...]] | None:
    """``(model classes, block classes)`` of timm's Swin (v1) and Swin V2."""
    try:
        from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
        from timm.models.swin_transformer_v2 import SwinTransformerV2, SwinTransformerV2Block
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    return (SwinTransformer, SwinTransformerV2), (SwinTransformerBlock, SwinTransformerV2Block)


def is_swin(model: nn.Module) -> bool:
    """True for timm ``SwinTransformer`` / ``SwinTransformerV2`` models and models built from their blocks."""
    classes = _swin_classes()
    if classes is None:
        return False
    return isinstance(model, classes[0]) or any(isinstance(m, classes[1]) for m in model.modules())


class _Handles:
    def __init__(self, *handles: Any):
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _window_attach(block_path: str, module_path: str):
    """``attach(root, fn)`` for a module inside a block's window attention: ``fn`` sees ``[B, nW, ...]``."""

    def attach(root: nn.Module, fn: HookFn) -> _Handles:
        block = root.get_submodule(block_path)
        module = root.get_submodule(module_path)
        seen: dict[str, int] = {}

        def pre(m: nn.Module, args: tuple) -> None:
            seen["batch"] = int(args[0].shape[0])

        def hook(m: nn.Module, args: tuple, out: Any) -> Any:
            if not isinstance(out, torch.Tensor) or "batch" not in seen:
                return None
            b = seen["batch"]
            new = fn(out.reshape(b, out.shape[0] // b, *out.shape[1:]))
            return None if new is None else new.reshape(out.shape)

        return _Handles(block.register_forward_pre_hook(pre), module.register_forward_hook(hook))

    return attach


class SwinAdapter:
    """Sites of timm Swin Transformers with channels-last and per-window axes (see the module docstring).

    Args:
        example_input: optional input for the trace; default zeros at the model's image size.
    """

    name = "swin"

    def __init__(self, example_input: Any = None):
        self._example = example_input

    def _blocks(self, model: nn.Module) -> list[str]:
        classes = _swin_classes()
        return [p for p, m in model.named_modules() if classes is not None and isinstance(m, classes[1])]

    def sites(self, model: nn.Module) -> list[Site]:
        modules = dict(model.named_modules())
        blocks = self._blocks(model)
        axes: dict[str, tuple[str, ...]] = {}
        windowed: dict[str, str] = {}  # module path -> its block
        for path, m in modules.items():
            if not path or isinstance(m, nn.Conv2d):
                continue
            block = next((b for b in blocks if path == b or path.startswith(b + ".")), None)
            if block is not None:
                rel = path[len(block) + 1:]
                if rel.startswith("attn.cpb_mlp"):
                    continue  # Swin V2's position-bias MLP runs on the window geometry, not on the images
                if rel == "attn" or rel.startswith("attn."):
                    windowed[path] = block
                elif rel in ("", "norm1", "drop_path1"):
                    axes[path] = CHANNELS_LAST
                else:  # norm2, mlp.*, drop_path2 run on [B, H*W, C]
                    axes[path] = TOKENS
            elif path == "head" or path.startswith("head."):
                continue
            elif path == "norm" or path.split(".")[0] in ("patch_embed", "layers"):
                axes[path] = CHANNELS_LAST
        skipped = {p for p in modules if ".attn.cpb_mlp" in p}
        out = [s for s in GenericAdapter(axes=axes, include_root=False).sites(model)
               if s.name not in windowed and s.name not in skipped]
        for path, block in windowed.items():
            leaf = path.rsplit(".", 1)[-1]
            out.append(Site(path, path, kind="virtual",
                            axes=WINDOW_PATTERN if leaf in ("softmax", "attn_drop") else WINDOW_TOKENS,
                            attach=_window_attach(block, path),
                            description=f"{type(modules[path]).__name__} per window, regrouped per image"))
        out.append(Site("logits", "", axes=("batch", "feature"), description="class logits (model output)"))
        return out

    def default_sites(self, model: nn.Module) -> list[str]:
        return self._blocks(model) + (["norm"] if isinstance(getattr(model, "norm", None), nn.Module) else []) + [
            "logits"]

    def example_input(self, model: nn.Module) -> Any | None:
        if self._example is not None:
            return self._example
        from .loading import default_input_size

        c, h, w = default_input_size(model)
        return torch.zeros(1, c, h, w)
