"""ActivationCache: the activations of one or more forwards, keyed by site, with their axes attached.

The cache and :class:`~interp_core.store.ActivationStore` share one reading interface, so probes, SAEs and
similarity measures train on either:

- ``source.features(site, pool=None)`` → ``[N, d]`` rows (positions folded into N or pooled);
- ``source.iter_batches(sites, batch_size, shuffle=True, seed=0)`` → dicts of ``[b, d]`` row batches;
- ``source.axes(site)``, ``source.site_names``, ``source.num_rows(site)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from .axes import PoolSpec, to_rows
from .axes import pool as pool_tensor
from .errors import InputError, SiteError


class ActivationCache(Mapping[str, torch.Tensor]):
    """Mapping site name -> activation tensor ``[batch, ...]`` with the site's axes attached.

    Args:
        data: ``{site: tensor}``.
        axes: ``{site: axis roles}`` matching each tensor (pooled sites have no pos axes).
        sites: optional ``{site: Site}`` (named positions, descriptions).
    """

    def __init__(self, data: Mapping[str, torch.Tensor], axes: Mapping[str, Sequence[str] | None],
                 sites: Mapping[str, Any] | None = None):
        self._data = dict(data)
        self._axes = {k: (tuple(v) if v is not None else None) for k, v in axes.items()}
        self._sites = dict(sites or {})
        for k, t in self._data.items():
            a = self._axes.get(k)
            if a is not None and len(a) != t.dim():
                raise InputError(f"site '{k}': tensor of shape {tuple(t.shape)} does not match axes {a}")

    @classmethod
    def trusted(cls, data: dict[str, torch.Tensor], axes: dict[str, tuple[str, ...] | None],
                sites: dict[str, Any]) -> "ActivationCache":
        """A cache from parts already checked by the caller (the traced fast path: axes fixed per graph)."""
        cache = cls.__new__(cls)
        cache._data, cache._axes, cache._sites = data, axes, sites
        return cache

    # Mapping interface
    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._data:
            return self._data[name]
        close = difflib.get_close_matches(str(name), list(self._data), n=3, cutoff=0.5)
        raise SiteError(f"site '{name}' is not in this cache; cached: {list(self._data)[:8]}"
                       + (f"; closest: {close}" if close else ""))

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        body = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self._data.items())
        return f"ActivationCache({body})"

    @property
    def site_names(self) -> list[str]:
        return list(self._data)

    def axes(self, name: str) -> tuple[str, ...]:
        """Axis roles of the cached tensor at ``name`` (batch included)."""
        a = self._axes.get(name)
        if a is None:
            self[name]  # raises the helpful KeyError for unknown names
            raise InputError(f"site '{name}' has unknown axes (shape {tuple(self._data[name].shape)}); "
                             f"set them in the adapter")
        return a

    def site(self, name: str) -> Any:
        return self._sites.get(name)

    def num_rows(self, name: str) -> int:
        """Number of rows ``features(name)`` returns (batch × remaining positions)."""
        return self.features(name).shape[0]

    def features(self, name: str, pool: PoolSpec = None) -> torch.Tensor:
        """``[N, d]`` feature rows of the site: pooled over positions, or positions folded into N."""
        t = self[name]
        axes = self.axes(name)
        if pool is not None:
            site = self._sites.get(name)
            t, axes = pool_tensor(t, axes, pool, getattr(site, "pos_names", None))
        return to_rows(t, axes)

    def iter_batches(self, sites: Sequence[str] | str, batch_size: int = 256, shuffle: bool = True,
                     seed: int = 0, pool: PoolSpec = None) -> Iterator[dict[str, torch.Tensor]]:
        """Mini-batches of aligned feature rows ``{site: [b, d]}`` (the store's interface, in memory)."""
        names = [sites] if isinstance(sites, str) else list(sites)
        rows = {n: self.features(n, pool) for n in names}
        n = {r.shape[0] for r in rows.values()}
        if len(n) != 1:
            raise InputError(f"sites {names} give different numbers of rows {sorted(n)}; pool them alike")
        total = n.pop()
        order = (torch.randperm(total, generator=torch.Generator().manual_seed(seed)) if shuffle
                 else torch.arange(total))
        for i in range(0, total, batch_size):
            idx = order[i:i + batch_size]
            yield {k: v[idx] for k, v in rows.items()}

    # tensor-like helpers
    def _map(self, fn) -> "ActivationCache":
        return ActivationCache({k: fn(v) for k, v in self._data.items()}, self._axes, self._sites)

    def to(self, *args: Any, **kwargs: Any) -> "ActivationCache":
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "ActivationCache":
        return self._map(lambda t: t.detach())

    def select(self, names: Sequence[str]) -> "ActivationCache":
        """A cache with only ``names``."""
        return ActivationCache({n: self[n] for n in names}, {n: self._axes.get(n) for n in names},
                               {n: self._sites[n] for n in names if n in self._sites})

    def batch_index(self, index: Any) -> "ActivationCache":
        """The same sites restricted to some examples (``index`` on each tensor's batch axis)."""
        out = {}
        for k, t in self._data.items():
            a = self._axes.get(k)
            b = a.index("batch") if a else 0
            out[k] = t[(slice(None),) * b + (index,)]
        return ActivationCache(out, self._axes, self._sites)

    @classmethod
    def cat(cls, caches: Sequence["ActivationCache"]) -> "ActivationCache":
        """Concatenate caches of the same sites along each tensor's batch axis."""
        caches = list(caches)
        if not caches:
            raise InputError("ActivationCache.cat needs at least one cache")
        names = caches[0].site_names
        for c in caches[1:]:
            if c.site_names != names:
                raise InputError(f"cannot concatenate caches of different sites: {names} vs {c.site_names}")
        out = {}
        for n in names:
            a = caches[0]._axes.get(n)
            b = a.index("batch") if a else 0
            out[n] = torch.cat([c[n] for c in caches], dim=b)
        return cls(out, caches[0]._axes, caches[0]._sites)
