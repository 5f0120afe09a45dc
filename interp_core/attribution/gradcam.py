"""Grad-CAM on any site, with a position selection: the one Grad-CAM of the suite (``vision`` calls it)."""

from __future__ import annotations

from typing import Any

import torch

from ..axes import flat_position
from ..errors import InputError, InputTypeError
from .base import AttributionMethod, Chunk, named_positions, prod, register_method, site_error

__all__ = ["LayerGradCam", "select_positions"]


def select_positions(positions: Any, pos_shape: tuple[int, ...], names: dict[str, int]) -> list[int] | None:
    """Flat positions (row-major over the pos axes) chosen by ``positions``; ``None`` means all of them.

    ``None`` / ``"unnamed"``: every position that is not named (drops a ViT's CLS and other prefix tokens;
    all positions of a CNN block); ``"all"``; an int, a name (``"cls"``) or a tuple with one index per pos
    axis; a list of those; or a boolean mask shaped like the pos axes.
    """
    n = prod(pos_shape)
    if isinstance(positions, str) and positions == "all":
        return None
    if positions is None or (isinstance(positions, str) and positions == "unnamed"):
        taken = set(names.values())
        keep = [i for i in range(n) if i not in taken]
        if not keep:
            raise InputError(f"positions: every position of the site is named ({sorted(names)}); pass "
                             f"positions='all' or a list")
        return None if len(keep) == n else keep
    if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
        if tuple(positions.shape) != tuple(pos_shape):
            raise InputError(f"positions: the mask has shape {tuple(positions.shape)}, expected the pos axes' "
                             f"shape {tuple(pos_shape)}")
        keep = positions.reshape(-1).nonzero()[:, 0].tolist()
    else:
        if isinstance(positions, torch.Tensor):
            positions = positions.tolist()
        items = positions if isinstance(positions, list) else [positions]
        if not all(isinstance(p, (int, str, tuple)) for p in items):
            raise InputTypeError(f"positions: expected ints, names, per-axis tuples, a list of them or a boolean "
                                 f"mask, got {positions!r}")
        keep = list(dict.fromkeys(flat_position(p, pos_shape, names, what="positions") for p in items))
    if not keep:
        raise InputError("positions: the selection is empty; select at least one position")
    return None if sorted(keep) == list(range(n)) else keep


@register_method
class LayerGradCam(AttributionMethod):
    """Grad-CAM (Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization") at a site ``A`` with axes ``[batch, *pos, (head,) feature]``:

        ``cam_p = sum_c w_c A_{p,c}``,  ``w_c = mean_{p in P} dF/dA_{p,c}``

    over channels ``c`` (every head x feature) and the selected positions ``P`` (``positions=``, default every
    unnamed position: a CNN block's cells, a ViT's patch tokens without CLS, as in pytorch-grad-cam's ViT
    recipe); ``relu_attributions=True`` applies Grad-CAM's ReLU. On a CNN block this is captum's
    ``LayerGradCam``; a site without positions gives ``sum_c dF/dA_c A_c``.

    Returns ``[batch, *pos]`` when every position is selected, else ``[batch, len(P)]`` over the selected
    positions in order (``config["positions"]`` lists them); ``F`` is the target's logit or the metric.
    Computed with the core's hooks, so virtual sites, reused modules, frozen models and ``torch.no_grad()``
    work; ``backend="captum"`` uses captum's class on a module site whose feature axis is dim 1.
    """

    name = "layer_gradcam"
    aliases = ("gradcam", "grad_cam", "layergradcam")
    layer = True
    backends = ("hooks", "captum")
    uses_baselines = False
    uses_positions = True

    def _backend_used(self) -> str:
        return "captum" if self.backend == "captum" else "hooks"

    def _extra_config(self) -> dict[str, Any]:
        return {"positions": getattr(self, "positions_", None)}

    def _chunk(self, c: Chunk) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...]]:
        extra = set(c.kwargs) - {"relu_attributions"}
        if extra:
            raise InputError(f"{sorted(extra)}: Grad-CAM takes relu_attributions= and positions= only")
        if c.return_convergence_delta:
            raise InputError("return_convergence_delta: Grad-CAM has no convergence delta; drop it")
        relu = bool(c.kwargs.get("relu_attributions", False))
        site = self.site_obj
        axes = site.axes
        if self.backend == "captum":
            return self._captum(c, relu)
        out, cache = self.hm.run_with_cache(c.x, sites=[site.name], grad=True)
        act = cache[site.name]
        score = c.metric(out)
        if not score.requires_grad:
            raise site_error(site.name, c.metric, "the output does not depend on it")
        grad, = torch.autograd.grad(score.sum(), act, allow_unused=True)
        if grad is None:
            raise site_error(site.name, c.metric, "no gradient reaches it")
        pdims = [k for k, a in enumerate(axes) if a == "pos"]
        cdims = [k for k, a in enumerate(axes) if a in ("head", "feature")]
        order = [0, *cdims, *pdims]  # batch, channels, positions
        pos_shape = tuple(act.shape[k] for k in pdims)
        a = act.detach().permute(order).reshape(act.shape[0], -1, prod(pos_shape))
        g = grad.permute(order).reshape(act.shape[0], -1, prod(pos_shape))
        keep = select_positions(c.positions, pos_shape, named_positions(self.hm, site)) if pdims else None
        self.positions_ = keep
        if keep is not None:
            idx = torch.as_tensor(keep, device=a.device)
            a, g = a.index_select(2, idx), g.index_select(2, idx)
        cam = (g.mean(2, keepdim=True) * a).sum(1) if pdims else (g * a).sum(1)[:, 0]
        if relu:
            cam = torch.relu(cam)
        if not pdims:
            return cam, None, ("batch",)
        if keep is None:
            return cam.reshape(act.shape[0], *pos_shape), None, ("batch", *["pos"] * len(pdims))
        return cam, None, ("batch", "pos")

    def _captum(self, c: Chunk, relu: bool) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...]]:
        import captum.attr as ca

        from .methods import _captum_layer, inplace_safe

        site = self.site_obj
        if "feature" in site.axes and site.axes.index("feature") != 1 or "head" in site.axes:
            raise InputError(f"backend: captum's LayerGradCam takes dim 1 as channels, but site '{site.name}' has "
                             f"axes {site.axes}; use backend='hooks' (the default)")
        if c.positions not in (None, "all", "unnamed"):
            raise InputError("positions: a position selection needs backend='hooks' (the default)")
        layer, to_input = _captum_layer(self.hm, site, self.name)
        with inplace_safe(layer):
            res = ca.LayerGradCam(c.forward, layer).attribute(c.x, target=c.target, relu_attributions=relu,
                                                              attribute_to_layer_input=to_input)
        res = res[:, 0] if res.dim() > 1 else res  # captum keeps a size-1 channel axis
        self.positions_ = None
        return res, None, tuple(a for k, a in enumerate(site.axes) if k != 1)
