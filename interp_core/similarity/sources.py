"""Where feature rows come from: hooked models run over data, caches, stores, or dicts of ``[N, d]`` arrays.

A *source* is one of:

- a :class:`~interp_core.hooked.HookedModel` (anything with ``run_with_cache``) plus an iterable of input
  batches (a batch is the model's input, or a tuple ``(inputs, labels, ...)`` as for the store);
- anything with ``features(site, pool=...)`` (:class:`~interp_core.cache.ActivationCache`,
  :class:`~interp_core.store.ActivationStore`);
- a mapping ``{site: [N, d] array or tensor}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from ..axes import PoolSpec
from ..errors import InputError, InputTypeError, SiteError


def is_model(source: Any) -> bool:
    return hasattr(source, "run_with_cache")


def split_batch(batch: Any) -> Any:
    """The model input of a batch: ``(inputs, labels, ...)`` -> ``inputs`` (as the store does)."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[0]
    return batch


def features_of(source: Any, site: str, pool: PoolSpec) -> torch.Tensor:
    """``[N, d]`` rows of ``site`` from a precomputed source."""
    if hasattr(source, "features"):
        return source.features(site, pool=pool)
    if isinstance(source, Mapping):
        if site not in source:
            raise SiteError(f"site {site!r} is not in the given features; have {list(source)[:8]}")
        t = torch.as_tensor(source[site])
        return t[:, None] if t.dim() == 1 else t
    raise InputTypeError(f"a similarity source must be a HookedModel (with data=), an ActivationCache/ActivationStore "
                    f"or a dict {{site: [N, d] array}}, got {type(source).__name__}")


def default_sites(source: Any) -> list[str]:
    if is_model(source):
        return list(source.default_sites)
    if hasattr(source, "site_names"):
        return list(source.site_names)
    if isinstance(source, Mapping):
        return list(source)
    raise InputTypeError(f"cannot list the sites of a {type(source).__name__}; pass sites explicitly")


def iter_pair_batches(source_a: Any, source_b: Any, data: Iterable[Any] | None, sites_a: Sequence[str],
                      sites_b: Sequence[str], pool: PoolSpec, max_batches: int | None = None,
                      chunk: int = 4096) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Aligned batches ``([b, d] per site of A, [b, d] per site of B)`` over the same inputs.

    Models run once per batch each (one pass per model over ``data``; the same model given twice runs once).
    Precomputed sources are read per site and cut into chunks of ``chunk`` rows.
    """
    if is_model(source_a) or is_model(source_b):
        if data is None:
            raise InputError("data= (an iterable of input batches) is needed to run hooked models")
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            x = split_batch(batch)
            if source_b is source_a:
                names = list(dict.fromkeys([*sites_a, *sites_b]))
                with source_a.evaluating():
                    _, cache = source_a.run_with_cache(x, sites=names, pool=pool)
                ca = cb = cache
            else:
                ca = _rows_from(source_a, x, sites_a, pool)
                cb = _rows_from(source_b, x, sites_b, pool)
            xs = [ca.features(s) for s in sites_a]  # pooling already happened inside the hook
            ys = [cb.features(s) for s in sites_b]
            _check_rows(xs, ys, sites_a, sites_b)
            yield xs, ys
        return
    xs_all = [features_of(source_a, s, pool) for s in sites_a]
    ys_all = [features_of(source_b, s, pool) for s in sites_b]
    _check_rows(xs_all, ys_all, sites_a, sites_b)
    n = xs_all[0].shape[0]
    for s in range(0, n, chunk):
        yield [x[s:s + chunk] for x in xs_all], [y[s:s + chunk] for y in ys_all]


def _rows_from(source: Any, x: Any, sites: Sequence[str], pool: PoolSpec) -> Any:
    if is_model(source):
        with source.evaluating():
            return source.run_with_cache(x, sites=list(sites), pool=pool)[1]
    raise InputTypeError("when one source is a model both must be models (or precompute both as caches)")


def _check_rows(xs: list[torch.Tensor], ys: list[torch.Tensor], sites_a: Sequence[str],
                sites_b: Sequence[str]) -> None:
    rows = {(s, t.shape[0]) for s, t in [*zip(sites_a, xs), *zip(sites_b, ys)]}
    if len({r for _, r in rows}) != 1:
        raise InputError(f"sites give different numbers of rows for the same inputs: {sorted(rows)}; pool "
                         f"positions (pool='mean', 'cls', ...) so each input gives one row")


def collect_features(source_a: Any, source_b: Any, data: Iterable[Any] | None, sites_a: Sequence[str],
                     sites_b: Sequence[str], pool: PoolSpec,
                     max_batches: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """All rows in memory: ``([N, d] per site of A, [N, d] per site of B)``."""
    xs: list[list[torch.Tensor]] = [[] for _ in sites_a]
    ys: list[list[torch.Tensor]] = [[] for _ in sites_b]
    for bx, by in iter_pair_batches(source_a, source_b, data, sites_a, sites_b, pool, max_batches):
        for acc, t in zip(xs, bx):
            acc.append(t)
        for acc, t in zip(ys, by):
            acc.append(t)
    return [torch.cat(v) for v in xs], [torch.cat(v) for v in ys]
