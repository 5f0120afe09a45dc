"""Image attribution maps: captum methods on images, Grad-CAM on the image grid, attention rollout, overlays,
and the parameter-randomisation sanity check.

- :func:`attribution_map` — one call for input methods (integrated gradients, saliency, DeepLift,
  GradientSHAP; computed by :func:`interp_core.attribution.attribute`, i.e. captum) and Grad-CAM on any site.
  Grad-CAM is the core's (:class:`interp_core.attribution.LayerGradCam`): on a CNN block ``[batch, C, h, w]``
  the map over the cell grid; on a ViT token site ``[batch, N, D]`` the map over the patch tokens (the site's
  named positions, CLS and other prefix tokens, are left out of the gradient average and of the map, as in
  pytorch-grad-cam's ViT recipe), placed on the patch grid. So ``attribution_map(vit, x, "gradcam", site=s)``
  and ``attribute(vit, x, "gradcam", site=s)`` give the same numbers. Input-method maps are summed over the
  colour channels (signed, or of ``|attr|`` with ``abs=True``); Grad-CAM maps are upsampled bilinearly to the
  image size, as captum's ``LayerAttribution.interpolate(..., "bilinear")`` does.
- :func:`attention_rollout` — Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers": with
  ``A_l`` the head-averaged attention of block ``l`` (``[N, N]``, rows = queries), ``Â_l = 0.5 A_l + 0.5 I``
  (the residual connection) re-normalised by rows, the rollout is ``R = Â_L ... Â_1``; the map of an image is
  the CLS row of ``R`` over the patch tokens.
- :func:`overlay` — an image with an attribution map drawn over it.
- :func:`randomization_test` — the model-parameter randomisation test of Adebayo et al. 2018, "Sanity Checks
  for Saliency Maps": weights are re-initialised layer by layer from the output down (cascading), and the
  Spearman rank correlation between the original and the new maps (of ``|attr|``, and signed) is reported
  per step. A method whose maps do not change when the model is destroyed does not explain the model.

Models enter through :func:`interp_core.boundary.as_hooked` (``vision.wrap`` and ``HookedModel`` give the
same sites), images through :func:`interp_core.boundary.as_inputs`, and every analysis runs in
``hm.analysis()``; frozen models and ``torch.no_grad()`` blocks work.
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
from interp_core.attribution import INPUT_METHODS, AttributionResult, LayerGradCam, attribute, method_class
from interp_core.boundary import as_hooked, as_inputs
from interp_core.errors import InputError
from interp_core.progress import progress_bar
from interp_core.results import Result

from .vit import patch_grid

__all__ = ["ImageAttribution", "attribution_map", "attention_rollout", "overlay", "tokens_to_grid",
           "randomization_test", "RandomizationResult", "spearman", "mass_fraction"]


def _hooked(model: Any) -> HookedModel:
    return as_hooked(model)


def _images(images: Any, hm: HookedModel, argument: str = "images") -> torch.Tensor:
    x, _ = as_inputs(images, model=hm, argument=argument)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{argument}: expected images [batch, C, H, W], got {got}")
    return x


def _predicted(hm: HookedModel, images: torch.Tensor) -> torch.Tensor:
    from interp_core.metrics import logits_of

    with torch.no_grad(), hm.analysis():
        return logits_of(hm(images)).argmax(-1)


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

    def save(self, path: Any) -> Any:
        from interp_core.results import save_json

        return save_json(self.to_dict(), path)

    def plot(self, n: int = 4, alpha: float = 0.5) -> Any:
        """Overlays of the first ``n`` images and their maps (one row), each captioned with its image index and
        target, on one shared colour scale with a colour bar."""
        import matplotlib.pyplot as plt

        n = min(n, self.maps.shape[0])
        fig, axes = plt.subplots(1, n, figsize=(2.6 * n + 0.8, 2.8), squeeze=False)
        shown = self.maps[:n].detach().float()
        lo, hi = float(shown.min()), float(shown.max())
        if lo < 0:  # signed maps: a symmetric scale, so 0 has one colour in every panel
            hi = max(abs(lo), abs(hi)) or 1.0
            lo = -hi
        target = self.config.get("target")
        for i in range(n):
            overlay(self.images[i], self.maps[i], ax=axes[0, i], alpha=alpha, vmin=lo, vmax=hi)
            t = target[i] if isinstance(target, list) and len(target) == self.maps.shape[0] else target
            what = f"target {t}" if t is not None else self.config.get("metric")
            axes[0, i].set_title(f"image {i}" + (f", {what}" if what else ""), fontsize=8)
        fig.colorbar(axes[0, n - 1].images[-1], ax=list(axes[0]), shrink=0.8, label="attribution")
        fig.suptitle(self.method + (f" at {self.site}" if self.site else ""), fontsize=9)
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


def attribution_map(model: Any, images: Any, method: str = "integrated_gradients", target: Any = None,
                    site: str | None = None, metric: Callable | None = None, abs: bool | None = None,
                    **kwargs: Any) -> ImageAttribution:
    """Attribution maps ``[batch, H, W]`` for images.

    Args:
        model: a hooked model (``vision.wrap``) or an ``nn.Module``.
        images: ``[batch, C, H, W]`` (a tensor, array or anything :func:`interp_core.boundary.as_inputs` takes).
        method: an input method of :func:`interp_core.attribution.attribute` (``"integrated_gradients"``,
            ``"saliency"``, ``"deeplift"``, ``"gradient_shap"``) or ``"gradcam"`` (needs ``site``).
        target: class index (int or one per image); default the model's predicted class. Or ``metric``.
        site: Grad-CAM site: a CNN block (``layer4.1``) or a ViT token site (``blocks.5.resid_post``).
        abs: input methods: ``True`` sums ``|attr|`` over the colour channels, ``False`` the signed
            attributions (saliency then gives the signed gradient, captum's ``Saliency(abs=False)``), ``None``
            each method's own default (saliency ``|gradient|``, the others signed).
        **kwargs: passed to :func:`interp_core.attribution.attribute` (``n_steps``, ``baselines``,
            ``relu_attributions``, ``positions`` ...).
    """
    hm = _hooked(model)
    images = _images(images, hm)
    if target is None and metric is None:
        target = _predicted(hm, images)
    size = tuple(images.shape[-2:])
    if method_class(method) is LayerGradCam:
        if abs is not None:
            raise InputError("abs: applies to input methods; Grad-CAM maps are signed (relu_attributions=True "
                             "keeps the positive part)")
        if site is None:
            raise InputError("site: Grad-CAM needs site= (a CNN block such as 'layer4.1' or a ViT token site such "
                             "as 'blocks.5.resid_post')")
        kwargs.setdefault("positions", _patch_positions(hm, images, site))
        res = attribute(hm, images, "layer_gradcam", site=site, target=target, metric=metric, **kwargs)
        grid = _on_grid(res, hm, site)
        maps = _upsample(grid, size)
        name = "gradcam"
    else:
        if site is not None:
            raise InputError(f"site: {method} attributes to the input pixels; drop site= or use method='gradcam'")
        if method_class(method).name not in INPUT_METHODS:
            raise InputError(f"method: {method!r} is not an image attribution method; use one of "
                             f"{list(INPUT_METHODS) + ['gradcam']}")
        if abs is not None and method_class(method).name == "saliency":
            kwargs["abs"] = abs  # captum's Saliency takes |gradient| unless told otherwise
        res = attribute(hm, images, method, target=target, metric=metric,
                        input_axes=("batch", "feature", "pos", "pos"), **kwargs)
        a = res.attributions
        maps = (a.abs() if abs else a).sum(dim=1)
        grid = maps
        name = res.method
    shown_target = target.tolist() if isinstance(target, torch.Tensor) else target
    cfg = {"method": name, "site": site, "abs": abs, "target": shown_target if metric is None else None,
           "metric": getattr(metric, "name", getattr(metric, "__name__", None)) if metric is not None else None,
           **{k: repr(v) for k, v in kwargs.items()}}
    return ImageAttribution(maps=maps.detach(), grid=grid.detach(), method=name, site=site,
                            images=images.detach(), raw=res, config=cfg)


def _patch_positions(hm: HookedModel, images: torch.Tensor, site: str) -> list[int] | None:
    """``None`` (the core's default: the site's unnamed positions), or, for a ViT token site whose prefix
    tokens are not named, the patch tokens ``n_prefix ..`` explicitly."""
    from interp_core.attribution.base import named_positions

    hm._ensure_traced(images[:1])
    s = hm.sites[site]
    n_prefix = int(getattr(hm.model, "num_prefix_tokens", 0))
    grid = patch_grid(hm.model)
    if (grid is None or not n_prefix or s.axes is None or s.axes.count("pos") != 1 or s.shape is None
            or named_positions(hm, s)):
        return None
    n = s.shape[s.axes.index("pos") - 1]
    return list(range(n_prefix, n)) if n == n_prefix + grid[0] * grid[1] else None


def _on_grid(res: AttributionResult, hm: HookedModel, site: str) -> torch.Tensor:
    """The core's Grad-CAM map ``[batch, h, w]`` on the image's grid: a CNN map as it is, a ViT token map
    (patch tokens, or all tokens when the site names none) on the patch grid."""
    a = res.attributions
    n_pos = sum(r == "pos" for r in res.axes)
    if n_pos == 2:
        return a
    grid = patch_grid(hm.model)
    if n_pos == 1 and grid is not None:
        rows, cols = grid
        if a.shape[1] == rows * cols:
            return a.reshape(a.shape[0], rows, cols)
        return tokens_to_grid(a, hm.model)  # no named positions on this site: drop the prefix tokens here
    raise InputError(f"site: '{site}' gives a Grad-CAM map with axes {res.axes}; an image map needs two spatial "
                     f"axes (a CNN block) or a ViT token site (batch, pos, feature) on the patch grid")


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
    images = _images(images, hm)
    names = hm.sites.matching("blocks.*.attn.pattern")
    if blocks is not None:
        names = [f"blocks.{i}.attn.pattern" for i in blocks]
    if getattr(hm.model, "cls_token", None) is None:
        raise InputError("attention rollout reads the CLS token's row; this model has no CLS token")
    with torch.no_grad(), hm.analysis():
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
            cmap: str = "jet", vmin: float | None = None, vmax: float | None = None) -> Any:
    """Draw ``image`` (``[C, H, W]``, min-max scaled for display) with ``amap`` (``[H, W]`` or any grid,
    upsampled) on top, on the colour scale ``vmin .. vmax`` (default the map's range); returns the figure."""
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
    ax.imshow(m.numpy(), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
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
        # reset_parameters draws from torch's global generator: run it on a private fork, seeded from `gen`
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))
            module.reset_parameters()
        # BatchNorm's reset gives weight 1, bias 0: also randomise the affine part, as Adebayo et al. do
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            with torch.no_grad():
                module.weight.normal_(1.0, 0.5, generator=gen)
                module.bias.normal_(0.0, 0.5, generator=gen)
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.normal_(0.0, 0.02, generator=gen)


def _signed_and_absolute(hm: HookedModel, images: torch.Tensor, method: str, target: Any, site: str | None,
                         metric: Callable | None, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(signed, absolute)`` maps ``[batch, H, W]``: input methods' attributions summed over the colour
    channels, and of ``|attr|`` (for saliency the signed gradient and ``|gradient|``); Grad-CAM's map and its
    absolute value."""
    gradcam = method_class(method) is LayerGradCam
    res = attribution_map(hm, images, method=method, target=target, site=site, metric=metric,
                          abs=None if gradcam else False, progress=False, **kwargs)
    if gradcam:
        return res.maps, res.maps.abs()
    raw = res.raw.attributions
    return raw.sum(1), raw.abs().sum(1)


def randomization_test(model: Any, images: Any, method: str = "saliency", target: Any = None,
                       site: str | None = None, steps: Sequence[str] | None = None, seed: int = 0,
                       metric: Callable | None = None, progress: bool | None = None,
                       **kwargs: Any) -> RandomizationResult:
    """Cascading model-parameter randomisation test (Adebayo et al. 2018); see the module docstring.

    The model is deep-copied (the original is untouched). What is attributed is ``target`` or ``metric``;
    without either, the original model's predicted class, fixed across steps. Each step compares signed maps
    (saliency: the signed gradient) and absolute maps (``sum_c |attr|``; Grad-CAM: ``|map|``).

    Args:
        model: a hooked model or an ``nn.Module``.
        images: ``[batch, C, H, W]``.
        method, site, metric, **kwargs: as in :func:`attribution_map`.
        steps: module paths to re-initialise cumulatively, in order; a path re-initialises every module with
            parameters inside it, so ``["fc", "layer2", "layer1", "stem"]`` randomises block by block
            (default: every module owning parameters, from the output layer down to the input).
        seed: seed of the re-initialisation (a private generator: the global ones are untouched).
        progress: a tqdm bar over the steps (``None``: only on a terminal).
    """
    hm = _hooked(model)
    images = _images(images, hm)
    if "abs" in kwargs:
        raise InputError("abs: the randomisation test reports both signed and absolute maps; drop abs=")
    if target is None and metric is None:
        target = _predicted(hm, images)
    base, base_abs = _signed_and_absolute(hm, images, method, target, site, metric, kwargs)
    net = copy.deepcopy(hm.model)
    names = list(steps) if steps is not None else list(reversed(_param_modules(net)))
    modules = dict(net.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise InputError(f"steps: {unknown} are not module paths of the model (e.g. {list(modules)[1:5]})")
    owners = _param_modules(net)
    copy_hm = as_hooked(net)
    gen = torch.Generator().manual_seed(seed)
    rho_abs, rho = [spearman(base_abs, base_abs)], [spearman(base, base)]
    for n in progress_bar(names, desc="randomisation", progress=progress, leave=False):
        for p in owners:  # the module itself and every parameterised module inside it
            if p == n or p.startswith(n + "."):
                _reinit(modules[p], gen)
        m, m_abs = _signed_and_absolute(copy_hm, images, method, target, site, metric, kwargs)
        rho_abs.append(spearman(base_abs, m_abs))
        rho.append(spearman(base, m))
    per_image = torch.stack(rho_abs).numpy()
    return RandomizationResult(steps=["original"] + names, spearman_abs=per_image.mean(1),
                               spearman=torch.stack(rho).numpy().mean(1), spearman_abs_per_image=per_image,
                               method=method, config={"seed": seed, "site": site, "n_images": len(images),
                                                      "metric": getattr(metric, "name", None) if metric else None,
                                                      **{k: repr(v) for k, v in kwargs.items()}})
