"""Where feature rows come from: models run over data, caches, stores, or dicts of ``[N, d]`` arrays.

A *source* is one of:

- a model: a :class:`~interp_core.hooked.HookedModel` or a plain ``nn.Module`` (which enters through
  :func:`~interp_core.boundary.as_hooked`, so it gets the adapter registered for it: a timm ViT its canonical
  ``blocks.{i}.resid_post`` sites, a policy its ``policy.*`` sites), plus ``data`` in any form
  :func:`~interp_core.boundary.iter_batches` accepts (a tensor or numpy array ``[N, ...]`` cut into batches,
  an ``(x, y)`` pair, a ``Dataset``, a ``DataLoader`` or any iterable of batches). Models run inside
  ``hm.analysis()`` (eval mode, flags restored);
- anything with ``features(site, pool=...)`` (:class:`~interp_core.cache.ActivationCache`,
  :class:`~interp_core.store.ActivationStore`);
- a mapping ``{site: [N, d] array or tensor}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..axes import PoolSpec
from ..boundary import Batch, as_hooked, iter_batches
from ..errors import InputError, InputTypeError, SiteError
from ..progress import progress_bar


def is_model(source: Any) -> bool:
    """A model (hooked or a plain module) rather than precomputed features."""
    return isinstance(source, nn.Module) or hasattr(source, "run_with_cache")


class PreparedBatches(list):
    """Batches already through :func:`~interp_core.boundary.iter_batches` for one model (read more than once)."""


def prepare_batches(data: Any, model: Any, *, sites: Sequence[str] | None = None, batch_size: int | None = None,
                    max_batches: int | None = None, argument: str = "data") -> PreparedBatches:
    """All batches of ``data`` for ``model`` as a list of :class:`~interp_core.boundary.Batch` (kept in memory),
    for analyses that pass over the same data several times."""
    return PreparedBatches(model_batches(data, model, sites=sites, batch_size=batch_size, max_batches=max_batches,
                                         argument=argument))


def model_batches(data: Any, model: Any, *, sites: Sequence[str] | None = None, batch_size: int | None = None,
                  max_batches: int | None = None, argument: str = "data") -> Iterator[Batch]:
    """Batches of ``data`` for ``model`` through the boundary, stopping after ``max_batches``."""
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise InputError(f"max_batches: must be a positive integer or None, got {max_batches!r}")
    if isinstance(data, PreparedBatches):
        it: Iterable[Batch] = data
    else:
        it = iter_batches(data, model=model, batch_size=batch_size, sites=sites, argument=argument)
    for i, batch in enumerate(it):
        if max_batches is not None and i >= max_batches:
            return
        yield batch


def for_model(inputs: Any, model: Any) -> Any:
    """``inputs`` prepared for one model converted for another: floating tensors to its dtype, onto its device."""
    if isinstance(inputs, Mapping):
        return {k: for_model(v, model) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(for_model(v, model) for v in inputs)
    if not isinstance(inputs, torch.Tensor):
        return inputs
    p = next((q for q in model.parameters() if q.is_floating_point()), None)
    if p is None:
        return inputs
    dtype = p.dtype if inputs.is_floating_point() else inputs.dtype
    return inputs.to(device=p.device, dtype=dtype)


def features_of(source: Any, site: str, pool: PoolSpec) -> torch.Tensor:
    """``[N, d]`` rows of ``site`` from a precomputed source."""
    if hasattr(source, "features"):
        return source.features(site, pool=pool)
    if isinstance(source, Mapping):
        if site not in source:
            raise SiteError(f"site {site!r} is not in the given features; have {list(source)[:8]}")
        t = torch.as_tensor(source[site])
        return t[:, None] if t.dim() == 1 else t
    raise InputTypeError(f"a similarity source must be a model (HookedModel or nn.Module, with data=), an "
                         f"ActivationCache/ActivationStore or a dict {{site: [N, d] array}}, got "
                         f"{type(source).__name__}")


def default_sites(source: Any) -> list[str]:
    if is_model(source):
        return list(as_hooked(source).default_sites)
    if hasattr(source, "site_names"):
        return list(source.site_names)
    if isinstance(source, Mapping):
        return list(source)
    raise InputTypeError(f"cannot list the sites of a {type(source).__name__}; pass sites explicitly")


def _module_of(source: Any) -> Any:
    return source.model if hasattr(source, "run_with_cache") and hasattr(source, "model") else source


def same_model(a: Any, b: Any) -> bool:
    """The same model given twice (run once): the same object, or a plain module and a wrapper of it. Two
    different wrappers of one module may name their sites differently, so they count as two models."""
    if a is b:
        return True
    if _module_of(a) is not _module_of(b):
        return False
    return not (hasattr(a, "run_with_cache") and hasattr(b, "run_with_cache"))


def iter_pair_batches(source_a: Any, source_b: Any, data: Any, sites_a: Sequence[str], sites_b: Sequence[str],
                      pool: PoolSpec, max_batches: int | None = None, chunk: int = 4096, *,
                      batch_size: int | None = None, progress: bool | None = None,
                      desc: str = "similarity") -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Aligned batches ``([b, d] per site of A, [b, d] per site of B)`` over the same inputs.

    Models run once per batch each (one pass per model over ``data``; the same model given twice runs once),
    inside ``analysis()``. Precomputed sources are read per site and cut into chunks of ``chunk`` rows.
    """
    if is_model(source_a) or is_model(source_b):
        if not (is_model(source_a) and is_model(source_b)):
            raise InputTypeError("model_a, model_b: when one source is a model both must be models (or "
                                 "precompute both as caches / stores / dicts of features)")
        if data is None:
            raise InputError("data: needed to run the models; pass inputs as a tensor, numpy array, (x, y) pair, "
                             "Dataset, DataLoader or iterable of batches")
        same = same_model(source_a, source_b)
        ha = as_hooked(source_a, "model_a")
        hb = ha if same else as_hooked(source_b, "model_b")
        names_a = list(dict.fromkeys([*sites_a, *sites_b])) if same else list(sites_a)
        batches = model_batches(data, ha, sites=names_a, batch_size=batch_size, max_batches=max_batches)
        with contextlib.ExitStack() as stack:
            stack.enter_context(ha.analysis())
            if not same:
                stack.enter_context(hb.analysis())
            for batch in progress_bar(batches, desc=desc, unit="batch", progress=progress):
                _, ca = ha.run_with_cache(batch.inputs, sites=names_a, pool=pool)
                cb = ca if same else hb.run_with_cache(for_model(batch.inputs, hb), sites=list(sites_b),
                                                       pool=pool)[1]
                xs = [ca.features(s) for s in sites_a]  # pooling already happened inside the hook
                ys = [cb.features(s) for s in sites_b]
                _check_rows(xs, ys, sites_a, sites_b)
                yield xs, ys
        return
    xs_all = [features_of(source_a, s, pool) for s in sites_a]
    ys_all = [features_of(source_b, s, pool) for s in sites_b]
    _check_rows(xs_all, ys_all, sites_a, sites_b)
    n = xs_all[0].shape[0]
    for s in progress_bar(range(0, n, chunk), desc=desc, unit="chunk", progress=progress):
        yield [x[s:s + chunk] for x in xs_all], [y[s:s + chunk] for y in ys_all]


