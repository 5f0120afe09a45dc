"""HookedModel: read and replace activations at named sites of any ``nn.Module``.

``HookedModel(model, adapter=None)`` wraps a module without copying or mutating it:

- ``hm.sites`` — the site table (see :mod:`interp_core.sites`);
- ``hm.run_with_cache(inputs, sites=[...], pool=None)`` → ``(output, ActivationCache)`` storing only the
  requested sites; pooling happens inside the hook, so full tensors are never kept;
- ``with hm.intervene({site: intervention, ...}): ...`` and ``hm.run_with_interventions(inputs, {...})``.

Guarantees (tested): the hooks this class adds are removed on every exit path, exceptions included; hooks the
user registered are never touched; weights, ``requires_grad`` flags and train/eval mode are exactly as
before. ``hm.evaluating()`` switches to eval mode for a block and restores each module's own flag after.

Cached activations are copies taken when the hook fires, so later in-place operations cannot change them.
With ``grad=True`` the cached tensors stay in the autograd graph *on the path to the output* (the forward
continues from a second copy), so ``torch.autograd.grad(metric(out), cache[site])`` gives the gradient of
the metric with respect to that activation — what attribution patching needs.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .axes import PoolSpec
from .axes import pool as pool_tensor
from .cache import ActivationCache
from .errors import InputError, InputTypeError, InterpError, InterpWarning, SiteError
from .forwards import MakeForward, replace_forward
from .sites import Adapter, GenericAdapter, HookFn, Site, SiteTable, infer_axes
from .traced import TracedCache
from .traced import unchanged as traced_unchanged
from .traced import usable as traced_usable

Inputs = Any  # a tensor, a tuple of positional arguments, or a dict of keyword arguments
log = logging.getLogger(__name__)


def signature(inputs: Inputs) -> tuple:
    """What a trace depends on: each tensor's rank and per-example shape (the batch size left out)."""
    if isinstance(inputs, torch.Tensor):
        return ("tensor", tuple(inputs.shape[1:]), inputs.dim())
    if isinstance(inputs, Mapping):
        return ("dict", tuple((k, signature(v)) for k, v in inputs.items()))
    if isinstance(inputs, (tuple, list)):
        return ("args", tuple(signature(v) for v in inputs))
    return (type(inputs).__name__,)


def call_model(model: Callable, inputs: Inputs) -> Any:
    """Call ``model`` on ``inputs``: a tuple/list is unpacked as positional args, a dict as kwargs."""
    if type(inputs) is torch.Tensor:  # the common case first: the ABC check below costs a microsecond
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


class _Handles:
    """A group of hook handles removed together."""

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def add(self, h: Any) -> None:
        self.handles.append(h)

    def remove(self) -> None:
        errors = []
        while self.handles:
            h = self.handles.pop()
            try:
                h.remove()
            except Exception as e:  # keep removing the rest; report after
                errors.append(e)
        if errors:
            raise errors[0]


def _shape_error(site: Site, expected: torch.Size, got: Any, what: str) -> ValueError:
    got_shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
    return ValueError(f"{what} at site '{site.name}' returned shape {got_shape}, expected {tuple(expected)} "
                      f"(axes {site.axes}); an intervention must keep the activation's shape")


