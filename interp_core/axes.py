"""Axis arithmetic shared by caches, stores and interventions.

Everything here works from a tensor plus its axis roles (see :mod:`interp_core.sites`), never from a model:

- :func:`pool` reduces or selects over the ``pos`` axes (``"mean"``, ``"max"``, a named position such as
  ``"cls"``, a flat index, or one index per pos axis);
- :func:`to_rows` turns an activation into ``[N, d]`` feature rows (batch and remaining positions folded
  into N, head and feature axes flattened into d);
- :func:`selection_mask` builds the boolean mask of an intervention's position / head / feature selectors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Union

import torch

from .errors import InputError, InputIndexError

PoolSpec = Union[None, str, int, Sequence[int]]
REDUCTIONS = ("mean", "max")


def _pos_dims(axes: Sequence[str]) -> list[int]:
    return [i for i, a in enumerate(axes) if a == "pos"]


def flat_position(index: int | str | Sequence[int], pos_shape: Sequence[int],
                  pos_names: Mapping[str, int] | None = None, what: str = "position") -> int:
    """A flat index into the pos axes (row-major) from an int, a name or one index per pos axis."""
    n = math.prod(pos_shape)
    if isinstance(index, str):
        if not pos_names or index not in pos_names:
            known = sorted(pos_names or {})
            raise InputError(f"unknown named {what} {index!r}; this site names {known or 'no positions'}")
        return int(pos_names[index])
    if isinstance(index, (tuple, list)):
        if len(index) != len(pos_shape):
            raise InputError(f"{what} {tuple(index)} has {len(index)} indices but the site has "
                             f"{len(pos_shape)} pos axes of sizes {tuple(pos_shape)}")
        flat = 0
        for i, size in zip(index, pos_shape):
            if not -size <= i < size:
                raise InputIndexError(f"{what} {tuple(index)} is out of range for pos axes {tuple(pos_shape)}")
            flat = flat * size + (i % size)
        return flat
    index = int(index)
    if not -n <= index < n:
        raise InputIndexError(f"{what} {index} is out of range: the site has {n} positions {tuple(pos_shape)}")
    return index % n


def pool(t: torch.Tensor, axes: Sequence[str], how: PoolSpec,
         pos_names: Mapping[str, int] | None = None) -> tuple[torch.Tensor, tuple[str, ...]]:
    """Reduce or select over the pos axes of ``t``; returns ``(tensor, axes)`` without pos axes.

    ``how``: ``None`` (unchanged), ``"mean"``, ``"max"``, ``"first"``, ``"last"``, a named position
    (``"cls"``), a flat int index over the pos axes, or a tuple with one index per pos axis.
    """
    axes = tuple(axes)
    if how is None:
        return t, axes
    pdims = _pos_dims(axes)
    if not pdims:
        return t, axes  # nothing to pool: e.g. an MLP layer (batch, feature)
    rest = tuple(a for a in axes if a != "pos")
    if isinstance(how, str) and how in REDUCTIONS:
        if how == "mean":
            return t.mean(dim=pdims), rest
        return t.amax(dim=pdims), rest
    pos_shape = [t.shape[d] for d in pdims]
    if isinstance(how, str) and how not in ("first", "last") and how not in (pos_names or {}):
        named = sorted(pos_names or {})
        raise InputError(f"pool: unknown pooling {how!r}; use 'mean', 'max', 'first', 'last', a position index"
                         + (f" or a named position of this site ({', '.join(map(repr, named))})" if named else "")
                         + " (None keeps every position)")
    if how == "first":
        how = 0
    elif how == "last":
        how = -1
    flat = flat_position(how, pos_shape, pos_names)
    other = [d for d in range(t.dim()) if d not in pdims]
    moved = t.permute(*other, *pdims).reshape(*[t.shape[d] for d in other], -1)
    return moved[..., flat], rest


def to_rows(t: torch.Tensor, axes: Sequence[str]) -> torch.Tensor:
    """``[N, d]`` rows: batch and pos axes folded into N (batch outermost), head and feature axes into d.

    A CNN block ``[B, C, H, W]`` gives ``[B*H*W, C]``; a per-head ViT site ``[B, P, H, F]`` gives
    ``[B*P, H*F]``; a site with no feature axis gives ``d = 1``.
    """
    axes = tuple(axes)
    if len(axes) != t.dim():
        raise InputError(f"tensor of shape {tuple(t.shape)} does not match axes {axes}")
    order = ([i for i, a in enumerate(axes) if a == "batch"] + _pos_dims(axes)
             + [i for i, a in enumerate(axes) if a in ("head", "feature")])
    n_row_dims = 1 + len(_pos_dims(axes))
    moved = t.permute(*order)
    n = math.prod(moved.shape[:n_row_dims])
    return moved.reshape(n, -1)


def batch_pos_feature(t: torch.Tensor, axes: Sequence[str]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``t`` as ``[batch, pos, d]`` (pos axes flattened row-major, head and feature axes into ``d``), and the
    shape of the pos axes (``()`` for a site without positions, which gets ``pos = 1``)."""
    axes = tuple(axes)
    if len(axes) != t.dim() or "batch" not in axes:
        raise InputError(f"tensor of shape {tuple(t.shape)} does not match axes {axes} with a batch axis")
    b = axes.index("batch")
    p = _pos_dims(axes)
    f = [i for i, a in enumerate(axes) if a in ("head", "feature")]
    pos_shape = tuple(t.shape[i] for i in p)
    return t.permute(b, *p, *f).reshape(t.shape[b], math.prod(pos_shape), -1), pos_shape


