"""The engine of exact patching (:mod:`interp_core.patching`): units, patched writes, the base run, and
the two ways a patched chunk computes only what depends on its site (cones of a traced graph, or prefix
reuse through forward overrides). See :mod:`interp_core.patching` for the definitions and guarantees."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .errors import InputError
from .hooked import HookedModel, call_model
from .metrics import Metric
from .sites import Site
from .traced import Cones, site_cones, unchanged, usable

log = logging.getLogger("interp_core.patching")

Per = str | tuple[str, ...]

AUTO_CHUNK_VALUES = 2**20  # default chunk: about this many activation values at the patched site
AUTO_MAX_ROWS = 1024


# ---------------------------------------------------------------------------------------------- inputs
def _map_tensors(inputs: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {k: _map_tensors(v, fn) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_map_tensors(v, fn) for v in inputs)
    return inputs


def _repeat(inputs: Any, k: int) -> Any:
    """Stack ``k`` copies along the batch axis: rows ``[j*B, (j+1)*B)`` are copy ``j``."""
    return _map_tensors(inputs, lambda t: t.repeat(k, *([1] * (t.dim() - 1))))


def _check_pair(clean: Any, corrupted: Any) -> None:
    shapes: list[list[tuple]] = [[], []]
    _map_tensors(clean, lambda t: shapes[0].append(tuple(t.shape)) or t)
    _map_tensors(corrupted, lambda t: shapes[1].append(tuple(t.shape)) or t)
    if shapes[0] != shapes[1]:
        raise InputError(f"clean and corrupted inputs must have the same shapes (one corrupted input per clean "
                         f"one), got {shapes[0]} and {shapes[1]}")


# ---------------------------------------------------------------------------------------------- units
def _grid_dims(site: Site, per: Per) -> tuple[int, ...]:
    """Dimensions of the per-example activation (batch removed) that index the units."""
    if site.axes is None:
        raise InputError(f"site '{site.name}' has unknown axes; trace the model or give the adapter axes")
    if site.axes[0] != "batch":
        raise InputError(f"site '{site.name}' has its batch axis at {site.axes.index('batch')}; patching needs "
                         f"it first (axes {site.axes})")
    roles = site.axes[1:]
    if per == "auto":
        per = "pos" if "pos" in roles else "feature"
    wanted = (per,) if isinstance(per, str) else tuple(per)
    if wanted == ("site",):
        return ()
    for w in wanted:
        if w not in ("pos", "head", "feature"):
            raise InputError(f"per={per!r}: units are 'pos', 'head', 'feature', 'site', 'auto' or a tuple of them")
        if w not in roles:
            raise InputError(f"site '{site.name}' has no '{w}' axis (axes {site.axes}); choose per= among "
                             f"{sorted(set(roles)) + ['site']}")
    dims = tuple(i for i, r in enumerate(roles) if r in wanted)
    if "feature" in wanted and sum(r == "feature" for r in roles) > 1:
        raise InputError(f"site '{site.name}' has several feature axes; per='feature' needs one")
    return dims


def _unit_coords(shape: Sequence[int], dims: Sequence[int], units: torch.Tensor) -> list[torch.Tensor]:
    """Each unit's (flat index into the grid) coordinate along every grid dimension: ``len(dims)`` tensors
    of ``len(units)`` indices."""
    if len(dims) == 1:
        return [units]
    rest = units.clone()
    idx = []
    for size in reversed([shape[d] for d in dims]):
        idx.append(rest % size)
        rest = rest // size
    return idx[::-1]


def _unit_masks(shape: Sequence[int], dims: Sequence[int], units: torch.Tensor) -> torch.Tensor:
    """Boolean masks selecting each unit (flat index into the grid), broadcastable to ``[len(units), *shape]``
    (size 1 along the dimensions that are not grid dimensions)."""
    masks = torch.ones(len(units), *[shape[d] if d in dims else 1 for d in range(len(shape))], dtype=torch.bool)
    for d, i in zip(dims, _unit_coords(shape, dims, units)):
        ar = torch.arange(shape[d]).reshape([1] + [shape[d] if j == d else 1 for j in range(len(shape))])
        masks &= ar == i.reshape([len(units)] + [1] * len(shape))
    return masks


def _write_units(act: torch.Tensor, source: torch.Tensor, k: int, dims: Sequence[int],
                 coords: Sequence[torch.Tensor]) -> torch.Tensor:
    """A copy of ``act`` (``[k * B, *shape]``: k stacked copies of the base) where copy ``j`` holds
    ``source`` (``[B, *shape]``) at unit ``j`` (``coords``, :func:`_unit_coords`). One contiguous copy and
    one indexed write of the patched entries (a ``torch.where`` over the whole chunk read three tensors)."""
    B = source.shape[0]
    out = act.reshape(k, B, *source.shape[1:]).clone(memory_format=torch.contiguous_format)
    source = source.to(act.dtype)
    if not dims:  # the whole activation (k == 1)
        out[:] = source
        return out.reshape(act.shape)
    if len(dims) == 1 and int(coords[0][-1]) - int(coords[0][0]) == k - 1:  # consecutive units on one axis (a
        axis, lo = dims[0], int(coords[0][0])  # chunk of tokens): copy j's unit lo + j lies on the diagonal of the
        diagonal = torch.diagonal(out.narrow(2 + axis, lo, k), dim1=0, dim2=2 + axis)  # [k, ..., k, ...] block
        diagonal.copy_(source.narrow(1 + axis, lo, k).movedim(1 + axis, -1))
        return out.reshape(act.shape)
    grid = tuple(range(len(dims)))
    view = out.movedim(tuple(2 + d for d in dims), tuple(1 + g for g in grid))  # [k, *grid, B, *rest]
    at = [c.to(act.device) for c in coords]
    view[(torch.arange(k, device=act.device), *at)] = source.movedim(tuple(1 + d for d in dims), grid)[tuple(at)]
    return out.reshape(act.shape)


def _reduce_to_grid(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Sum a per-example-shaped tensor over every dimension that is not a grid dimension."""
    other = [d for d in range(x.dim()) if d not in dims]
    return x.sum(dim=other) if other else x


