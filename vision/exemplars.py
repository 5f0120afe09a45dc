"""Dataset exemplars: the images (or image cells) that most activate a channel, neuron, direction or feature.

The "dataset examples" half of feature visualisation (Olah et al., "Feature Visualization", Distill 2017;
Zeiler & Fergus, ECCV 2014): stream a dataset through the model once, keep a running top-k per unit, and
show the winners with the input region each spatial cell sees.

- **Units** at one site: channels / features (``channels=``), directions in activation space
  (``direction=`` a ``[d]`` vector or ``[U, d]`` matrix, scored by the projection on the unit-normalised
  direction), or any ``features(rows [N, d]) -> [N, F]`` callable (an SAE encoder, a probe), optionally
  restricted with ``channels=`` to some of its outputs.
- **Scores.** ``by="image"``: each image's score is the max (or mean) over positions of the unit's activation,
  and the argmax cell is recorded; ``neuron_pos=`` fixes one position instead (a neuron). ``by="cell"``:
  every (image, cell) pair competes, so one image can appear several times at different cells.
- **Streaming.** Only ``[units, k]`` scores, indices and cells (and the k images per unit when
  ``keep_images``) are kept: memory does not grow with the dataset. Ties go to the lower dataset index,
  then the lower cell, so the result equals a stable sort of all scores (tested against brute force).
- **Boxes.** For spatial sites each cell maps to an input-pixel box ``(top, left, bottom, right)``, end
  exclusive: ``box="stride"`` tiles the input evenly over the cell grid (exact for ViT patch tokens; prefix
  tokens such as CLS get the whole image); ``box="receptive"`` is the empirical receptive field — the
  bounding box of input pixels with non-zero gradient of the cell's activation (sum over features) on a few
  random inputs.
- **The boundary.** The model enters through :func:`interp_core.boundary.as_hooked`, the data through
  :func:`interp_core.boundary.iter_batches` (a tensor or numpy array, an ``(x, y)`` pair, a ``Dataset`` or an
  unshuffled ``DataLoader``; labels are ignored), and the forwards run in eval mode (``hm.analysis()``).
- **Recurrent agents** (an :class:`rl.agents.Agent` with memory) are refused unless ``states=`` gives the
  recurrent state each observation was seen with: run alone, every observation would start from a zero
  memory, which gives activations the agent never had. Record states and activations with ``rl.collect``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from interp_core.axes import batch_pos_feature, flat_position
from interp_core.boundary import as_hooked, iter_batches
from interp_core.errors import InputError, InputIndexError, InputTypeError
from interp_core.progress import progress_bar
from interp_core.results import Result, save_json

__all__ = ["Exemplars", "top_exemplars", "cell_boxes", "receptive_boxes"]


@dataclass
class Exemplars(Result):
    """Top-k exemplars per unit.

    Attributes:
        site: the site the units live at.
        units: one label per unit (``"channel 3"``, ``"direction 0"``, ``"feature 12"``).
        scores: ``[unit, k]`` scores, best first (``-inf`` where fewer than k candidates existed).
        indices: ``[unit, k]`` dataset indices (position in the loader's order), ``-1`` where empty.
        cells: ``[unit, k, n_pos_axes]`` cell of each exemplar (``(h, w)`` for a CNN map, ``(token,)`` for a
            ViT), ``None`` for sites without positions or ``reduce="mean"``.
        boxes: ``[unit, k, 4]`` input-pixel boxes ``(top, left, bottom, right)`` (end exclusive) of the cells,
            or ``None``.
        images: ``[unit, k, C, H, W]`` the exemplar inputs (as fed to the model) when kept, else ``None``.
        config: how they were collected.
    """

    site: str
    units: list[str]
    scores: torch.Tensor
    indices: torch.Tensor
    cells: torch.Tensor | None
    boxes: torch.Tensor | None
    images: torch.Tensor | None
    config: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.units)

    def plot(self, units: Sequence[int] | None = None, max_units: int = 16, dataset: Any = None) -> Any:
        """A contact sheet: one row per unit, its k exemplars left to right, cell boxes drawn in red.

        Images come from ``images`` when kept, else from ``dataset[index][0]``. Each image is min-max scaled
        for display. Returns the matplotlib figure.
        """
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        rows = list(units) if units is not None else list(range(min(len(self), max_units)))
        k = self.scores.shape[1]
        fig, axes = plt.subplots(len(rows), k, figsize=(1.15 * k + 0.6, 1.45 * len(rows) + 0.5), squeeze=False)
        for r, u in enumerate(rows):
            for j in range(k):
                ax = axes[r][j]
                ax.set_xticks([])
                ax.set_yticks([])
                idx = int(self.indices[u, j])
                if idx < 0:
                    ax.set_axis_off()
                    continue
                if self.images is not None:
                    img = self.images[u, j]
                elif dataset is not None:
                    item = dataset[idx]
                    img = item[0] if isinstance(item, (tuple, list)) else item
                else:
                    raise InputError("no images kept; pass dataset= to plot the exemplars")
                img = img.detach().float().cpu()
                img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-8)
                if img.shape[0] == 1:
                    ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img[:3].permute(1, 2, 0).numpy())
                if self.boxes is not None:
                    # clipped to the image: a receptive field that runs past the border (padding) is drawn up
                    # to the frame, and the line is inset so it is not cut by the axes' edge
                    h, w = img.shape[-2:]
                    top, left, bottom, right = (int(v) for v in self.boxes[u, j])
                    top, left = max(top, 0), max(left, 0)
                    bottom, right = min(bottom, h), min(right, w)
                    d = 0.2 + 0.01 * max(h, w)  # inset, in pixels, so the frame does not hide the box
                    ax.add_patch(Rectangle((left - 0.5 + d, top - 0.5 + d), right - left - 2 * d,
                                           bottom - top - 2 * d, fill=False, edgecolor="red", linewidth=1.2,
                                           clip_on=True))
                ax.set_xlim(-0.5, img.shape[-1] - 0.5)
                ax.set_ylim(img.shape[-2] - 0.5, -0.5)
                ax.set_title(f"act {float(self.scores[u, j]):.2g}\nimage #{idx}", fontsize=7)
                if j == 0:
                    ax.set_ylabel(self.units[u], fontsize=7)
        fig.suptitle(f"top-{k} exemplars at {self.site}, by {self.config.get('by')} (title: the unit's "
                     f"activation and the dataset index)", fontsize=9)
        fig.tight_layout()
        return fig

    def to_dict(self) -> dict[str, Any]:
        """Numbers and configuration (not the images)."""
        return {"site": self.site, "units": self.units,
                "scores": [[float(s) if math.isfinite(float(s)) else None for s in row] for row in self.scores],
                "indices": self.indices.tolist(),
                "cells": self.cells.tolist() if self.cells is not None else None,
                "boxes": self.boxes.tolist() if self.boxes is not None else None, "config": self.config}

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON, atomically."""
        return save_json(self.to_dict(), path)


# ------------------------------------------------------------------------------------------------ boxes
def _prefix_count(n_pos: int, pos_names: dict[str, int] | None) -> int:
    """Number of non-spatial prefix tokens (CLS, registers) in a 1-D token sequence of length ``n_pos``."""
    if pos_names:
        n = len(pos_names)
        if n < n_pos and math.isqrt(n_pos - n) ** 2 == n_pos - n:
            return n
    return n_pos - math.isqrt(n_pos) ** 2


def cell_boxes(pos_shape: Sequence[int], input_hw: Sequence[int], n_prefix: int = 0) -> torch.Tensor:
    """Stride boxes ``[P, 4]`` (top, left, bottom, right; end exclusive) for every flat position.

    Two pos axes ``(Hp, Wp)``: cell ``(h, w)`` covers rows ``floor(h H / Hp) .. ceil((h + 1) H / Hp)`` and the
    same for columns. One pos axis of ``n_prefix + g*g`` tokens (a ViT): prefix tokens get the whole image,
    patch token ``n_prefix + h g + w`` the cell ``(h, w)`` of a ``g x g`` grid.
    """
    H, W = (int(v) for v in input_hw)
    if len(pos_shape) == 2:
        hp, wp = (int(v) for v in pos_shape)
        prefix = 0
    elif len(pos_shape) == 1:
        prefix = int(n_prefix)
        g = math.isqrt(int(pos_shape[0]) - prefix)
        if g * g != int(pos_shape[0]) - prefix:
            raise InputError(f"a token site with {pos_shape[0]} positions and {prefix} prefix tokens is not a "
                             f"square patch grid; pass box=None")
        hp = wp = g
    else:
        raise InputError(f"boxes need one or two pos axes, got pos shape {tuple(pos_shape)}")
    out = [(0, 0, H, W)] * prefix
    for h in range(hp):
        for w in range(wp):
            out.append((math.floor(h * H / hp), math.floor(w * W / wp),
                        math.ceil((h + 1) * H / hp), math.ceil((w + 1) * W / wp)))
    return torch.tensor(out, dtype=torch.long)


def receptive_boxes(hm: Any, site: str, example: torch.Tensor, positions: Iterable[int],
                    n_samples: int = 4, seed: int = 0) -> dict[int, tuple[int, int, int, int]]:
    """Empirical receptive-field boxes ``{flat position: (top, left, bottom, right)}`` of a site's cells.

    The box bounds the input pixels where ``d sum_features a[b, pos] / d x`` is non-zero for any of
    ``n_samples`` Gaussian inputs shaped like ``example`` ``[C, H, W]`` (eval mode).
    """
    hm = as_hooked(hm)
    if not isinstance(example, torch.Tensor) or not example.is_floating_point():
        raise InputTypeError(f"example: expected one floating input tensor [C, H, W], got "
                             f"{type(example).__name__ if not isinstance(example, torch.Tensor) else example.dtype}")
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n_samples, *example.shape, generator=gen).to(example.device, example.dtype)
    out: dict[int, tuple[int, int, int, int]] = {}
    wanted = sorted(set(int(q) for q in positions))
    chunk = max(1, 256 // n_samples)
    with hm.analysis():
        # examples in a batch are independent (eval mode), so one backward serves many positions at once:
        # copy j of the inputs only carries the gradient of position wanted[j]
        for start in range(0, len(wanted), chunk):
            ps = wanted[start:start + chunk]
            x = x0.repeat(len(ps), *([1] * example.dim())).requires_grad_(True)
            _, cache = hm.run_with_cache(x, sites=[site], grad=True)
            t, _ = batch_pos_feature(cache[site], cache.axes(site))
            rows = torch.arange(x.shape[0])
            cols = torch.tensor(ps).repeat_interleave(n_samples)
            (g,) = torch.autograd.grad(t[rows, cols].sum(), x)
            masks = g.abs().reshape(len(ps), n_samples, *example.shape).sum(dim=(1, 2)) > 0  # [len, H, W]
            for p, mask in zip(ps, masks):
                if not mask.any():
                    out[p] = (0, 0, 0, 0)
                    continue
                r = torch.nonzero(mask.any(1)).flatten()
                c = torch.nonzero(mask.any(0)).flatten()
                out[p] = (int(r.min()), int(c.min()), int(r.max()) + 1, int(c.max()) + 1)
    return out


# ------------------------------------------------------------------------------------------------ main
class _Element(Dataset):
    """Element ``index`` of each tuple item of a dataset (items such as ``(image, label, factors)``)."""

    def __init__(self, dataset: Dataset, index: int):
        self.dataset, self.index = dataset, index

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[i]
        return item[self.index] if isinstance(item, (tuple, list)) else item


def _inputs_only(data: Any, index: int) -> Any:
    """``data`` with each item / batch reduced to its input (element ``index`` of tuple items), so items with
    more than ``(x, y)`` (e.g. ``vision.data.shapes``: image, label, factors) batch like plain inputs."""
    if isinstance(data, DataLoader):
        return (b[index] if isinstance(b, (tuple, list)) else b for b in data)
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return _Element(data, index)
    return data


def _state_batch_dims(hm: Any, states: Sequence[torch.Tensor]) -> list[int]:
    """The batch axis of each recurrent state tensor: the axis that grows with the batch in
    ``hm.initial_state(1)`` vs ``hm.initial_state(2)``."""
    one, two = hm.initial_state(1), hm.initial_state(2)
    if one is None or len(one) != len(states):
        raise InputError(f"states: the agent's recurrent state has {0 if one is None else len(one)} tensors, got "
                         f"{len(states)}; give them as the agent takes them (see Agent.initial_state)")
    dims = []
    for i, (a, b, s) in enumerate(zip(one, two, states)):
        diff = [d for d in range(a.dim()) if a.shape[d] != b.shape[d]]
        if len(diff) != 1 or s.dim() != a.dim():
            raise InputError(f"states[{i}]: shape {tuple(s.shape)} does not match the agent's state layout "
                             f"{tuple(a.shape)} (batch 1)")
        dims.append(diff[0])
    return dims


def top_exemplars(hm: Any, data: Any, site: str, *, channels: int | Sequence[int] | None = None,
                  direction: torch.Tensor | np.ndarray | None = None,
                  features: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  neuron_pos: int | str | Sequence[int] | None = None, k: int = 9, by: str = "image",
                  reduce: str = "max", box: str | None = "stride", keep_images: bool = True,
                  batch_size: int | None = None, preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  input_index: int = 0, states: Sequence[torch.Tensor] | None = None,
                  progress: bool | None = None) -> Exemplars:
    """Stream ``data`` through ``hm`` and keep the top-``k`` exemplars of each unit at ``site``.

    Args:
        hm: the model: an :class:`interp_core.HookedModel` or a plain ``nn.Module`` (wrapped with the adapter
            the registry picks).
        data: inputs ``[N, ...]`` (tensor or numpy), an ``(x, y)`` pair, a ``Dataset`` or a ``DataLoader``
            (not shuffled, so indices identify items); labels are ignored. For items with more than two
            elements the input is element ``input_index``.
        site: the site name.
        channels: which features (or outputs of ``features``) are units; default all.
        direction: ``[d]`` or ``[U, d]``: units are projections on these (unit-normalised) directions.
        features: ``rows [N, d] -> [N, F]`` applied to the site's feature rows (e.g. an SAE encoder).
        neuron_pos: score only this position (``(h, w)``, a token index or a name such as ``"cls"``).
        k: exemplars per unit.
        by: ``"image"`` (one score per image) or ``"cell"`` (one per image cell).
        reduce: ``"max"`` or ``"mean"`` over positions for ``by="image"``.
        box: ``"stride"``, ``"receptive"`` or ``None`` (see the module docstring).
        keep_images: keep the k input images per unit (for :meth:`Exemplars.plot`).
        batch_size: examples per forward (default: from the site's activation size).
        preprocess: applied to each input batch before the model (e.g. normalisation).
        states: recurrent agents only: the recurrent state each observation was seen with, as a tuple of
            tensors in the agent's own layout (:meth:`rl.agents.Agent.initial_state`) with all ``N`` examples
            on its batch axis. Required for recurrent agents (module docstring).
        progress: a progress bar over batches (``None``: only on a terminal).
    """
    hm = as_hooked(hm)
    recurrent = bool(getattr(hm, "recurrent", False))
    if recurrent and states is None:
        raise InputError(
            f"model: {hm!r} is recurrent; run alone, each observation would start from a zero memory and give "
            f"activations the agent never had. Record the states with rl.collect(agent, sites=[...]) and use the "
            f"rollout's activations, or pass states= (the recurrent state of every observation, as the agent "
            f"takes it)")
    if states is not None and not recurrent:
        raise InputError("states: only recurrent agents take recurrent states; drop states= for this model")
    if by not in ("image", "cell"):
        raise InputError(f"by: must be 'image' or 'cell', got {by!r}")
    if reduce not in ("max", "mean"):
        raise InputError(f"reduce: must be 'max' or 'mean', got {reduce!r}")
    if box not in ("stride", "receptive", None):
        raise InputError(f"box: must be 'stride', 'receptive' or None, got {box!r}")
    if direction is not None and features is not None:
        raise InputError("direction, features: give either direction= or features=, not both")
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k: must be a positive integer, got {k!r}")
    if isinstance(data, DataLoader) and isinstance(data.sampler, RandomSampler):
        raise InputError("data: the DataLoader shuffles, so exemplar indices would not identify items; use "
                         "shuffle=False")
    # (per-call sites of reused modules exist only once traced: unknown names fail at the first forward)
    site_info = hm.sites[site] if site in hm.sites else None
    if box == "stride" and hm.adapter.name == "swin" and site_info is not None and site_info.kind == "virtual":
        raise InputError(f"box: site '{site}' is laid out per attention window (window, token in window), not as "
                         f"the image grid, so stride boxes would point at the wrong pixels; use box='receptive' "
                         f"or box=None")
    dirs = None
    if direction is not None:
        dirs = torch.as_tensor(np.asarray(direction) if not isinstance(direction, torch.Tensor) else direction)
        dirs = dirs.detach().float()
        dirs = dirs[None] if dirs.ndim == 1 else dirs
        norms = dirs.norm(dim=1, keepdim=True)
        if (norms == 0).any() or not torch.isfinite(dirs).all():
            raise InputError("direction: directions must be finite and non-zero")
        dirs = dirs / norms
    sel = [channels] if isinstance(channels, int) else (list(channels) if channels is not None else None)
    state_dims = _state_batch_dims(hm, states) if states is not None else None

    best_s = best_i = best_p = best_img = None
    pos_shape: tuple[int, ...] = ()
    pos_index: int | None = None
    site_obj = None
    seen = 0
    example = None
    unit_names: list[str] = []
    batches = iter_batches(_inputs_only(data, input_index), model=hm, batch_size=batch_size, sites=[site])
    with hm.analysis():
        for batch in progress_bar(batches, desc=f"exemplars at {site}", unit="batch",
                                  progress=progress):
            x = batch.inputs
            if isinstance(x, (tuple, list)):
                x = x[input_index]
            if not isinstance(x, torch.Tensor):
                raise InputTypeError(f"data: exemplars need tensor inputs, got {type(x).__name__} (items of a "
                                     f"Dataset of dicts give keyword arguments; give x or (x, y) items)")
            x = preprocess(x) if preprocess is not None else x
            if example is None:
                example = x[0].detach().clone()
            b = x.shape[0]
            if state_dims is not None:
                if seen + b > states[0].shape[state_dims[0]]:
                    raise InputError(f"states: hold {states[0].shape[state_dims[0]]} examples on their batch axis, "
                                     f"fewer than the data's; give one state per observation")
                st = tuple(s.narrow(d, seen, b).to(hm.device) for s, d in zip(states, state_dims))
                _, cache = hm.run_with_cache((x, st, None), sites=[site])
            else:
                _, cache = hm.run_with_cache(x, sites=[site])
            t, pos_shape = batch_pos_feature(cache[site], cache.axes(site))  # [B, P, d]
            site_obj = cache.site(site)
            b, n_pos, d = t.shape
            if features is not None:
                with torch.no_grad():
                    t = features(t.reshape(b * n_pos, d)).reshape(b, n_pos, -1)
            elif dirs is not None:
                if dirs.shape[1] != d:
                    raise InputError(f"direction has {dirs.shape[1]} entries but site '{site}' has {d} features")
                t = t @ dirs.to(t).T
            if sel is not None:
                for c in sel:
                    if not -t.shape[-1] <= c < t.shape[-1]:
                        raise InputIndexError(f"unit {c} is out of range: site '{site}' gives {t.shape[-1]} units")
                t = t[..., sel]
            n_units = t.shape[-1]
            if neuron_pos is not None and pos_index is None:
                pos_index = flat_position(neuron_pos, pos_shape, getattr(site_obj, "pos_names", None),
                                          what="neuron position")
            positions = torch.arange(n_pos)
            if pos_index is not None:
                t = t[:, pos_index:pos_index + 1]
                positions = torch.tensor([pos_index])
            idx = torch.arange(seen, seen + b)
            if by == "cell":
                # candidates in (index, position) order, [U, B*P]
                cand_s = t.reshape(b * t.shape[1], n_units).T
                cand_i = idx.repeat_interleave(t.shape[1])
                cand_p = positions.repeat(b)
                cand_b = torch.arange(b).repeat_interleave(t.shape[1])
            else:
                if reduce == "max" or pos_index is not None:
                    vals, arg = t.max(dim=1)  # first max on ties
                    cand_p = positions[arg].T  # [U, B]
                else:
                    vals = t.mean(dim=1)
                    cand_p = torch.full((n_units, b), -1, dtype=torch.long)
                cand_s, cand_i, cand_b = vals.T, idx, torch.arange(b)
            cand_i = cand_i.expand(n_units, -1) if cand_i.ndim == 1 else cand_i
            cand_p = cand_p.expand(n_units, -1) if cand_p.ndim == 1 else cand_p
            cand_b = cand_b.expand(n_units, -1)
            if best_s is None:
                best_s = torch.full((n_units, k), -math.inf)
                best_i = torch.full((n_units, k), -1, dtype=torch.long)
                best_p = torch.full((n_units, k), -1, dtype=torch.long)
                if keep_images:
                    best_img = torch.zeros(n_units, k, *x.shape[1:], dtype=x.dtype)
                labels = sel if sel is not None else list(range(n_units))
                kind = "direction" if dirs is not None else ("feature" if features is not None else "channel")
                unit_names = [f"{kind} {c}" for c in labels]
            all_s = torch.cat([best_s, cand_s.detach().float().cpu()], dim=1)
            order = torch.sort(all_s, dim=1, descending=True, stable=True).indices[:, :k]
            new_s = torch.gather(all_s, 1, order)
            new_i = torch.gather(torch.cat([best_i, cand_i], 1), 1, order)
            new_p = torch.gather(torch.cat([best_p, cand_p], 1), 1, order)
            if keep_images:
                src = torch.cat([torch.full((n_units, k), -1, dtype=torch.long), cand_b], 1).gather(1, order)
                from_old = src < 0
                old_slot = order.clamp(max=k - 1)
                xc = x.detach().cpu()
                kept = best_img[torch.arange(n_units)[:, None], old_slot]  # [U, k, C, H, W]
                fresh = xc[src.clamp_min(0)]
                mask = from_old.reshape(n_units, k, *([1] * (xc.dim() - 1)))
                best_img = torch.where(mask, kept, fresh)
            best_s, best_i, best_p = new_s, new_i, new_p
            seen += b
    if best_s is None:
        raise InputError("data: yielded no batches; give at least one example")
    if state_dims is not None and seen != states[0].shape[state_dims[0]]:
        raise InputError(f"states: hold {states[0].shape[state_dims[0]]} examples on their batch axis but the data "
                         f"has {seen}; give one state per observation")
    cells = boxes = None
    if pos_shape and (by == "cell" or reduce == "max" or pos_index is not None):
        flat = best_p.clamp_min(0)
        strides = [math.prod(pos_shape[i + 1:]) for i in range(len(pos_shape))]
        cells = torch.stack([(flat // s) % n for s, n in zip(strides, pos_shape)], dim=-1)
        cells[best_p < 0] = -1
        if box is not None and example is not None:
            hw = example.shape[-2:]
            if box == "stride":
                n_prefix = (_prefix_count(pos_shape[0], getattr(site_obj, "pos_names", None))
                            if len(pos_shape) == 1 else 0)
                table = cell_boxes(pos_shape, hw, n_prefix)
                boxes = table[flat]
            else:
                rf = receptive_boxes(hm, site, example, best_p[best_p >= 0].tolist())
                boxes = torch.tensor([[rf.get(int(p), (0, 0, 0, 0)) for p in row] for row in best_p.tolist()],
                                     dtype=torch.long)
            boxes[best_p < 0] = -1
    config = {"k": k, "by": by, "reduce": reduce, "box": box, "neuron_pos": neuron_pos, "n_items": seen,
              "units": "direction" if dirs is not None else ("features" if features is not None else "channels"),
              "pos_shape": list(pos_shape)}
    return Exemplars(site=site, units=unit_names, scores=best_s, indices=best_i, cells=cells, boxes=boxes,
                     images=best_img, config=config)
