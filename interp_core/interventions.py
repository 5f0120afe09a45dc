"""Interventions: small callables ``(activation, site) -> activation`` applied at a site during a forward.

Use them through ``HookedModel.intervene({site: intervention})`` or ``run_with_interventions``. Several at
one site compose left to right (pass a list); a dict composes them across sites. Selectors are in the
site's own terms:

- ``positions``: a flat index over the pos axes, a named position (``"cls"``), a tuple with one index per
  pos axis (``(h, w)`` for a CNN cell), a list of these, or a boolean mask over the pos axes;
- ``heads``: an int, a list of ints or a boolean mask over the head axis;
- ``features``: the same over the feature axis (channels of a CNN, neurons of an MLP).

Only the selected entries change; everything else is passed through untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from .axes import feature_last, selection_mask
from .errors import InputError, InputTypeError
from .sites import Site


class Intervention:
    """Base class: stores the selectors and applies ``_compute`` only where they select."""

    def __init__(self, positions: Any = None, heads: Any = None, features: Any = None):
        self.positions = positions
        self.heads = heads
        self.features = features

    def _selects(self) -> bool:
        return any(v is not None for v in (self.positions, self.heads, self.features))

    def mask(self, act: torch.Tensor, site: Site) -> torch.Tensor | None:
        """Boolean mask broadcastable to ``act`` (``None``: every entry), from the selectors."""
        if not self._selects():
            return None
        if site.axes is None or len(site.axes) != act.dim():
            raise InputError(f"{type(self).__name__} at site '{site.name}': the selectors need the site's axes, but "
                             f"they are {site.axes} for an activation of shape {tuple(act.shape)}; give the "
                             f"adapter axes for this site (GenericAdapter(axes={{...}})) or use Replace(fn)")
        m = selection_mask(act.shape, site.axes, positions=self.positions, heads=self.heads,
                           features=self.features, pos_names=site.pos_names, site=site.name)
        return None if m is None else m.to(act.device)

    def _compute(self, act: torch.Tensor, site: Site) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, act: torch.Tensor, site: Site) -> torch.Tensor:
        new = self._compute(act, site)
        name = type(self).__name__
        if not isinstance(new, torch.Tensor) or new.shape != act.shape:
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise InputError(f"{name} at site '{site.name}' returned shape {got}, expected {tuple(act.shape)} "
                             f"(axes {site.axes}); an intervention must keep the activation's shape")
        if new.dtype != act.dtype:
            raise InputError(f"{name} at site '{site.name}' returned {str(new.dtype).replace('torch.', '')} for a "
                             f"{str(act.dtype).replace('torch.', '')} activation; return the activation's dtype "
                             f"(e.g. fn(a).to(a.dtype)) so the layers after it receive what they expect")
        m = self.mask(act, site)
        return new if m is None else torch.where(m, new, act)

    def __repr__(self) -> str:
        sel = {k: v for k, v in (("positions", self.positions), ("heads", self.heads),
                                 ("features", self.features)) if v is not None}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in sel.items())})"


def _batch_dim(site: Site) -> int:
    return site.axes.index("batch")


def _source_tensor(source: Any, site: Site) -> torch.Tensor:
    if isinstance(source, torch.Tensor):
        return source
    if isinstance(source, Mapping) or hasattr(source, "__getitem__"):
        return source[site.name]
    raise InputTypeError(f"Patch source for site '{site.name}' must be a tensor or a cache, got "
                    f"{type(source).__name__}")


class Patch(Intervention):
    """Replace the activation (or the selected part) with a source activation.

    ``source``: a tensor shaped like the activation (or with batch size 1, broadcast), or an
    :class:`~interp_core.cache.ActivationCache` holding the site (unpooled).
    """

    def __init__(self, source: Any, positions: Any = None, heads: Any = None, features: Any = None):
        super().__init__(positions, heads, features)
        self.source = source

    def _compute(self, act: torch.Tensor, site: Site) -> torch.Tensor:
        src = _source_tensor(self.source, site).to(device=act.device, dtype=act.dtype)
        b = _batch_dim(site)
        ok = src.dim() == act.dim() and all(
            s == a or (d == b and s == 1) for d, (s, a) in enumerate(zip(src.shape, act.shape)))
        if not ok:
            raise InputError(f"Patch at site '{site.name}': source has shape {tuple(src.shape)} but the "
                             f"activation has shape {tuple(act.shape)} (axes {site.axes}); record the source "
                             f"at the same site, unpooled, with the same batch size (or batch size 1)")
        return src.expand_as(act).clone()  # a copy: in-place ops downstream must not write into the source


class Ablate(Intervention):
    """Ablate the activation: ``"zero"``, ``"mean"`` or ``"resample"``.

    ``stats`` (mean and resample): a tensor of reference activations ``[N, ...]`` shaped like the site's
    activation (batch axis first), a per-example mean already reduced (the activation's shape without the
    batch axis), or a cache holding the site. Mean ablation replaces each entry by its mean over the
    reference batch (per position); resample ablation replaces each example by a random reference example
    (``seed`` fixes the draw).
    """

    def __init__(self, method: Literal["zero", "mean", "resample"] = "zero", stats: Any = None,
                 positions: Any = None, heads: Any = None, features: Any = None, seed: int = 0):
        super().__init__(positions, heads, features)
        if method not in ("zero", "mean", "resample"):
            raise InputError(f"Ablate method must be 'zero', 'mean' or 'resample', got {method!r}")
        if method != "zero" and stats is None:
            raise InputError(f"Ablate({method!r}) needs stats=: reference activations (a tensor or a cache "
                             f"recorded at this site over a dataset)")
        self.method = method
        self.stats = stats
        self.seed = seed

    def _reference(self, act: torch.Tensor, site: Site) -> torch.Tensor:
        ref = _source_tensor(self.stats, site).to(device=act.device, dtype=act.dtype)
        b = _batch_dim(site)
        if ref.numel() == 0:
            raise InputError(f"Ablate({self.method!r}) at site '{site.name}': stats hold no reference examples "
                             f"(shape {tuple(ref.shape)}); record them over a non-empty dataset")
        per_example = act.shape[:b] + act.shape[b + 1:]
        if self.method == "mean" and ref.shape == per_example:
            return ref.unsqueeze(b)
        if ref.dim() != act.dim() or ref.shape[:b] + ref.shape[b + 1:] != per_example:
            raise InputError(f"Ablate({self.method!r}) at site '{site.name}': stats have shape "
                             f"{tuple(ref.shape)}, expected [N, ...] matching the activation "
                             f"{tuple(act.shape)} (axes {site.axes}) except on the batch axis")
        return ref

    def _compute(self, act: torch.Tensor, site: Site) -> torch.Tensor:
        if self.method == "zero":
            return torch.zeros_like(act)
        ref = self._reference(act, site)
        b = _batch_dim(site)
        if self.method == "mean":
            mean = ref.mean(dim=b, keepdim=True) if ref.shape[b] != 1 else ref
            return mean.expand_as(act).clone()
        g = torch.Generator().manual_seed(self.seed)
        idx = torch.randint(ref.shape[b], (act.shape[b],), generator=g).to(act.device)
        return ref.index_select(b, idx)


def _direction(direction: Any, d: int, site: Site, what: str) -> torch.Tensor:
    v = torch.as_tensor(direction)
    if v.dim() != 1:
        v = v.reshape(-1)
    if v.numel() != d:
        raise InputError(f"{what} at site '{site.name}': direction has {v.numel()} entries, expected {d} "
                         f"(the site's head x feature size; axes {site.axes})")
    if v.is_floating_point() and not bool(torch.isfinite(v).all()):
        raise InputError(f"{what} at site '{site.name}': direction has NaN or infinite entries; give a finite "
                         f"direction")
    return v


class Steer(Intervention):
    """Add ``alpha * direction`` in the site's feature space (head and feature axes flattened, as in
    ``cache.features``): ``a' = a + alpha * v`` with ``v`` of size ``d = heads x features``, used as given
    (not normalised).

    Selectors keep the change to the selected entries: ``positions=`` (only there), ``heads=`` (only the
    entries of those heads, i.e. ``a'[..., h, :] = a[..., h, :] + alpha * v[h]`` for a selected head ``h``
    and ``a`` elsewhere), ``features=`` (only those coordinates). ``direction`` stays ``[d]`` either way;
    its entries outside the selection are ignored.
    """

    def __init__(self, direction: Any, alpha: float = 1.0, positions: Any = None, heads: Any = None,
                 features: Any = None):
        super().__init__(positions, heads, features)
        self.direction = direction
        self.alpha = alpha

    def _compute(self, act: torch.Tensor, site: Site) -> torch.Tensor:
        flat, restore = feature_last(act, site.axes)
        v = _direction(self.direction, flat.shape[-1], site, "Steer").to(act.device, act.dtype)
        return restore(flat + self.alpha * v)


class ProjectOut(Intervention):
    """Remove the component along ``direction`` (or the span of several, rows of a ``[k, d]`` matrix) in
    the site's feature space: ``a' = a - P a`` with ``P = Q Q^T`` the orthogonal projector onto the span
    (``Q`` an orthonormal basis of it, from the SVD of the rows; directions that add nothing to the span
    are dropped).

    Selectors keep the change to the selected entries: ``positions=``, ``heads=`` (for a direction that is
    zero outside head ``h``'s block this is the projection within that head: ``a'[..., h, :] = a_h -
    (a_h . u) u``), ``features=`` (the selected coordinates of ``a - P a``; the rest stay as they were).
    """

    def __init__(self, direction: Any, positions: Any = None, heads: Any = None, features: Any = None):
        super().__init__(positions, heads, features)
        self.direction = direction

    def _compute(self, act: torch.Tensor, site: Site) -> torch.Tensor:
        flat, restore = feature_last(act, site.axes)
        d = flat.shape[-1]
        v = torch.as_tensor(self.direction).to(act.device, act.dtype)
        basis = v.reshape(1, -1) if v.dim() == 1 else v
        if basis.dim() != 2 or basis.shape[-1] != d:
            raise InputError(f"ProjectOut at site '{site.name}': direction has shape {tuple(v.shape)}, expected "
                             f"[{d}] or [k, {d}] (the site's head x feature size; axes {site.axes})")
        if not bool(torch.isfinite(basis).all()):
            raise InputError(f"ProjectOut at site '{site.name}': direction has NaN or infinite entries")
        _, sv, vh = torch.linalg.svd(basis, full_matrices=False)
        keep = sv > sv.max() * max(basis.shape) * torch.finfo(sv.dtype).eps if sv.numel() else sv > 0
        if not bool(keep.any()):
            raise InputError(f"ProjectOut at site '{site.name}': the direction is zero, so there is nothing to "
                             f"project out; give a non-zero direction")
        q = vh[keep].T  # orthonormal basis of the span, [d, k]
        return restore(flat - (flat @ q) @ q.T)


class Replace(Intervention):
    """Replace the activation with ``fn(activation)`` or ``fn(activation, site)`` (when ``fn`` takes two
    required positional arguments); the result must keep the shape. Selectors restrict which entries take
    the new values."""

    def __init__(self, fn: Callable, positions: Any = None, heads: Any = None, features: Any = None):
        super().__init__(positions, heads, features)
        self.fn = fn
        try:
            params = inspect.signature(fn).parameters.values()
            required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                        and p.default is p.empty]
            self._wants_site = len(required) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
        except (TypeError, ValueError):
            self._wants_site = False

    def _compute(self, act: torch.Tensor, site: Site) -> torch.Tensor:
        return self.fn(act, site) if self._wants_site else self.fn(act)
