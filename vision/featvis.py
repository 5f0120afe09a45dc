"""Feature visualisation by optimisation: the input that maximally drives a unit, channel or direction.

The method of Olah, Mordvintsev & Schubert, "Feature Visualization" (Distill, 2017), as implemented in lucid /
lucent (``optvis/param``, ``optvis/transform``, ``optvis/objectives``):

- **Parameterisation.** The image is not optimised pixel by pixel but in a decorrelated space: a real 2-D
  Fourier spectrum scaled by ``1 / max(f, 1/max(H, W)) ** decay_power`` (so all frequencies start with
  equal energy in the 1/f-scaled space, which removes the high-frequency noise that plain pixel ascent
  finds), inverse-FFT'd (``norm="ortho"``) and divided by 4; for 3 channels the colours are decorrelated with
  the square root of ImageNet's colour covariance (lucid's ``color_correlation_svd_sqrt``); a sigmoid maps
  to [0, 1]. ``param="pixel"`` is the plain baseline (pixels, sigmoid).
- **Robustness transforms.** Each step sees a randomly padded, jittered, scaled and rotated copy (all
  differentiable), so the result must work under small transformations rather than exploit pixel-exact
  adversarial patterns. Sizes scale with the image (lucid's defaults are for 224 px; below 32 px only a
  size-preserving shift of ``size / 8`` pixels, so the 8x8 digits get one pixel). A model with a fixed input
  size (a timm ViT's ``patch_embed.img_size``) gets each transformed image resized back to that size.
- **Dead units.** A unit that never fires (e.g. a ReLU whose input is negative for every image the optimiser
  sees) has a zero gradient: the image stays its initial noise and the objective stays 0. :func:`visualize`
  then warns (:class:`~interp_core.errors.InterpWarning`) and, given ``data=``, reports the objective's
  maximum over that data (``dataset_max``), so "never fires here" can be told from "never fires at all".
- **Objectives** read activations at sites through :meth:`interp_core.HookedModel.run_with_cache` with
  ``grad=True`` and compose like lucent's: ``channel("layer2", 3) - 0.5 * neuron("layer1", 0, (2, 2))``.
  An objective maps the activations to one value per image, which is **maximised**.

>>> obj = channel("layer1", 5) + 0.1 * direction("layer2", probe_w)
>>> res = visualize(hm, obj, image_shape=(1, 16, 16), steps=128, seed=0)
>>> res.image.shape  # [batch, channel, H, W] in [0, 1]; res.plot()
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from interp_core.axes import batch_pos_feature, flat_position
from interp_core.boundary import as_hooked, iter_batches
from interp_core.cache import ActivationCache
from interp_core.errors import InputError, InputIndexError, InputTypeError, InterpWarning
from interp_core.progress import progress_bar
from interp_core.results import Result, save_json

__all__ = [
    "Objective", "channel", "neuron", "direction", "feature", "FeatureVisualization", "visualize",
    "fft_image", "pixel_image", "to_valid_image", "jitter", "pad", "shift", "random_scale", "random_rotate",
    "standard_transforms", "normalizer", "fixed_input_size", "dataset_max",
]

ActFn = Callable[[ActivationCache], torch.Tensor]


# ------------------------------------------------------------------------------------------- objectives
class Objective:
    """A differentiable function of site activations → one value per image ``[batch]`` (to maximise).

    Compose with ``+``, ``-``, unary ``-``, and ``*`` / ``/`` by a scalar; ``sum([...])`` works too.

    Args:
        fn: ``fn(cache) -> [batch]`` where ``cache`` is an :class:`~interp_core.ActivationCache` of the
            sites (``cache[site]``, ``cache.axes(site)``, ``cache.site(site).pos_names``), kept in the graph.
        sites: the site names ``fn`` reads.
        description: a readable formula, e.g. ``"channel(layer1, 3) - 0.5*neuron(layer2, 0, (1, 1))"``.
    """

    def __init__(self, fn: ActFn, sites: Sequence[str], description: str = "objective"):
        self.fn = fn
        self.sites = tuple(dict.fromkeys(sites))
        self.description = description

    def __call__(self, cache: ActivationCache) -> torch.Tensor:
        return self.fn(cache)

    def __repr__(self) -> str:
        return f"Objective({self.description})"

    def __add__(self, other: "Objective | float") -> "Objective":
        if isinstance(other, (int, float)):
            if other == 0:
                return self
            c = float(other)
            return Objective(lambda a: self(a) + c, self.sites, f"{self.description} + {c:g}")
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda a: self(a) + other(a), self.sites + other.sites,
                         f"{self.description} + {other.description}")

    __radd__ = __add__  # sum([...]) starts from 0

    def __neg__(self) -> "Objective":
        return Objective(lambda a: -self(a), self.sites, f"-({self.description})")

    def __sub__(self, other: "Objective | float") -> "Objective":
        if isinstance(other, (int, float)):
            return self + (-float(other))
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(lambda a: self(a) - other(a), self.sites + other.sites,
                         f"{self.description} - ({other.description})")

    def __rsub__(self, other: float) -> "Objective":
        return (-self) + other

    def __mul__(self, k: float) -> "Objective":
        if isinstance(k, Objective):
            raise InputTypeError("objectives multiply by scalars only; use + and - to combine objectives")
        if not isinstance(k, (int, float)):
            return NotImplemented
        c = float(k)
        return Objective(lambda a: c * self(a), self.sites, f"{c:g}*({self.description})")

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> "Objective":
        if not isinstance(k, (int, float)):
            return NotImplemented
        return self * (1.0 / float(k))


def _check_feature(site: str, d: int, index: int, what: str = "channel") -> None:
    if not -d <= index < d:
        raise InputIndexError(f"{what} {index} is out of range at site '{site}', which has {d} features")


def channel(site: str, c: int) -> Objective:
    """Mean over all positions of feature (channel) ``c`` at ``site``: ``mean_p a[b, p, c]``."""
    def fn(acts: ActivationCache) -> torch.Tensor:
        t, _ = batch_pos_feature(acts[site], acts.axes(site))
        _check_feature(site, t.shape[-1], c)
        return t[:, :, c].mean(1)
    return Objective(fn, [site], f"channel({site}, {c})")


def neuron(site: str, c: int, pos: int | str | Sequence[int] | None = None) -> Objective:
    """Feature ``c`` at one position: ``a[b, pos, c]``.

    ``pos``: one index per pos axis (``(h, w)`` for a CNN map), a flat token index, or a named position
    (``"cls"``); default: the centre position (lucent's ``neuron``).
    """
    def fn(acts: ActivationCache) -> torch.Tensor:
        t, pos_shape = batch_pos_feature(acts[site], acts.axes(site))
        _check_feature(site, t.shape[-1], c)
        if pos is None:
            p = flat_position(tuple(s // 2 for s in pos_shape), pos_shape) if pos_shape else 0
        else:
            p = flat_position(pos, pos_shape, _pos_names(acts, site), what="neuron position")
        return t[:, p, c]
    return Objective(fn, [site], f"neuron({site}, {c}, {pos if pos is not None else 'centre'})")


def direction(site: str, vec: torch.Tensor | np.ndarray | Sequence[float], cosine: bool = False,
              pos: int | str | Sequence[int] | None = None) -> Objective:
    """Projection of the activation on ``vec`` (``[d]``, head+feature axes flattened), averaged over positions.

    ``a[b, p] · v / |v|`` (or the cosine similarity with ``cosine=True``, lucent's ``direction``); with
    ``pos`` given, only at that position.
    """
    v = torch.as_tensor(np.asarray(vec, dtype=np.float32) if not isinstance(vec, torch.Tensor) else vec)
    v = v.detach().float().flatten()
    if not torch.isfinite(v).all() or float(v.norm()) == 0:
        raise InputError("direction vector must be finite and non-zero")
    v = v / v.norm()

    def fn(acts: ActivationCache) -> torch.Tensor:
        t, pos_shape = batch_pos_feature(acts[site], acts.axes(site))
        if t.shape[-1] != v.numel():
            raise InputError(f"direction has {v.numel()} entries but site '{site}' has {t.shape[-1]} features")
        if pos is not None:
            t = t[:, [flat_position(pos, pos_shape, _pos_names(acts, site))]]
        w = v.to(t.dtype).to(t.device)
        proj = t @ w
        if cosine:
            proj = proj / t.norm(dim=-1).clamp_min(1e-8)
        return proj.mean(1)
    return Objective(fn, [site], f"direction({site}{', cosine' if cosine else ''})")


def feature(site: str, features_fn: Callable[[torch.Tensor], torch.Tensor], index: int,
            name: str = "feature") -> Objective:
    """Mean over positions of ``features_fn(rows)[:, index]`` — e.g. an SAE's encoder on ``[N, d]`` rows."""
    def fn(acts: ActivationCache) -> torch.Tensor:
        t, _ = batch_pos_feature(acts[site], acts.axes(site))
        b, p, d = t.shape
        f = features_fn(t.reshape(b * p, d))
        return f[:, index].reshape(b, p).mean(1)
    return Objective(fn, [site], f"{name}({site}, {index})")


def _pos_names(cache: ActivationCache, site: str) -> Mapping[str, int]:
    s = cache.site(site)
    return getattr(s, "pos_names", None) or {}


# ------------------------------------------------------------------------------------ parameterisations
# lucid's square root of the ImageNet colour covariance (optvis/param/color.py)
_COLOR_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR_NORMALIZED = _COLOR_SVD_SQRT / _COLOR_SVD_SQRT.norm(dim=0).max()


def _rfft2d_freqs(h: int, w: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def fft_image(shape: tuple[int, int, int, int], sd: float = 0.01, decay_power: float = 1.0,
              generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], Callable[[], torch.Tensor]]:
    """Fourier parameterisation: ``(params, render)``; ``render()`` → unbounded image ``[B, C, H, W]``."""
    b, c, h, w = shape
    freqs = _rfft2d_freqs(h, w)
    spectrum = (torch.randn(b, c, *freqs.shape, 2, generator=generator) * sd).requires_grad_(True)
    scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay_power

    def render() -> torch.Tensor:
        s = torch.view_as_complex(spectrum * scale[None, None, :, :, None])
        return torch.fft.irfftn(s, s=(h, w), norm="ortho") / 4.0

    return [spectrum], render


def pixel_image(shape: tuple[int, int, int, int], sd: float = 0.01,
                generator: torch.Generator | None = None) -> tuple[list[torch.Tensor], Callable[[], torch.Tensor]]:
    """Plain pixel parameterisation: ``(params, render)``."""
    x = (torch.randn(*shape, generator=generator) * sd).requires_grad_(True)
    return [x], lambda: x


def to_valid_image(x: torch.Tensor, decorrelate: bool) -> torch.Tensor:
    """Map an unbounded image to [0, 1]: optional colour decorrelation (3 channels), then a sigmoid."""
    if decorrelate:
        if x.shape[1] != 3:
            raise InputError(f"colour decorrelation needs 3 channels, got {x.shape[1]}")
        x = torch.einsum("bchw,dc->bdhw", x, _COLOR_NORMALIZED.to(x))
    return torch.sigmoid(x)


# ----------------------------------------------------------------------------------------- transforms
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _choice(values: Sequence[float], gen: torch.Generator) -> float:
    return float(values[int(torch.randint(len(values), (1,), generator=gen))])


def pad(p: int, value: float = 0.5) -> Transform:
    """Pad every side by ``p`` pixels with a constant (lucent's ``pad``; the canvas grows)."""
    def t(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return F.pad(x, (p, p, p, p), mode="constant", value=value) if p > 0 else x
    return t


def jitter(d: int) -> Transform:
    """Random crop that shifts the image by up to ``d - 1`` pixels (lucent's ``jitter``; the canvas shrinks)."""
    def t(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if d <= 1:
            return x
        h, w = x.shape[-2:]
        dy, dx = (int(v) for v in torch.randint(d, (2,), generator=gen))
        return x[..., dy:dy + h - d + 1, dx:dx + w - d + 1]
    return t


def shift(d: int, mode: str = "reflect") -> Transform:
    """Random translation by up to ``d`` pixels each way, size preserved (pad by ``d``, random crop back)."""
    def t(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if d <= 0:
            return x
        h, w = x.shape[-2:]
        padded = F.pad(x, (d, d, d, d), mode=mode)
        dy, dx = (int(v) for v in torch.randint(2 * d + 1, (2,), generator=gen))
        return padded[..., dy:dy + h, dx:dx + w]
    return t


def random_scale(scales: Sequence[float]) -> Transform:
    """Bilinear rescale by a factor drawn from ``scales``."""
    def t(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        s = _choice(scales, gen)
        h, w = x.shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        return x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return t


def random_rotate(angles: Sequence[float]) -> Transform:
    """Rotate about the centre by an angle (degrees) drawn from ``angles`` (bilinear, border padding)."""
    def t(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        a = math.radians(_choice(angles, gen))
        if a == 0:
            return x
        cos, sin = math.cos(a), math.sin(a)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return t


def standard_transforms(image_size: int) -> list[Transform]:
    """Robustness transforms for an image of side ``image_size``.

    From 32 px up: lucent's ``standard_transforms`` with pixel sizes scaled from 224 px (times 4, so small
    images still move by a few pixels): ``pad(12), jitter(8), random_scale([1 + (i - 5) / 50 for i in
    range(11)]), random_rotate(range(-10, 11) + 5 * [0]), jitter(4)``. Below 32 px (e.g. 8x8 digits), where a
    pixel is a large part of the object, only a size-preserving random shift by up to ``max(1, size // 8)``
    pixels (with the full set, class-logit visualisations of the 8x8 zoo models often fail to reach their
    class, and a fixed-size model cannot take the grown canvas).
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise InputError(f"image_size: must be a positive integer, got {image_size!r}")
    if image_size < 32:
        return [shift(max(1, image_size // 8))]
    k = image_size / 224
    return [pad(max(1, round(12 * k * 4))), jitter(max(2, round(8 * k * 4))),
            random_scale([1 + (i - 5) / 50 for i in range(11)]),
            random_rotate(list(range(-10, 11)) + 5 * [0]), jitter(max(2, round(4 * k * 4)))]


def normalizer(mean: float | Sequence[float], std: float | Sequence[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> (x - mean) / std`` per channel: maps the [0, 1] visualisation to the model's input space."""
    m = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    return lambda x: (x - m.to(x)) / s.to(x)


# --------------------------------------------------------------------------------------------- result
@dataclass
class FeatureVisualization(Result):
    """The optimised images and how they were made.

    Attributes:
        image: ``[batch, channel, H, W]`` in [0, 1] (what the model saw, before ``preprocess``).
        objective: the objective's formula.
        history: objective value (mean over the batch, on transformed images) at each step.
        final_value: ``[batch]`` objective value on the final, untransformed images.
        config: the arguments of :func:`visualize`.
        dead: the objective's gradient was zero at every step (the unit never fired; ``image`` is the
            initial noise).
        dataset_max: the objective's maximum over ``data`` (one value per example, then the max), when
            ``data`` was given; ``None`` otherwise.
    """

    image: torch.Tensor
    objective: str
    history: list[float]
    final_value: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)
    dead: bool = False
    dataset_max: float | None = None

    def plot(self, ax: Any = None, cmap: str = "gray") -> Any:
        """The images side by side (greyscale for one channel); returns the matplotlib figure."""
        import matplotlib.pyplot as plt

        b = self.image.shape[0]
        if ax is None:
            fig, axes = plt.subplots(1, b, figsize=(2.2 * b, 2.4), squeeze=False)
            axes = list(axes[0])
        else:
            axes = list(np.atleast_1d(ax))
            fig = axes[0].figure
        for i, a in enumerate(axes[:b]):
            img = self.image[i].detach().cpu()
            if img.shape[0] == 1:
                a.imshow(img[0].numpy(), cmap=cmap, vmin=0, vmax=1)
            else:
                a.imshow(img.permute(1, 2, 0).numpy()[..., :3])
            a.set_axis_off()
            a.set_title(f"{float(self.final_value[i]):.3g}", fontsize=8)
        title = self.objective
        if self.dead:
            title += " (never fired: initial noise)"
        if self.dataset_max is not None:
            title += f"; dataset max {self.dataset_max:.3g}"
        fig.suptitle(title, fontsize=9)
        return fig

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "image": self.image.tolist(), "image_shape": list(self.image.shape),
                "history": self.history, "final_value": self.final_value.tolist(), "config": self.config,
                "dead": self.dead, "dataset_max": self.dataset_max}

    def save(self, path: str | os.PathLike) -> Path:
        return save_json(self.to_dict(), path)


# ---------------------------------------------------------------------------------------------- main
def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """``(H, W)`` a model insists on (a timm patch embedding with ``strict_img_size`` and no dynamic size),
    or ``None`` when it takes any size."""
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is None or not getattr(pe, "strict_img_size", False) or getattr(pe, "dynamic_img_size", False):
        return None
    return int(size[0]), int(size[1])


def dataset_max(model: Any, objective: "Objective", data: Any, batch_size: int | None = None,
                progress: bool | None = None) -> float:
    """The maximum of ``objective`` over the examples of ``data`` (model inputs, fed as they are), eval mode."""
    hm = as_hooked(model)
    best = -math.inf
    with hm.analysis(), torch.no_grad():
        batches = iter_batches(data, model=hm, batch_size=batch_size, sites=list(objective.sites))
        for batch in progress_bar(batches, desc="dataset maximum", unit="batch",
                                  progress=progress):
            _, cache = hm.run_with_cache(batch.inputs, sites=list(objective.sites))
            best = max(best, float(objective(cache).max()))
    return best


def visualize(hm: Any, objective: Objective, steps: int = 128, image_shape: Sequence[int] = (3, 32, 32),
              batch: int = 1, param: str = "fft", decorrelate: bool | None = None,
              transforms: str | Sequence[Transform] | None = "standard", lr: float = 0.05, seed: int = 0,
              preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None, sd: float = 0.01,
              decay_power: float = 1.0, model_size: Sequence[int] | None = None, *, data: Any = None,
              train: bool = False, progress: bool | None = None) -> FeatureVisualization:
    """Optimise images to maximise ``objective`` (Adam on the image parameters; the model is untouched).

    Args:
        hm: the model: a :class:`interp_core.HookedModel` or a plain ``nn.Module`` (wrapped with the adapter
            the registry picks, :func:`interp_core.boundary.as_hooked`).
        objective: what to maximise, e.g. ``channel("layer1", 3)``.
        steps: optimisation steps.
        image_shape: ``(C, H, W)`` of the optimised image.
        batch: how many images (independent random starts, optimised together).
        param: ``"fft"`` (decorrelated Fourier, 1/f-scaled) or ``"pixel"``.
        decorrelate: colour decorrelation; default on for 3 channels.
        transforms: ``"standard"`` (:func:`standard_transforms`), ``None`` or a list of ``t(x, generator)``.
        lr: Adam learning rate (lucent's default 0.05).
        seed: seeds the initial image and the random transforms (results are deterministic).
        preprocess: maps the [0, 1] image to the model's input (e.g. :func:`normalizer`).
        model_size: ``(H, W)`` the model needs; transformed images are resized to it. Default: the model's
            fixed input size (:func:`fixed_input_size`, e.g. a timm ViT's ``img_size``), else no resizing.
        data: model inputs (tensor, numpy, ``Dataset``, ``DataLoader``): the objective's maximum over them is
            reported as ``dataset_max`` (with the warning when the unit never fires during optimisation).
        train: run the model in train mode (dropout on; buffers restored); default eval mode.
        progress: a progress bar over the steps (``None``: only on a terminal).

    Returns:
        :class:`FeatureVisualization`.
    """
    if not isinstance(objective, Objective):
        raise InputTypeError(f"objective: must be an Objective (channel(...), neuron(...), ...), got "
                             f"{type(objective).__name__}")
    hm = as_hooked(hm)
    if len(image_shape) != 3:
        raise InputError(f"image_shape: must be (C, H, W), got {tuple(image_shape)}")
    c, h, w = (int(v) for v in image_shape)
    if param not in ("fft", "pixel"):
        raise InputError(f"param: must be 'fft' or 'pixel', got {param!r}")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps: must be a positive integer, got {steps!r}")
    decorrelate = (c == 3) if decorrelate is None else decorrelate
    if transforms == "standard":
        tfs: list[Transform] = standard_transforms(max(h, w))
    elif transforms is None:
        tfs = []
    elif isinstance(transforms, str):
        raise InputError(f"transforms: must be 'standard', None or a list of callables, got {transforms!r}")
    else:
        tfs = list(transforms)
    target = tuple(model_size) if model_size is not None else fixed_input_size(hm.model)
    prep = preprocess if preprocess is not None else (lambda x: x)

    gen = torch.Generator().manual_seed(seed)
    shape = (batch, c, h, w)
    params, render = (fft_image(shape, sd, decay_power, gen) if param == "fft" else pixel_image(shape, sd, gen))
    opt = torch.optim.Adam(params, lr=lr)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if target is not None and tuple(x.shape[-2:]) != target:
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        _, cache = hm.run_with_cache(prep(x), sites=list(objective.sites), grad=True)
        value = objective(cache)
        if value.shape != (x.shape[0],):
            raise InputError(f"objective: {objective.description} returned shape {tuple(value.shape)}, "
                             f"expected one value per image ({x.shape[0]},)")
        return value

    history: list[float] = []
    device = hm.device
    ever_moved = False
    with hm.analysis(train=train):
        for _ in progress_bar(range(steps), desc="feature visualisation", unit="step",
                              progress=progress):
            img = to_valid_image(render(), decorrelate).to(device)
            x = img
            for t in tfs:
                x = t(x, gen)
            value = forward(x)
            loss = -value.sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = g if g is not None else torch.zeros_like(p)
                ever_moved = ever_moved or bool(p.grad.abs().sum() > 0)
            opt.step()
            history.append(float(value.detach().mean()))
        with torch.no_grad():
            img = to_valid_image(render(), decorrelate).to(device)
        final = forward(img).detach()
    best = dataset_max(hm, objective, data, progress=progress) if data is not None else None
    if not ever_moved:
        seen = (f"its maximum over the {_describe(data)} given is {best:.4g}" if best is not None else
                "pass data= to see its maximum over a dataset")
        warnings.warn(f"objective {objective.description}: the unit never fired during the {steps} steps (zero "
                      f"gradient, objective {history[-1]:.4g} throughout), so the image is its initial noise; "
                      f"{seen}. Try another unit, a pre-activation site, or param='pixel' with a larger sd",
                      InterpWarning, stacklevel=2)
    config = {"steps": steps, "image_shape": [c, h, w], "batch": batch, "param": param,
              "decorrelate": decorrelate, "transforms": transforms if isinstance(transforms, str) or
              transforms is None else [getattr(t, "__qualname__", repr(t)) for t in tfs],
              "lr": lr, "seed": seed, "sd": sd, "decay_power": decay_power,
              "model_size": list(target) if target is not None else None, "train": train}
    return FeatureVisualization(image=img.detach().cpu(), objective=objective.description, history=history,
                                final_value=final.cpu(), config=config, dead=not ever_moved, dataset_max=best)


def _describe(data: Any) -> str:
    n = len(data) if hasattr(data, "__len__") and not isinstance(data, torch.utils.data.DataLoader) else None
    return f"{n} examples" if n is not None else "data"
