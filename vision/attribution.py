"""Image attribution maps: captum methods on images, ViT token maps on the patch grid, attention rollout,
overlays, and the parameter-randomisation sanity check.

- :func:`attribution_map` — one call for input methods (integrated gradients, saliency, DeepLift,
  GradientSHAP; computed by :func:`interp_core.attribution.attribute`, i.e. captum) and Grad-CAM on any site:
  a CNN block ``[batch, C, h, w]`` (captum's ``LayerGradCam``) or a ViT token site ``[batch, N, D]``, reshaped
  to the patch grid automatically from the site's axes (prefix tokens dropped before the gradient average, as
  in pytorch-grad-cam's ViT recipe). Maps are summed over the
  colour channels (input methods) and upsampled bilinearly to the image size (Grad-CAM), as captum's
  ``LayerAttribution.interpolate(..., "bilinear")`` does.
- :func:`attention_rollout` — Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers": with
  ``A_l`` the head-averaged attention of block ``l`` (``[N, N]``, rows = queries), ``Â_l = 0.5 A_l + 0.5 I``
  (the residual connection) re-normalised by rows, the rollout is ``R = Â_L ... Â_1``; the map of an image is
  the CLS row of ``R`` over the patch tokens.
- :func:`overlay` — an image with an attribution map drawn over it.
- :func:`randomization_test` — the model-parameter randomisation test of Adebayo et al. 2018, "Sanity Checks
  for Saliency Maps": weights are re-initialised layer by layer from the output down (cascading), and the
  Spearman rank correlation between the original and the new maps (of ``|attr|``, and signed) is reported
  per step. A method whose maps do not change when the model is destroyed does not explain the model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from interp_core import HookedModel
from interp_core.attribution import INPUT_METHODS, AttributionResult, attribute
from interp_core.errors import InputError
from interp_core.results import Result

from .vit import patch_grid

__all__ = ["ImageAttribution", "attribution_map", "attention_rollout", "overlay", "tokens_to_grid",
           "randomization_test", "RandomizationResult", "spearman", "mass_fraction"]


def _hooked(model: Any) -> HookedModel:
    if isinstance(model, HookedModel):
        return model
    from .loading import wrap

    return wrap(model)


@dataclass
class ImageAttribution(Result):
    """Attribution maps over images.

    Attributes:
        maps: ``[batch, H, W]`` maps at the image resolution.
        grid: ``[batch, h, w]`` maps at their native resolution (the CNN cell grid or the ViT patch grid;
            equal to ``maps`` for input methods).
        method: the method; ``site``: the site (Grad-CAM) or ``None``.
        images: ``[batch, C, H, W]`` the inputs (for overlays).
        raw: the core's :class:`~interp_core.attribution.AttributionResult` (``None`` for rollout).
        config: the settings.
    """

    maps: torch.Tensor
    grid: torch.Tensor
    method: str
    site: str | None
    images: torch.Tensor
    raw: AttributionResult | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "site": self.site, "maps": self.maps.tolist(), "grid": self.grid.tolist(),
                "config": self.config}

    def mass_in(self, mask: torch.Tensor) -> torch.Tensor:
        """``[batch]`` fraction of ``|map|`` mass inside ``mask`` (``[H, W]`` or ``[batch, H, W]`` bool)."""
        return mass_fraction(self.maps, mask)

    def plot(self, n: int = 4, alpha: float = 0.5) -> Any:
        """Overlays of the first ``n`` images and their maps (one row)."""
        import matplotlib.pyplot as plt

        n = min(n, self.maps.shape[0])
        fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8), squeeze=False)
        for i in range(n):
            overlay(self.images[i], self.maps[i], ax=axes[0, i], alpha=alpha)
        fig.suptitle(self.method + (f" at {self.site}" if self.site else ""), fontsize=9)
        fig.tight_layout()
        return fig


def mass_fraction(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[batch]`` share of ``sum |map|`` that falls inside ``mask`` (``[H, W]`` or ``[batch, H, W]``)."""
    a = maps.abs().flatten(1)
    m = mask.to(torch.bool).expand_as(maps).flatten(1)
    return (a * m).sum(1) / a.sum(1).clamp_min(1e-30)