# ---------------------------------------------------------------------------------------------- engine
class _Repeats:
    """What each patched run of a chunk gets in place of the reused values (the base input, the recorded
    module outputs), in one of two modes.

    ``"rows"`` (one base example, ``B == 1``): only the values that reach the site get ``k`` rows — the site's
    own recorded output, or the output of the reused module that finishes last before the site (the
    *frontier*), or the input where nothing is reused — as a broadcast view (``expand``: no copy); every other
    reused value keeps its single row (a clone, handed out again while no in-place operation wrote to it), so
    the code between reused modules (a ViT's position embedding, say) runs on one row instead of ``k``. Values
    from before the site that meet the ``k`` patched rows later (a skip connection) broadcast, which equals ``k``
    copies for one row. A model that cannot run
    this way — writes in place to a view, ``.view()``s it, mixes batch sizes in a way that raises or returns
    another number of rows — fails, and the chunk is run again in ``"copies"`` mode (``fallback()``).

    ``"copies"``: every value as ``k`` real stacked copies, made once and handed out again while untouched: a
    copy is reused only if no in-place operation wrote to it since (``Tensor._version`` unchanged), else it is
    made afresh, so a model that modifies a reused output in place sees the recorded values in every chunk
    (copying per chunk cost ~15% of a late-block sweep of ``vit_tiny_patch16_224``)."""

    def __init__(self, mode: str = "copies") -> None:
        self.mode = mode
        self._made: dict[Any, tuple[int, Any, list[int]]] = {}

    def fallback(self) -> None:
        self.mode = "copies"
        self._made.clear()

    @staticmethod
    def _versions(value: Any) -> list[int]:
        out: list[int] = []
        _map_tensors(value, lambda t: out.append(t._version) or t)
        return out

    def get(self, key: Any, value: Any, k: int, frontier: bool = True) -> Any:
        made = self._made.get(key)
        if self.mode == "rows":
            if not frontier:  # one fresh row, handed out again while untouched (as copies are, below)
                if made is not None and self._versions(made[1]) == made[2]:
                    return made[1]
                rep = _map_tensors(value, lambda t: t.clone())
                self._made[key] = (1, rep, self._versions(rep))
                return rep
            return _map_tensors(value, lambda t: t.expand(k, *t.shape[1:]) if t.dim() and t.shape[0] == 1
                                else t.repeat(k, *([1] * (t.dim() - 1))))
        if made is not None and made[0] >= k and self._versions(made[1]) == made[2]:
            if made[0] == k:
                return made[1]
            # fewer copies (the last chunk): the leading rows of the copies already made
            return _map_tensors(made[1], lambda t: t[: t.shape[0] // made[0] * k])
        rep = _repeat(value, k)
        self._made[key] = (k, rep, self._versions(rep))
        return rep


@contextlib.contextmanager
def _reusing(hm: HookedModel, outputs: Mapping[str, Any], k: int, repeats: _Repeats | None = None,
             frontier: Sequence[str] | None = None) -> Iterator[None]:
    """Modules in ``outputs`` return their recorded output (repeated k times) instead of computing.

    Through :meth:`HookedModel.replacing_forward`, so the overrides stack with any other (the ViT adapter's
    per-head attention, a user's own) and end in any order. ``repeats`` keeps the copies between chunks and
    decides which values get ``k`` rows (``frontier``: the paths that reach the site; default all)."""
    repeats = repeats if repeats is not None else _Repeats()
    with contextlib.ExitStack() as stack:
        for path, out in outputs.items():
            rep = repeats.get(path, out, k, frontier is None or path in frontier)
            stack.enter_context(hm.replacing_forward(path, lambda module, inner, _r=rep: (lambda *a, **kw: _r)))
        yield


def _frontier(hm: HookedModel, site: Site, recorded: Mapping[str, Any]) -> list[str]:
    """The reused modules whose outputs reach the site: its own module where reused, else the reused module
    that finishes last before it (empty when nothing is reused: then the input must carry the k rows)."""
    own = _own_output(hm, site)
    if own is not None and own in recorded:
        return [own]
    span = getattr(hm, "_span", {})
    before = [p for p in recorded if p in span]
    return [max(before, key=lambda p: span[p][1])] if before else []


def _own_output(hm: HookedModel, site: Site) -> str | None:
    """The module whose recorded output a patched run may return in place of running it: the site's own
    module, where the site is that module's output (not its input, not a virtual site) and the module ran
    exactly once in the traced forward (not the root: its output is the model's)."""
    if site.kind != "output" or not site.module_path or site.call_index is not None:
        return None
    return site.module_path if site.module_path in getattr(hm, "_span", {}) else None


def _repeatable(value: Any) -> bool:
    """Whether :func:`_repeat` reproduces ``value`` exactly: a tensor, or plain tuples / lists / dicts of them
    (a dict subclass or any other object would come back changed or unrepeated)."""
    if value is None or isinstance(value, (torch.Tensor, bool, int, float, str)):
        return True
    if type(value) in (tuple, list):
        return all(_repeatable(v) for v in value)
    if type(value) is dict:
        return all(_repeatable(v) for v in value.values())
    return False


def _reused_paths(hm: HookedModel, site: Site) -> list[str]:
    """Modules whose recorded outputs a patched run of ``site`` returns instead of computing: every module
    that finishes before the site's module starts, and the site's own module (see :func:`_own_output`)."""
    own = _own_output(hm, site)
    return [*hm.completed_before(site.name), *([own] if own else [])]


def _base_run(hm: HookedModel, inputs: Any, sites: Sequence[Site], reuse_prefix: bool,
              ) -> tuple[Any, Any, dict[str, Any]]:
    """One forward of the base input: its output, the sites' cache and, for prefix reuse, the outputs of
    every module a patched run may reuse (:func:`_reused_paths`; each patched run then takes its own subset).

    The outputs are recorded by forward hooks registered before the sites' own hooks, so each is what the
    module returned, before any hook saw it."""
    paths = sorted({p for s in sites for p in _reused_paths(hm, s)}) if reuse_prefix else []
    outs: dict[str, Any] = {}
    handles = []
    try:
        for p in paths:
            handles.append(hm.model.get_submodule(p).register_forward_hook(
                lambda m, a, o, p=p: outs.__setitem__(p, _map_tensors(o, lambda t: t.detach().clone()))))
        out, cache = hm.run_with_cache(inputs, sites=[s.name for s in sites])
    finally:
        for h in handles:
            h.remove()
    return out, cache, {p: o for p, o in outs.items() if _repeatable(o)}


def _metric_mean(out: Any, metric: Metric) -> float:
    return float(metric(out).mean())


def _usable_cones(hm: HookedModel, targets: Sequence[Site]) -> Cones | None:
    """The sites' :class:`~interp_core.traced.Cones` where they compute exactly what the model would now (no
    hook or forward override anywhere, inlined modules in eval mode and unchanged since they were built)."""
    key = tuple(s.name for s in targets)
    cones = hm._cones.get(key, False)
    if cones is False or (cones is not None and not unchanged(cones.baked)):
        cones = hm._cones[key] = site_cones(hm.model, targets)
    if cones is None or not usable(hm.model, cones.modules, cones.inlined):
        return None
    return cones


def _plain(value: Any) -> bool:
    """A recorded value a cone may read whatever the number of rows (not a size or count that could be the
    batch size)."""
    return isinstance(value, (torch.Tensor, bool, str)) or value is None


def _base(hm: HookedModel, inputs: Any, targets: Sequence[Site], reuse_prefix: bool,
          ) -> tuple[Any, Mapping[str, torch.Tensor], dict[str, Any], Any]:
    """The base run: ``(output, site values, recorded module outputs, cones)``. Through the sites' cones where
    the model traces (``cones = (Cones, external values)``; each patched run then computes only what depends on
    its site), else :func:`_base_run` (``cones = None``; patched runs reuse recorded module outputs)."""
    cones = _usable_cones(hm, targets) if reuse_prefix else None
    if cones is not None:
        out, values, externals = hm._call(inputs, cones.record)  # raw failures: the suite's error
        if all(map(_plain, externals)) and all(isinstance(v, torch.Tensor) for v in values):
            return out, {s.name: v for s, v in zip(targets, values)}, {}, (cones, externals)
    out, cache, outputs = _base_run(hm, inputs, targets, reuse_prefix)
    return out, cache, outputs, None


def _exact_site_cone(rest: Callable, externals: list[Any], source: torch.Tensor, base_act: torch.Tensor,
                     dims: tuple[int, ...], metric: Metric, k_max: int, n_units: int, bar: Any) -> torch.Tensor:
    """:func:`_exact_site` through the site's cone: each chunk runs only what depends on the site, on the
    patched copies of the site's value and the base run's other values (``_Repeats``: one row broadcast, or
    copies where the model cannot take that)."""
    B = base_act.shape[0]
    repeats = _Repeats("rows" if B == 1 else "copies")
    values = []

    def run(k: int, coords: list[torch.Tensor]) -> torch.Tensor:
        patched = _write_units(repeats.get("site", base_act, k), source, k, dims, coords)
        ext = [repeats.get(i, e, k, False) if isinstance(e, torch.Tensor) else e for i, e in enumerate(externals)]
        return metric(rest(patched, *ext))

    for lo in range(0, n_units, k_max):
        units = torch.arange(lo, min(n_units, lo + k_max))
        k = len(units)
        coords = _unit_coords(base_act.shape[1:], dims, units)
        try:
            m = run(k, coords)
            failed = m.shape[0] != k * B and repeats.mode == "rows"
        except (RuntimeError, ValueError, IndexError):  # in "rows" mode: shape errors of mixed batch sizes
            if repeats.mode != "rows":
                raise
            failed = True
        if failed:
            repeats.fallback()
            m = run(k, coords)
        if m.shape[0] != k * B:
            raise InputError(f"metric {metric.name!r} returned {m.shape[0]} values for a batch of {k * B}; a "
                             f"metric returns one number per example")
        values.append(m.detach().reshape(k, B).mean(dim=1).cpu())
        bar.update(k)
    return torch.cat(values)


def _exact_site(hm: HookedModel, base: Any, site: Site, source: torch.Tensor, base_act: torch.Tensor,
                dims: tuple[int, ...], metric: Metric, batch_size: int | None, base_outputs: Mapping[str, Any],
                bar: Any, cones: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Metric (batch mean, in the metric's dtype) of each unit's patched run, and which units were no-ops."""
    B = base_act.shape[0]
    shape = tuple(base_act.shape[1:])
    n_units = math.prod(shape[d] for d in dims) if dims else 1
    differs = (source != base_act).any(dim=0)  # [*shape]
    no_op = _reduce_to_grid(differs.float(), dims).reshape(-1) == 0 if dims else ~differs.any().reshape(1)
    if batch_size is None:
        batch_size = min(AUTO_MAX_ROWS, AUTO_CHUNK_VALUES // max(1, math.prod(shape)))
    k_max = max(1, batch_size // B)
    if cones is not None:
        graphs, externals = cones
        ext = [externals[i] for i in graphs.uses[site.name]]
        return _exact_site_cone(graphs.narrowed(site.name, (base_act, *ext)), ext, source, base_act, dims, metric,
                                k_max, n_units, bar), no_op
    # every module that finished before the site's module started returns its recorded output, and so does
    # the site's own module when the site is its output: the patch then acts on that recorded output, so a
    # patched row computes only what comes after the site (the compute floor of exact patching)
    recorded = {p: base_outputs[p] for p in _reused_paths(hm, site) if p in base_outputs}
    values = []
    frontier = _frontier(hm, site, recorded)
    repeats = _Repeats("rows" if B == 1 else "copies")
    chunk: dict[str, Any] = {}  # what the overrides and the hook serve in the current chunk

    def fn(act: torch.Tensor) -> torch.Tensor:
        return _write_units(act, source, chunk["k"], dims, chunk["coords"])

    def run(k: int) -> tuple[Any, torch.Tensor]:
        rows = repeats.mode == "rows"
        for p, rec in recorded.items():
            chunk[p] = repeats.get(p, rec, k, p in frontier)  # ("copies" mode: k rows for every value)
        out = call_model(hm.model, repeats.get(None, base, k, not (rows and frontier)))
        return out, metric(out)

    # the overrides and the hook are installed once per site (per chunk they cost ~2 ms of Python on a ViT)
    with contextlib.ExitStack() as stack:
        for path in recorded:
            stack.enter_context(hm.replacing_forward(
                path, lambda module, inner, _p=path: (lambda *a, **kw: chunk[_p])))
        stack.enter_context(hm.hooks({site.name: fn}))
        for lo in range(0, n_units, k_max):
            units = torch.arange(lo, min(n_units, lo + k_max))
            k = len(units)
            chunk["k"] = k
            chunk["coords"] = _unit_coords(shape, dims, units)
            try:
                out, m = run(k)
                failed = m.shape[0] != k * B and repeats.mode == "rows"
            except (RuntimeError, ValueError, IndexError):  # in "rows" mode: shape errors of mixed batch sizes
                if repeats.mode != "rows":
                    raise
                failed = True
            if failed:  # the model cannot run on one-row reused values (see _Repeats): real copies from now on
                log.debug("site %s: one-row reuse refused by the model; stacking copies", site.name)
                repeats.fallback()
                out, m = run(k)
            if m.shape[0] != k * B:
                raise InputError(f"metric {metric.name!r} returned {m.shape[0]} values for a batch of {k * B}; a "
                                 f"metric returns one number per example")
            values.append(m.detach().reshape(k, B).mean(dim=1).cpu())
            bar.update(k)
    return torch.cat(values), no_op
