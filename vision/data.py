"""Image data with known truth: real 8x8 digits and synthetic shapes with ground-truth factors.

- :func:`digits` — scikit-learn's bundled handwritten digits (1,797 real 8x8 greyscale images, 10 classes;
  Alpaydin & Kaynak, UCI "Optical Recognition of Handwritten Digits"), with one fixed, stratified
  train/test split (seed 0, 20% test) so every model card and test in the suite sees the same images.
- :func:`shapes` — synthetic RGB images of a square, circle or triangle, generated on the fly and
  deterministically from ``(seed, index)``; every image comes with its generating factors (shape, colour,
  size, position, background) and, optionally, a planted **shortcut**: a small white mark in the top-left
  corner whose presence is correlated with one class. Probes, patching and attribution can then be checked
  against a truth that is known by construction (the mark region, the factors).

No network access is needed: both datasets ship with the installed packages or are generated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from interp_core.errors import InputError, InputIndexError

__all__ = [
    "DIGITS_MEAN", "DIGITS_STD", "ImageDataset", "digits", "digits_tensors",
    "ShapesDataset", "shapes", "SHAPE_NAMES", "COLOUR_NAMES", "COLOURS",
]

# Pixel statistics of the digits *train* split after scaling to [0, 1] (raw values are 0..16). Fixed constants
# (recomputed and checked in tests) so normalisation never depends on which split was loaded first.
DIGITS_MEAN = 0.30538
DIGITS_STD = 0.37612
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


class ImageDataset(Dataset):
    """A map-style dataset over in-memory image and label tensors.

    Items are ``(image [C, H, W] float32, label int)``. ``.images`` ``[N, C, H, W]`` and ``.labels`` ``[N]``
    hold everything; ``.indices`` are the positions of the items in the source collection (for digits: in
    ``sklearn.datasets.load_digits()``), so an item can always be traced back.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None,
                 name: str = "images"):
        if images.ndim != 4:
            raise InputError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise InputError(f"labels must be [N] with N={images.shape[0]}, got shape {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.indices = indices if indices is not None else torch.arange(images.shape[0])
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X [N, C, H, W], y [N])``."""
        return self.images, self.labels

    def __repr__(self) -> str:
        return f"ImageDataset({self.name}, n={len(self)}, image={tuple(self.images.shape[1:])})"


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # [1797, 8, 8] in [0, 1]
    labels = bunch.target.astype(np.int64)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, stratify=labels,
                                           random_state=DIGITS_SPLIT_SEED, shuffle=True)
    return images, labels, np.sort(train_idx), np.sort(test_idx)


def digits(split: Literal["train", "test", "all"] = "train", size: int = 8, normalize: bool = True,
           mode: str = "bilinear") -> ImageDataset:
    """The scikit-learn digits as a torch dataset of ``(image [1, size, size], label)``.

    Args:
        split: ``"train"`` (1,437 images), ``"test"`` (360 images) or ``"all"``. The split is fixed:
            ``train_test_split(test_size=0.2, stratify=labels, random_state=0)``.
        size: side length; 8 is the native resolution, larger values upscale with ``F.interpolate``.
        normalize: subtract :data:`DIGITS_MEAN` and divide by :data:`DIGITS_STD` (train-split statistics of
            the [0, 1]-scaled pixels); otherwise pixels are in [0, 1].
        mode: interpolation mode for upscaling (``"bilinear"``, ``"nearest"``, ``"bicubic"``).
    """
    if split not in ("train", "test", "all"):
        raise InputError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if not isinstance(size, int) or size < 8:
        raise InputError(f"size must be an int >= 8 (native digits are 8x8), got {size!r}")
    images, labels, train_idx, test_idx = _digits_split()
    idx = {"train": train_idx, "test": test_idx, "all": np.arange(len(labels))}[split]
    x = torch.from_numpy(images[idx]).unsqueeze(1)  # [N, 1, 8, 8]
    if size != 8:
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        x = F.interpolate(x, size=(size, size), mode=mode, **kwargs)
    if normalize:
        x = (x - DIGITS_MEAN) / DIGITS_STD
    return ImageDataset(x.contiguous(), torch.from_numpy(labels[idx]), torch.from_numpy(idx),
                        name=f"digits-{split}-{size}")


def digits_tensors(split: Literal["train", "test", "all"] = "train", size: int = 8,
                   normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X [N, 1, size, size], y [N])`` for :func:`digits` (same arguments)."""
    return digits(split, size=size, normalize=normalize).tensors()