def feature_last(t: torch.Tensor, axes: Sequence[str]) -> tuple[torch.Tensor, callable]:
    """View ``t`` with its head and feature axes flattened into one last dimension ``d``.

    Returns ``(moved, restore)`` where ``restore(moved_like)`` maps a tensor of the moved shape back to
    the original layout. Used by steering and projections, whose directions live in the ``d`` space.
    """
    axes = tuple(axes)
    feat = [i for i, a in enumerate(axes) if a in ("head", "feature")]
    if not feat:
        raise InputError(f"axes {axes} have no feature axis to steer or project along")
    other = [i for i in range(t.dim()) if i not in feat]
    perm = other + feat
    moved = t.permute(*perm)
    lead = moved.shape[:len(other)]
    feat_shape = moved.shape[len(other):]
    flat = moved.reshape(*lead, -1)
    inverse = [perm.index(i) for i in range(t.dim())]

    def restore(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*lead, *feat_shape).permute(*inverse)

    return flat, restore


def _index_mask(size: int, idx, what: str, site: str) -> torch.Tensor:
    mask = torch.zeros(size, dtype=torch.bool)
    if isinstance(idx, torch.Tensor) and idx.dtype == torch.bool:
        if idx.shape != (size,):
            raise InputError(f"site {site!r}: {what} mask has shape {tuple(idx.shape)}, expected ({size},)")
        return idx.clone()
    ids = [idx] if isinstance(idx, int) else list(idx)
    for i in ids:
        if not -size <= int(i) < size:
            raise InputIndexError(f"site {site!r}: {what} index {i} is out of range for an axis of size {size}")
        mask[int(i)] = True
    return mask


def selection_mask(shape: Sequence[int], axes: Sequence[str], *, positions=None, heads=None, features=None,
                   pos_names: Mapping[str, int] | None = None, site: str = "?") -> torch.Tensor | None:
    """Boolean mask (broadcastable to ``shape``, batch axis of size 1) selecting positions/heads/features.

    ``positions``: a flat index, a named position (``"cls"``), a tuple with one index per pos axis, a list
    of these, or a boolean tensor over the pos axes. ``heads`` / ``features``: an int, a list of ints or a
    boolean tensor over that axis. Returns ``None`` when nothing is selected (= the whole activation).
    """
    axes = tuple(axes)
    shape = tuple(shape)
    mask = None
    view = [1] * len(shape)
    if positions is not None:
        pdims = _pos_dims(axes)
        if not pdims:
            raise InputError(f"site {site!r} has no pos axis (axes {axes}); drop the positions= selector")
        pos_shape = [shape[d] for d in pdims]
        if isinstance(positions, torch.Tensor) and positions.dtype == torch.bool:
            if tuple(positions.shape) != tuple(pos_shape):
                raise InputError(f"site {site!r}: positions mask has shape {tuple(positions.shape)}, expected "
                                 f"the pos axes' shape {tuple(pos_shape)}")
            pm = positions.clone()
        else:
            items = positions if isinstance(positions, list) else [positions]
            flat = torch.zeros(math.prod(pos_shape), dtype=torch.bool)
            for p in items:
                flat[flat_position(p, pos_shape, pos_names, what=f"site '{site}': position")] = True
            pm = flat.reshape(pos_shape)
        if pdims != list(range(pdims[0], pdims[0] + len(pdims))):
            raise InputError(f"site {site!r}: pos axes {pdims} are not adjacent; use Replace(fn) instead")
        v = list(view)
        for d in pdims:
            v[d] = shape[d]
        mask = pm.reshape(v)
    for role, sel in (("head", heads), ("feature", features)):
        if sel is None:
            continue
        dims = [i for i, a in enumerate(axes) if a == role]
        if len(dims) != 1:
            raise InputError(f"site {site!r} has {len(dims)} '{role}' axes (axes {axes}); "
                             f"a {role}s= selector needs exactly one")
        d = dims[0]
        v = list(view)
        v[d] = shape[d]
        m = _index_mask(shape[d], sel, role, site).reshape(v)
        mask = m if mask is None else mask & m
    return mask