def _check_rows(xs: list[torch.Tensor], ys: list[torch.Tensor], sites_a: Sequence[str],
                sites_b: Sequence[str]) -> None:
    rows = {(s, t.shape[0]) for s, t in [*zip(sites_a, xs), *zip(sites_b, ys)]}
    if len({r for _, r in rows}) != 1:
        raise InputError(f"sites give different numbers of rows for the same inputs: {sorted(rows)}; pool "
                         f"positions (pool='mean', 'cls', ...) so each input gives one row")


def collect_features(source_a: Any, source_b: Any, data: Any, sites_a: Sequence[str],
                     sites_b: Sequence[str], pool: PoolSpec, max_batches: int | None = None, *,
                     batch_size: int | None = None, progress: bool | None = None,
                     desc: str = "features") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """All rows in memory: ``([N, d] per site of A, [N, d] per site of B)``."""
    xs: list[list[torch.Tensor]] = [[] for _ in sites_a]
    ys: list[list[torch.Tensor]] = [[] for _ in sites_b]
    for bx, by in iter_pair_batches(source_a, source_b, data, sites_a, sites_b, pool, max_batches,
                                    batch_size=batch_size, progress=progress, desc=desc):
        for acc, t in zip(xs, bx):
            acc.append(t)
        for acc, t in zip(ys, by):
            acc.append(t)
    return [torch.cat(v) for v in xs], [torch.cat(v) for v in ys]