# ----------------------------------------------------------------------------------------------- shapes
SHAPE_NAMES = ("square", "circle", "triangle")
COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")
COLOURS = torch.tensor([[0.9, 0.15, 0.15], [0.15, 0.8, 0.2], [0.2, 0.3, 0.95],
                        [0.9, 0.85, 0.15], [0.85, 0.2, 0.85], [0.15, 0.85, 0.85]])
FACTOR_NAMES = ("shape", "colour", "size", "x", "y", "background", "mark")


@dataclass(frozen=True)
class ShapesConfig:
    n: int
    seed: int
    image_size: int
    shortcut: float | None  # P(mark | label == shortcut_class); None: no mark at all
    shortcut_class: int
    force_mark: bool | None
    mark_size: int
    noise: float


class ShapesDataset(Dataset):
    """Synthetic shapes with ground-truth factors; see :func:`shapes`.

    Items are ``(image [3, H, W] float32 in [0, 1], label int, factors dict)`` with factors
    ``shape`` (= label; index into :data:`SHAPE_NAMES`), ``colour`` (index into :data:`COLOUR_NAMES`),
    ``size`` (half-extent in pixels), ``x``, ``y`` (centre, pixels, column / row), ``background`` (grey level)
    and ``mark`` (1 if the shortcut mark is drawn). The default ``collate`` of a ``DataLoader`` turns the
    factors into a dict of ``[batch]`` tensors.

    Attributes:
        mark_box: ``(top, left, height, width)`` of the mark in pixels.
        config: the generating parameters.
    """

    def __init__(self, config: ShapesConfig):
        self.config = config
        m = config.mark_size
        self.mark_box = (1, 1, m, m)
        # shapes keep clear of the mark: their bounding box starts beyond this margin
        self.margin = m + 2
        s = config.image_size
        self.min_size = max(2, round(s * 0.12))
        self.max_size = max(self.min_size, round(s * 0.25))
        if 2 * (self.margin + self.max_size) >= s:
            raise InputError(f"image_size={s} is too small for shapes with mark_size={m}; use image_size >= "
                             f"{2 * (self.margin + self.max_size) + 1} or a smaller mark")
        self._factors: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.config.n

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.config.seed, index]))

    def _sample(self, index: int) -> tuple[dict[str, float | int], np.random.Generator]:
        if not 0 <= index < self.config.n:
            raise InputIndexError(f"index {index} out of range for a shapes dataset of n={self.config.n}")
        c = self.config
        rng = self._rng(index)
        shape = int(rng.integers(len(SHAPE_NAMES)))
        colour = int(rng.integers(len(COLOUR_NAMES)))
        size = int(rng.integers(self.min_size, self.max_size + 1))
        lo, hi = self.margin + size, c.image_size - 1 - self.margin - size
        x = int(rng.integers(lo, hi + 1))
        y = int(rng.integers(lo, hi + 1))
        background = float(rng.uniform(0.0, 0.35))
        u = float(rng.uniform())
        if c.force_mark is not None:
            mark = int(c.force_mark)
        elif c.shortcut is None:
            mark = 0
        else:
            p = c.shortcut if shape == c.shortcut_class else 1.0 - c.shortcut
            mark = int(u < p)
        f = {"shape": shape, "colour": colour, "size": size, "x": x, "y": y, "background": background,
             "mark": mark}
        return f, rng

    def factors_of(self, index: int) -> dict[str, float | int]:
        """The factors of one item, without rendering it."""
        return self._sample(index)[0]

    def factors(self) -> dict[str, torch.Tensor]:
        """All factors as ``{name: [N] tensor}`` (cheap: nothing is rendered)."""
        if self._factors is None:
            rows = [self.factors_of(i) for i in range(len(self))]
            self._factors = {k: torch.tensor([r[k] for r in rows],
                                              dtype=torch.float32 if k == "background" else torch.int64)
                             for k in FACTOR_NAMES}
        return self._factors

    @property
    def labels(self) -> torch.Tensor:
        """``[N]`` shape classes."""
        return self.factors()["shape"]

    def mark_mask(self) -> torch.Tensor:
        """``[H, W]`` bool, True on the pixels of the shortcut mark."""
        s = self.config.image_size
        top, left, h, w = self.mark_box
        mask = torch.zeros(s, s, dtype=torch.bool)
        mask[top:top + h, left:left + w] = True
        return mask

    def shape_mask(self, index: int) -> torch.Tensor:
        """``[H, W]`` bool, True on the pixels of the item's shape."""
        f = self.factors_of(index)
        return _shape_mask(self.config.image_size, f["shape"], f["x"], f["y"], f["size"])

    def render(self, index: int) -> tuple[torch.Tensor, dict[str, float | int]]:
        c = self.config
        f, rng = self._sample(index)
        s = c.image_size
        img = torch.full((3, s, s), f["background"], dtype=torch.float32)
        mask = _shape_mask(s, f["shape"], f["x"], f["y"], f["size"])
        img[:, mask] = COLOURS[f["colour"]].unsqueeze(1)
        if f["mark"]:
            top, left, h, w = self.mark_box
            img[:, top:top + h, left:left + w] = 1.0
        if c.noise > 0:
            img = img + c.noise * torch.from_numpy(rng.standard_normal((3, s, s)).astype(np.float32))
            img = img.clamp(0.0, 1.0)
        return img, f

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, dict[str, float | int]]:
        img, f = self.render(int(index))
        return img, int(f["shape"]), f

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X [N, 3, H, W], y [N])`` — renders everything (fine for a few thousand small images)."""
        xs = [self.render(i)[0] for i in range(len(self))]
        return torch.stack(xs), self.labels.clone()

    def __repr__(self) -> str:
        c = self.config
        return (f"ShapesDataset(n={c.n}, seed={c.seed}, image_size={c.image_size}, shortcut={c.shortcut}, "
                f"force_mark={c.force_mark})")


def _shape_mask(s: int, shape: int, x: int, y: int, r: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32),
                            indexing="ij")
    dx, dy = xx - x, yy - y
    if shape == 0:  # square of side 2r+1
        return (dx.abs() <= r) & (dy.abs() <= r)
    if shape == 1:  # disc of radius r + 0.5 (so its extent matches the square's)
        return dx ** 2 + dy ** 2 <= (r + 0.5) ** 2
    # upward isosceles triangle: apex at (x, y - r), base from (x - r, y + r) to (x + r, y + r)
    inside_rows = dy.abs() <= r
    return inside_rows & (dx.abs() <= (dy + r) / 2 + 0.5)


def shapes(n: int = 1000, seed: int = 0, image_size: int = 32, shortcut: bool | float = False,
           shortcut_class: int = 0, force_mark: bool | None = None, mark_size: int | None = None,
           noise: float = 0.0) -> ShapesDataset:
    """Synthetic shapes (square / circle / triangle) with ground-truth factors and an optional shortcut.

    Every item is generated from ``numpy.random.SeedSequence([seed, index])``, so the dataset is
    deterministic, costs no memory and any item can be regenerated alone. Use different seeds for train
    and test sets.

    Args:
        n: number of items.
        seed: dataset seed.
        image_size: side length in pixels (>= 24 for the default mark size).
        shortcut: the planted corner mark. ``False``: never drawn. ``True`` (= 1.0): drawn iff the label is
            ``shortcut_class``. A float ``p``: drawn with probability ``p`` for ``shortcut_class`` and ``1 - p``
            for every other class, so ``p = 0.5`` makes the mark independent of the label (a test set where
            the shortcut is uninformative) and ``p = 1`` makes it a perfect predictor.
        shortcut_class: the class the mark is correlated with.
        force_mark: ``True`` / ``False`` draws / omits the mark on every item regardless of ``shortcut`` —
            counterfactual twins of the same images for patching (all other factors are unchanged).
        mark_size: side of the square mark in pixels (default ``max(2, image_size // 10)``); it sits at
            ``mark_box = (1, 1, mark_size, mark_size)`` (top, left, height, width).
        noise: standard deviation of Gaussian pixel noise (clamped to [0, 1]).
    """
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    if shortcut is True:
        p: float | None = 1.0
    elif shortcut is False or shortcut is None:
        p = None
    else:
        p = float(shortcut)
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise InputError(f"shortcut must be a bool or a probability in [0, 1], got {shortcut!r}")
    if not 0 <= shortcut_class < len(SHAPE_NAMES):
        raise InputError(f"shortcut_class must be in 0..{len(SHAPE_NAMES) - 1} ({SHAPE_NAMES}), got "
                         f"{shortcut_class}")
    ms = mark_size if mark_size is not None else max(2, image_size // 10)
    cfg = ShapesConfig(n=n, seed=seed, image_size=image_size, shortcut=p, shortcut_class=shortcut_class,
                       force_mark=force_mark, mark_size=ms, noise=noise)
    return ShapesDataset(cfg)