class HookedModel:
    """Wraps ``model`` with a site table and scoped hooks; see the module docstring.

    Args:
        model: any ``nn.Module``; it is neither copied nor changed.
        adapter: an :class:`~interp_core.sites.Adapter` giving canonical and virtual sites; default: the
            :class:`~interp_core.sites.GenericAdapter` (every submodule's output by module path).
        example_input: an input for the trace that finds shapes, axes and reused modules. Without it the
            adapter's ``example_input`` is used, or else the first real inputs (one extra forward, once).
    """

    def __init__(self, model: nn.Module, adapter: Adapter | None = None, example_input: Inputs = None):
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"HookedModel wraps an nn.Module, got {type(model).__name__}")
        self.model = model
        if adapter is None or adapter == "auto":
            from .boundary import find_adapter

            adapter = find_adapter(model)
        elif adapter == "generic":
            adapter = GenericAdapter()
        self.adapter = adapter if adapter is not None else GenericAdapter()
        self._raw_sites = list(self.adapter.sites(model))
        self._modules = dict(model.named_modules())
        for s in self._raw_sites:
            if s.kind != "virtual" and s.module_path not in self._modules:
                raise InputError(f"adapter {self.adapter.name!r} names site {s.name!r} on module "
                                 f"{s.module_path!r}, which the model does not have")
        self._table = SiteTable(self._raw_sites)
        self._traced = False
        self.fast_cache = True  # run_with_cache may use a torch.fx graph where it gives the same values
        self._traced_graphs: TracedCache | None = None
        self._plans: dict[Any, Any] = {}
        self._rebuilt: set[Any] = set()  # plans whose graph was found stale once and built again
        self._cones: dict[tuple, Any] = {}  # per tuple of sites: interp_core.traced.Cones for patching, or None
        self._trace_signature: tuple | None = None
        self._trace_description = ""
        self._warned_train = False
        given = example_input is not None
        if example_input is None and not getattr(self.adapter, "trace_lazily", False):
            example_input = self.adapter.example_input(model)
        if example_input is not None:
            try:
                self.trace(example_input)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                if given:
                    raise InputError(f"example_input: {e}; give an input the model accepts, or none (the first "
                                     f"real input is traced instead)") from None
                # the adapter's guessed input does not fit this model: trace on the first real input instead
                log.info("example input does not fit %s (%s); tracing on first use", type(model).__name__, e)
                self._table = SiteTable(self._raw_sites)

    # ------------------------------------------------------------------ model pass-through
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    forward = __call__

    def __repr__(self) -> str:
        return f"HookedModel({type(self.model).__name__}, adapter={self.adapter.name!r}, {len(self.sites)} sites)"

    @property
    def training(self) -> bool:
        return self.model.training

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self.model.parameters(recurse)

    def to(self, *args: Any, **kwargs: Any) -> "HookedModel":
        self.model.to(*args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @contextlib.contextmanager
    def evaluating(self) -> Iterator["HookedModel"]:
        """Eval mode for the block; afterwards every module's ``training`` flag is as it was."""
        flags = [(m, m.training) for m in self.model.modules()]
        changed = any(f for _, f in flags)  # a model already in eval mode needs nothing (patching calls this a lot)
        if changed:
            self.model.eval()
        try:
            yield self
        finally:
            if changed:
                for m, f in flags:
                    m.training = f

    @contextlib.contextmanager
    def analysis(self, train: bool = False) -> Iterator["HookedModel"]:
        """The mode every analysis runs in: eval mode (``train=False``) with every module's flag restored,
        or train mode (``train=True``: dropout on, batch statistics used) with every buffer (BatchNorm's
        running statistics) restored afterwards. Weights are never changed either way."""
        if not train:
            with self.evaluating():
                yield self
            return
        flags = [(m, m.training) for m in self.model.modules()]
        warned, self._warned_train = self._warned_train, True  # train mode asked for: no warning
        with self._buffers_kept():
            self.model.train()
            try:
                yield self
            finally:
                self._warned_train = warned
                for m, f in flags:
                    m.training = f

    @contextlib.contextmanager
    def _buffers_kept(self) -> Iterator[None]:
        saved = [(b, b.detach().clone()) for b in self.model.buffers()]
        try:
            yield
        finally:
            with torch.no_grad():
                for b, v in saved:
                    if b.shape == v.shape:
                        b.copy_(v)

    @contextlib.contextmanager
    def replacing_forward(self, path: str, make: MakeForward) -> Iterator[None]:
        """Run ``make(module, inner) -> forward`` in place of the forward of module ``path`` for the block.

        Overrides stack per module and can end in any order (:mod:`interp_core.forwards`); the module's own
        forward is back when the last one ends.
        """
        handle = replace_forward(self.model.get_submodule(path), make)
        try:
            yield
        finally:
            handle.remove()

    def _run(self, inputs: Inputs) -> Any:
        """Call the model: in train mode, warn once and keep buffers; wrap raw failures in the suite's error."""
        if self.model.training:
            if not self._warned_train:
                warnings.warn(f"{type(self.model).__name__} is in train mode: dropout is active and batch "
                              f"statistics are used (buffers are restored after each run). Analyses use "
                              f"eval mode; call model.eval() or use `with hm.analysis():`", InterpWarning,
                              stacklevel=3)
                self._warned_train = True
            with self._buffers_kept():
                return self._call(inputs)
        return self._call(inputs)

    def _cache_traced(self, inputs: Inputs, sites: Sequence[str] | str | None, pool: Any, fresh: bool = False,
                      ) -> tuple[Any, ActivationCache] | None:
        """The traced fast path (:mod:`interp_core.traced`), or ``None`` where the hooks must serve. A graph
        found stale (the model changed since it was built) is built again once; a model that keeps changing
        takes the hooks."""
        if self.model.training:
            return None
        try:
            key = (sites if isinstance(sites, str) or sites is None else tuple(sites),
                   pool if pool is None or isinstance(pool, (str, int)) else repr(pool))
            plan = self._plans.get(key, False)
        except TypeError:  # unhashable sites
            return None
        if plan is False:
            targets = self._resolve(sites)
            pools = dict(pool) if isinstance(pool, Mapping) else {s.name: pool for s in targets}
            if any(s.axes is None for s in targets):
                plan = None
            else:
                if self._traced_graphs is None:
                    self._traced_graphs = TracedCache(self.model)
                plan = self._traced_graphs.get(targets, pools, fresh)
                if plan is not None:
                    plan = (*plan, list(self.model.modules()))
            self._plans[key] = plan
        if plan is None:
            return None
        graph, inlined, axes, names, baked, modules = plan
        if not traced_usable(self.model, modules, inlined):
            return None
        if not traced_unchanged(baked):
            if fresh or key in self._rebuilt:
                self._plans[key] = None
                return None
            self._rebuilt.add(key)
            del self._plans[key]
            return self._cache_traced(inputs, sites, pool, fresh=True)
        if torch.is_grad_enabled():
            with torch.no_grad():
                out, recorded = self._call(inputs, graph)
        else:
            out, recorded = self._call(inputs, graph)
        return out, ActivationCache.trusted(dict(zip(names, recorded)), axes, names)

    def _call(self, inputs: Inputs, fn: Callable | None = None) -> Any:
        try:
            return call_model(fn if fn is not None else self.model, inputs)
        except InterpError:
            raise
        except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as e:  # timm asserts on shapes
            if getattr(e, "_interp_from_hook", False):
                raise
            from .boundary import describe_inputs

            raise InputError(f"inputs: {type(self.model).__name__} failed on {describe_inputs(inputs)}: {e}; "
                             f"check the input's shape and dtype against what the model expects") from e

    # ------------------------------------------------------------------ sites
    @property
    def sites(self) -> SiteTable:
        """The site table. Shapes, axes and per-call sites of reused modules appear once traced."""
        return self._table

    @property
    def default_sites(self) -> list[str]:
        names = self.adapter.default_sites(self.model)
        out = []
        for n in names:
            if n in self._table:
                out.append(n)
            elif n in self._table._reused:  # a reused module expands into its per-call sites
                out.extend(f"{n}#{i}" for i in range(self._table._reused[n]))
        return out

    def trace(self, inputs: Inputs) -> SiteTable:
        """Run one forward (no grad, eval mode, state restored) to learn shapes, axes and reused modules."""
        self._modules = dict(self.model.named_modules())
        calls: dict[str, list[Any]] = {}
        events: dict[str, list[int]] = {}  # path -> [start, end, start, end, ...] in call order
        clock = [0]
        handles = _Handles()

        def tick(path: str) -> None:
            events.setdefault(path, []).append(clock[0])
            clock[0] += 1

        def recorder(path: str) -> Callable:
            def hook(module: nn.Module, args: tuple, output: Any) -> None:
                calls.setdefault(path, []).append(output)
                tick(path)
            return hook

        virtual: dict[str, torch.Size] = {}

        def vrecorder(name: str) -> HookFn:
            def fn(act: torch.Tensor) -> None:
                virtual[name] = act.shape
            return fn

        inputs_seen: dict[str, list[Any]] = {}

        def pre_recorder(path: str) -> Callable:
            def hook(module: nn.Module, args: tuple) -> None:
                inputs_seen.setdefault(path, []).append(args)
                tick(path)
            return hook

        try:
            for path, mod in self._modules.items():
                handles.add(mod.register_forward_hook(recorder(path)))
                handles.add(mod.register_forward_pre_hook(pre_recorder(path)))
            for s in self._raw_sites:
                if s.kind == "virtual":
                    handles.add(s.attach(self.model, vrecorder(s.name)))
            with torch.no_grad(), self.evaluating():
                self._call(inputs)
        finally:
            handles.remove()

        sites: list[Site] = []
        reused: dict[str, int] = {}
        idle: list[str] = []
        for s in self._raw_sites:
            if s.kind == "virtual":
                if s.name not in virtual:
                    idle.append(s.name)
                else:
                    sites.append(self._complete(s, virtual[s.name], None))
                continue
            seen = (calls if s.kind == "output" else inputs_seen).get(s.module_path, [])
            if s.module_path == "" and s.kind == "output":
                seen = seen[-1:]  # the root runs once
            if not seen:
                idle.append(s.name)
                continue
            values = []
            for v in seen:
                if s.read is not None:
                    v = s.read(v)
                elif s.kind == "input":
                    v = v[0] if v else None
                values.append(v)
            if len(values) <= 1 or s.call_index is not None:
                v = values[s.call_index or 0] if values and (s.call_index or 0) < len(values) else None
                sites.append(self._complete(s, v.shape if isinstance(v, torch.Tensor) else None, s.module_path))
            else:
                reused[s.name] = len(values)
                for i, v in enumerate(values):
                    shape = v.shape if isinstance(v, torch.Tensor) else None
                    sites.append(self._complete(s.with_(name=f"{s.name}#{i}", call_index=i,
                                                        description=f"{s.description} (call {i})"),
                                                shape, s.module_path))
        self._table = SiteTable(sites, reused, idle)
        # (start, end) of every module that ran exactly once: what finished before a site can be reused
        self._span = {p: (e[0], e[1]) for p, e in events.items() if len(e) == 2 and p}
        self._completed_memo = {}
        self._traced_graphs = None  # graphs built for the earlier trace's sites are dropped
        self._plans = {}
        self._cones = {}
        self._traced = True
        from .boundary import describe_inputs

        self._trace_signature = signature(inputs)
        self._trace_description = describe_inputs(inputs)
        return self._table

    def completed_before(self, site: str) -> list[str]:
        """The outermost modules that finish, in the traced forward, before ``site``'s module starts.

        Their outputs depend only on the input, so a run that changes ``site`` may reuse them instead of
        recomputing them (patching does this to start each patched run at the patched layer). Empty when
        the order is unknown (untraced, or a module that runs several times).
        """
        s = self._table[site]
        span = getattr(self, "_span", {})
        if s.module_path not in span:
            return []
        memo = self.__dict__.setdefault("_completed_memo", {})  # reset whenever the trace is redone
        key = s.module_path
        if key not in memo:
            start = span[s.module_path][0]
            done = [p for p, (_, end) in span.items() if end < start and not s.module_path.startswith(p + ".")]
            memo[key] = [p for p in done if not any(p.startswith(q + ".") for q in done)]
        return list(memo[key])

    def _complete(self, s: Site, shape: torch.Size | None, module_path: str | None) -> Site:
        if shape is None:
            return s
        axes = s.axes
        if axes is None:
            module = self._modules.get(module_path) if module_path is not None else None
            axes = infer_axes(shape, module)
        return s.with_(axes=axes, shape=tuple(shape[1:]) if axes and axes[0] == "batch" else tuple(shape))

    def _ensure_traced(self, inputs: Inputs) -> None:
        """Trace on ``inputs`` if not traced yet; re-trace when they differ in rank or per-example shape from
        what the trace saw (an error then says what the first input looked like)."""
        if not self._traced:
            self.trace(inputs)
            return
        if self._trace_signature is None or signature(inputs) == self._trace_signature:
            return
        first = self._trace_description
        try:
            self.trace(inputs)
        except InputError as e:
            raise InputError(f"inputs: the model was traced on {first}; now given batches it fails on ({e}); "
                             f"give batches shaped like the first input") from None

    def _resolve(self, names: Sequence[str] | str | None) -> list[Site]:
        if names is None:
            names = self.default_sites
        elif isinstance(names, str):
            names = [names]
        return [self._table[n] for n in names]

    # ------------------------------------------------------------------ hooks
    def _module(self, path: str) -> nn.Module:
        """The module at ``path`` now: a module replaced since wrapping (``model.fc = nn.Linear(...)``) is the
        one hooked."""
        try:
            return self.model.get_submodule(path)
        except AttributeError:
            raise SiteError(f"site module {path!r} is no longer in the model (it was removed after wrapping); "
                            f"wrap the changed model again") from None

    def _attach(self, site: Site, fn: HookFn, handles: _Handles, counters: list[dict]) -> None:
        """Make ``fn(activation) -> replacement | None`` run at ``site`` once per forward."""
        if site.kind == "virtual":
            handles.add(site.attach(self.model, fn))
            return
        module = self._module(site.module_path)
        state = {"calls": 0}
        counters.append(state)
        want = site.call_index

        def run(value: Any, what: str) -> Any:
            i = state["calls"]
            state["calls"] += 1
            if want is None and i > 0:
                raise RuntimeError(
                    f"module '{site.module_path}' ran more than once in this forward, so site '{site.name}' "
                    f"is ambiguous; use the per-call sites '{site.name}#0', '{site.name}#1', ... "
                    f"(call hm.trace(inputs) to list them)")
            if want is not None and i != want:
                return None
            act = site.read(value) if site.read is not None else value
            if not isinstance(act, torch.Tensor):
                raise InputTypeError(f"site '{site.name}' {what} is a {type(act).__name__}, not a tensor; give the "
                                f"site a read= function that picks the tensor")
            try:
                new = fn(act)
            except Exception as e:  # the caller's own error: let it through unchanged (see _call)
                e._interp_from_hook = True  # type: ignore[attr-defined]
                raise
            if new is None:
                return None
            if new.shape != act.shape:
                raise _shape_error(site, act.shape, new, "an intervention")
            if site.write is None:
                return new
            written = site.write(value, new)
            if site.read is not None and not torch.equal(site.read(written), new):
                raise RuntimeError(f"site '{site.name}': its write function did not put the new activation in "
                                   f"place (reading it back gives other values); fix the adapter's write")
            return written

        if site.kind == "output":
            def hook(module: nn.Module, args: tuple, output: Any) -> Any:
                return run(output, "output")
            handles.add(module.register_forward_hook(hook))
        else:
            def pre_hook(module: nn.Module, args: tuple) -> Any:
                if site.read is not None:
                    return run(args, "input")
                new = run(args[0], "input")
                return None if new is None else (new, *args[1:])
            handles.add(module.register_forward_pre_hook(pre_hook))

    @contextlib.contextmanager
    def hooks(self, fns: Mapping[str, HookFn | Sequence[HookFn]]) -> Iterator[None]:
        """Low-level: run ``fn(activation) -> replacement | None`` at each named site for the block.

        Several functions at one site run in order, each seeing the previous one's replacement. All hooks
        are removed when the block exits, whatever happens inside it.
        """
        sites = {name: self._table[name] for name in fns}
        handles = _Handles()
        counters: list[dict] = []

        def reset(module: nn.Module, args: tuple) -> None:
            for c in counters:
                c["calls"] = 0

        try:
            if fns:  # nothing to attach: the model runs with no hook at all
                handles.add(self.model.register_forward_pre_hook(reset))
            for name, fn in fns.items():
                chain = list(fn) if isinstance(fn, (list, tuple)) else [fn]
                self._attach(sites[name], _chain(chain), handles, counters)
            yield
        finally:
            handles.remove()

    # ------------------------------------------------------------------ public runs
    @contextlib.contextmanager
    def intervene(self, interventions: Mapping[str, Any]) -> Iterator["HookedModel"]:
        """Apply interventions (``{site: intervention or [interventions]}``) to every forward in the block.

        An intervention is a callable ``(activation, site) -> activation`` such as
        :class:`~interp_core.interventions.Patch`; several at one site compose left to right.
        """
        fns = {}
        for name, iv in interventions.items():
            site = self._table[name]
            chain = list(iv) if isinstance(iv, (list, tuple)) else [iv]
            for c in chain:
                if not callable(c):
                    raise InputTypeError(f"intervention at site '{name}' is a {type(c).__name__}, not a callable "
                                    f"(activation, site) -> activation")
            fns[name] = [_bind(c, site) for c in chain]
        with self.hooks(fns):
            yield self

    def run_with_interventions(self, inputs: Inputs, interventions: Mapping[str, Any]) -> Any:
        """One forward on ``inputs`` with the interventions applied; returns the model's output."""
        self._ensure_traced(inputs)
        with self.intervene(interventions):
            return self._run(inputs)

    def run_with_cache(self, inputs: Inputs, sites: Sequence[str] | str | None = None,
                       pool: PoolSpec | Mapping[str, PoolSpec] = None, grad: bool = False,
                       interventions: Mapping[str, Any] | None = None) -> tuple[Any, ActivationCache]:
        """One forward on ``inputs`` recording the activations of ``sites`` (default: the adapter's).

        Args:
            pool: ``None``, ``"mean"``, ``"max"``, ``"first"``, ``"last"``, a named position (``"cls"``), a
                flat position index or one index per pos axis; or a dict ``{site: spec}``. Applied inside the
                hook, so full activations are never kept.
            grad: keep the cached tensors in the autograd graph on the path to the output (no pooling);
                otherwise the forward runs under ``torch.no_grad()``.
            interventions: applied before recording (the cache holds what flowed forward).

        Returns:
            ``(output, cache)``; ``cache[site]`` has the site's axes (``cache.axes(site)``), pos axes removed
            when pooled.
        """
        self._ensure_traced(inputs)
        if not grad and not interventions and self.fast_cache:
            fast = self._cache_traced(inputs, sites, pool)
            if fast is not None:
                return fast
        targets = self._resolve(sites)
        pools = dict(pool) if isinstance(pool, Mapping) else {s.name: pool for s in targets}
        if grad and any(pools.get(s.name) is not None for s in targets):
            raise InputError("grad=True keeps full activations in the graph; pooling would cut them off. "
                             "Pool after the forward instead (interp_core.axes.pool)")
        store: dict[str, torch.Tensor] = {}
        axes: dict[str, tuple[str, ...] | None] = {}

        def recorder(site: Site) -> HookFn:
            how = pools.get(site.name)

            def fn(act: torch.Tensor) -> torch.Tensor | None:
                site_axes = site.axes or infer_axes(act.shape)
                if grad:
                    # on a frozen model (or under no_grad) the activation is not on any autograd path yet:
                    # make the cached copy a leaf that requires grad, so the output depends on it
                    kept = act.clone() if act.requires_grad else act.detach().clone().requires_grad_(True)
                    store[site.name] = kept
                    axes[site.name] = site_axes
                    return kept.clone()  # the forward continues from a copy: in-place ops can't touch `kept`
                if how is None:
                    store[site.name] = act.detach().clone()
                    axes[site.name] = site_axes
                    return None
                if site_axes is None:
                    raise InputError(f"site '{site.name}' has unknown axes for shape {tuple(act.shape)}; "
                                     f"cannot pool. Give the adapter axes for it")
                # pooled from `act` itself: a result that is `act` or a view of it (nothing to pool, or one
                # position selected) is copied, or an in-place op later in the forward would change it
                pooled, paxes = pool_tensor(act, site_axes, how, site.pos_names)
                store[site.name] = (pooled.clone() if pooled._base is not None or pooled is act else pooled).detach()
                axes[site.name] = paxes
                return None
            return fn

        fns: dict[str, list] = {}
        for name, iv in (interventions or {}).items():
            site = self._table[name]
            chain = list(iv) if isinstance(iv, (list, tuple)) else [iv]
            fns[name] = [_bind(c, site) for c in chain]
        for s in targets:
            fns.setdefault(s.name, []).append(recorder(s))
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx, self.hooks(fns):
            out = self._run(inputs)
        missing = [s.name for s in targets if s.name not in store]
        if missing:
            raise InputError(f"sites: {missing} did not run in this forward (a module the model skips, or a branch "
                             f"this input does not take); ask for sites that run")
        return out, ActivationCache({s.name: store[s.name] for s in targets}, axes, {s.name: s for s in targets})


def _bind(intervention: Callable, site: Site) -> HookFn:
    def fn(act: torch.Tensor) -> torch.Tensor:
        s = site if site.axes is not None else site.with_(axes=infer_axes(act.shape))
        new = intervention(act, s)
        if not isinstance(new, torch.Tensor) or new.shape != act.shape:
            raise _shape_error(site, act.shape, new, type(intervention).__name__)
        return new
    return fn


def _chain(fns: Sequence[HookFn]) -> HookFn:
    if len(fns) == 1:
        return fns[0]

    def fn(act: torch.Tensor) -> torch.Tensor | None:
        current, changed = act, False
        for f in fns:
            new = f(current)
            if new is not None:
                current, changed = new, True
        return current if changed else None
    return fn