def tokens_to_grid(values: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Per-token values ``[batch, N]`` → ``[batch, rows, cols]`` on the patch grid (prefix tokens dropped)."""
    grid = patch_grid(model)
    if grid is None:
        raise InputError(f"{type(model).__name__} has no patch_embed.grid_size; cannot place tokens on a grid")
    n_prefix = int(getattr(model, "num_prefix_tokens", 0))
    rows, cols = grid
    if values.shape[-1] != n_prefix + rows * cols:
        raise InputError(f"{values.shape[-1]} tokens do not match {n_prefix} prefix tokens + a {rows}x{cols} "
                         f"patch grid")
    return values[:, n_prefix:].reshape(values.shape[0], rows, cols)


def _upsample(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(grid.shape[-2:]) == tuple(size):
        return grid
    return F.interpolate(grid.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]


def attribution_map(model: Any, images: torch.Tensor, method: str = "integrated_gradients", target: Any = None,
                    site: str | None = None, metric: Callable | None = None, abs: bool = False,
                    **kwargs: Any) -> ImageAttribution:
    """Attribution maps ``[batch, H, W]`` for images.

    Args:
        model: a hooked model (``vision.wrap``) or an ``nn.Module``.
        images: ``[batch, C, H, W]``.
        method: an input method of :func:`interp_core.attribution.attribute` (``"integrated_gradients"``,
            ``"saliency"``, ``"deeplift"``, ``"gradient_shap"``) or ``"gradcam"`` (needs ``site``).
        target: class index (int or one per image); default the model's predicted class. Or ``metric``.
        site: Grad-CAM site: a CNN block (``layer4.1``) or a ViT token site (``blocks.5.resid_post``).
        abs: sum ``|attr|`` over colour channels instead of the signed attributions.
        **kwargs: passed to :func:`interp_core.attribution.attribute` (``n_steps``, ``baselines``,
            ``relu_attributions`` ...).
    """
    hm = _hooked(model)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InputError(f"images must be a tensor [batch, C, H, W], got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if target is None and metric is None:
        with torch.no_grad(), hm.evaluating():
            target = hm(images).argmax(-1)
    key = method.lower().replace("-", "_")
    size = tuple(images.shape[-2:])
    if key in ("gradcam", "grad_cam", "layer_gradcam"):
        if site is None:
            raise InputError("Grad-CAM needs site= (a CNN block such as 'layer4.1' or a ViT token site such as "
                             "'blocks.5.resid_post')")
        hm._ensure_traced(images[:1])
        axes = hm.sites[site].axes
        if axes == ("batch", "pos", "feature") and patch_grid(hm.model) is not None:
            grid = _token_gradcam(hm, images, site, target, metric, bool(kwargs.get("relu_attributions", False)))
            res = AttributionResult(attributions=grid, axes=("batch", "pos", "pos"), method="layer_gradcam",
                                    site=site, config={"backend": "vision token grad-cam"})
            maps = _upsample(grid, size)
        else:
            res = attribute(hm, images, "layer_gradcam", site=site, target=target, metric=metric, **kwargs)
            if sum(a == "pos" for a in res.axes) != 2:
                raise InputError(f"site '{site}' gives a Grad-CAM map with axes {res.axes}; it needs two "
                                 f"spatial axes (a CNN block) or a ViT token site (batch, pos, feature)")
            grid = res.attributions
            maps = _upsample(grid, size)
        name = "gradcam"
    else:
        if site is not None:
            raise InputError(f"{method} attributes to the input pixels; drop site= or use method='gradcam'")
        res = attribute(hm, images, method, target=target, metric=metric,
                        input_axes=("batch", "feature", "pos", "pos"), **kwargs)
        if res.method not in INPUT_METHODS:
            raise InputError(f"method {method!r} is not an image attribution method; use one of "
                             f"{list(INPUT_METHODS) + ['gradcam']}")
        a = res.attributions
        maps = (a.abs() if abs else a).sum(dim=1)
        grid = maps
        name = res.method
    cfg = {"method": name, "site": site, "abs": abs, "target": target if isinstance(target, int) else "per-image",
           **{k: repr(v) for k, v in kwargs.items()}}
    return ImageAttribution(maps=maps.detach(), grid=grid.detach(), method=name, site=site,
                            images=images.detach(), raw=res, config=cfg)


def _token_gradcam(hm: HookedModel, images: torch.Tensor, site: str, target: Any, metric: Callable | None,
                   relu: bool) -> torch.Tensor:
    """Grad-CAM on a ViT token site, on the patch grid: ``sum_d mean_patches(dF/dA_d) * A_d`` over patch
    tokens (prefix tokens dropped before averaging, as pytorch-grad-cam's ViT reshape transform does)."""
    with hm.evaluating():
        out, cache = hm.run_with_cache(images, sites=[site], grad=True)
        if metric is not None:
            score = metric(out)
        else:
            t = torch.as_tensor(target).to(out.device)
            score = out[:, int(t)] if t.dim() == 0 else out.gather(1, t.reshape(-1, 1))[:, 0]
        act = cache[site]
        grad, = torch.autograd.grad(score.sum(), act)
    n_prefix = int(getattr(hm.model, "num_prefix_tokens", 0))
    a, g = act[:, n_prefix:].detach(), grad[:, n_prefix:]
    cam = (g.mean(1, keepdim=True) * a).sum(-1)
    if relu:
        cam = torch.relu(cam)
    rows, cols = patch_grid(hm.model)
    return cam.reshape(cam.shape[0], rows, cols)


def attention_rollout(model: Any, images: torch.Tensor, head_fusion: str = "mean", residual: bool = True,
                      blocks: Sequence[int] | None = None, interventions: dict | None = None) -> ImageAttribution:
    """Attention rollout maps (Abnar & Zuidema 2020) of a ViT; see the module docstring.

    Args:
        model: a ViT wrapped by ``vision.wrap``.
        images: ``[batch, C, H, W]``.
        head_fusion: ``"mean"`` (the paper), ``"max"`` or ``"min"`` over heads.
        residual: add the identity for the residual connection (``0.5 A + 0.5 I``, rows re-normalised).
        blocks: which blocks to roll out (default all).
        interventions: applied during the forward (e.g. to study an ablated model).

    Returns:
        :class:`ImageAttribution` with ``grid`` ``[batch, rows, cols]`` (the CLS row of the rollout over patch
        tokens) and ``maps`` upsampled to the image; ``config["rollout"]`` holds ``[batch, N, N]``.
    """
    hm = _hooked(model)
    names = hm.sites.matching("blocks.*.attn.pattern")
    if blocks is not None:
        names = [f"blocks.{i}.attn.pattern" for i in blocks]
    if getattr(hm.model, "cls_token", None) is None:
        raise InputError("attention rollout reads the CLS token's row; this model has no CLS token")
    with torch.no_grad(), hm.evaluating():
        _, cache = hm.run_with_cache(images, sites=names, interventions=interventions)
    rollout = None
    for name in names:
        p = cache[name]  # [B, H, N, N]
        if head_fusion == "mean":
            a = p.mean(1)
        elif head_fusion == "max":
            a = p.amax(1)
        elif head_fusion == "min":
            a = p.amin(1)
        else:
            raise InputError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    cls = rollout[:, 0]  # [B, N]
    grid = tokens_to_grid(cls, hm.model)
    maps = _upsample(grid, tuple(images.shape[-2:]))
    return ImageAttribution(maps=maps, grid=grid, method="attention_rollout", site=None, images=images.detach(),
                            config={"head_fusion": head_fusion, "residual": residual, "blocks": names,
                                    "rollout": rollout})


def overlay(image: torch.Tensor, amap: torch.Tensor, ax: Any = None, alpha: float = 0.5,
            cmap: str = "jet") -> Any:
    """Draw ``image`` (``[C, H, W]``, min-max scaled for display) with ``amap`` (``[H, W]`` or any grid,
    upsampled) on top; returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(3, 3))
    else:
        fig = ax.figure
    img = image.detach().cpu().float()
    img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    img = img.permute(1, 2, 0).numpy()
    if img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray")
    else:
        ax.imshow(img[..., :3])
    m = amap.detach().cpu().float()
    if tuple(m.shape) != tuple(image.shape[-2:]):
        m = _upsample(m.unsqueeze(0), tuple(image.shape[-2:]))[0]
    ax.imshow(m.numpy(), cmap=cmap, alpha=alpha)
    ax.set_axis_off()
    return fig


# ------------------------------------------------------------------------------- sanity check
def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per row of ``a``, ``b`` ``[batch, ...]`` (average ranks for ties): the
    Pearson correlation of the ranks (Spearman 1904). Returns ``[batch]``."""
    from scipy.stats import rankdata

    ra = torch.as_tensor(rankdata(a.detach().flatten(1).cpu().double().numpy(), axis=1))
    rb = torch.as_tensor(rankdata(b.detach().flatten(1).cpu().double().numpy(), axis=1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    denom = (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-30)
    return ((ra * rb).sum(1) / denom).float()


@dataclass
class RandomizationResult(Result):
    """Cascading model-parameter randomisation (Adebayo et al. 2018).

    Attributes:
        steps: ``["original", module, module, ...]``: step ``k`` has the ``k`` last parameterised modules
            re-initialised (output layer first).
        spearman_abs: ``[steps]`` mean over images of the Spearman correlation of ``|map|`` with the
            original map; ``spearman``: the same on signed maps; ``spearman_abs_per_image``: ``[steps, batch]``.
        method: the attribution method; ``config``: the settings.
    """

    steps: list[str]
    spearman_abs: np.ndarray
    spearman: np.ndarray
    spearman_abs_per_image: np.ndarray
    method: str
    config: dict[str, Any] = field(default_factory=dict)

    def plot(self, ax: Any = None) -> Any:
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 3.4))
        else:
            fig = ax.figure
        x = np.arange(len(self.steps))
        ax.plot(x, self.spearman_abs, "o-", label="Spearman |attr|")
        ax.plot(x, self.spearman, "s--", label="Spearman (signed)")
        ax.set_xticks(x)
        ax.set_xticklabels(self.steps, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("rank correlation with original")
        ax.set_ylim(-1.02, 1.02)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"cascading randomisation: {self.method}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig


def _param_modules(model: nn.Module) -> list[str]:
    """Modules that own parameters directly, in forward-definition order."""
    return [p for p, m in model.named_modules() if p and any(True for _ in m.parameters(recurse=False))]


def _reinit(module: nn.Module, gen: torch.Generator) -> None:
    if hasattr(module, "reset_parameters"):
        state = torch.random.get_rng_state()
        torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))
        try:
            module.reset_parameters()
        finally:
            torch.random.set_rng_state(state)
        # BatchNorm's reset gives weight 1, bias 0: also randomise the affine part, as Adebayo et al. do
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            with torch.no_grad():
                module.weight.normal_(1.0, 0.5, generator=gen)
                module.bias.normal_(0.0, 0.5, generator=gen)
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.normal_(0.0, 0.02, generator=gen)


def randomization_test(model: Any, images: torch.Tensor, method: str = "saliency", target: Any = None,
                       site: str | None = None, steps: Sequence[str] | None = None, seed: int = 0,
                       **kwargs: Any) -> RandomizationResult:
    """Cascading model-parameter randomisation test (Adebayo et al. 2018); see the module docstring.

    The model is deep-copied (the original is untouched). The target defaults to the original model's
    prediction and stays fixed across steps.

    Args:
        model: a hooked model or an ``nn.Module``.
        images: ``[batch, C, H, W]``.
        method, site, **kwargs: as in :func:`attribution_map`.
        steps: module paths to re-initialise cumulatively, in order; a path re-initialises every module with
            parameters inside it, so ``["fc", "layer2", "layer1", "stem"]`` randomises block by block
            (default: every module owning parameters, from the output layer down to the input).
        seed: seed of the re-initialisation.
    """
    hm = _hooked(model)
    if target is None:
        with torch.no_grad(), hm.evaluating():
            target = hm(images).argmax(-1)
    base = attribution_map(hm, images, method=method, target=target, site=site, **kwargs).maps
    net = copy.deepcopy(hm.model).eval()
    names = list(steps) if steps is not None else list(reversed(_param_modules(net)))
    modules = dict(net.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise InputError(f"steps {unknown} are not module paths of the model")
    owners = _param_modules(net)
    from .loading import wrap

    copy_hm = wrap(net, example_input=images[:1])
    gen = torch.Generator().manual_seed(seed)
    rho_abs, rho = [spearman(base.abs(), base.abs())], [spearman(base, base)]
    for n in names:
        for p in owners:  # the module itself and every parameterised module inside it
            if p == n or p.startswith(n + "."):
                _reinit(modules[p], gen)
        m = attribution_map(copy_hm, images, method=method, target=target, site=site, **kwargs).maps
        rho_abs.append(spearman(base.abs(), m.abs()))
        rho.append(spearman(base, m))
    per_image = torch.stack(rho_abs).numpy()
    return RandomizationResult(steps=["original"] + names, spearman_abs=per_image.mean(1),
                               spearman=torch.stack(rho).numpy().mean(1), spearman_abs_per_image=per_image,
                               method=method, config={"seed": seed, "site": site, "n_images": len(images),
                                                      **{k: repr(v) for k, v in kwargs.items()}})
