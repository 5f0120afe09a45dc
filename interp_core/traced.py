"""The traced fast path of :meth:`~interp_core.HookedModel.run_with_cache`.

At batch 1 a small policy's forward takes ~30 us, less than setting up and removing hooks, so no hook-based
cache gets near a bare forward there. Where the model traces with ``torch.fx``, the hooked model builds once per
(model, sites, pooling) a graph that returns the output plus the requested activations — each copied (or pooled)
right where it is produced, as the hooks would — keeps it, and calls it per forward.

Activations are returned as the graph computed them — no copy — unless some operation of the graph works in
place (``ReLU(inplace=True)``, ``out += x``, ``x.add_(...)``), in which case each is copied where it is produced,
as the hooks do. It is used only when it gives exactly what the hooks give (tested bit for bit): every asked
site is a plain module output (no virtual sites, no read/write functions), no gradients and no interventions
are asked for, every module whose code the graph inlines is in eval mode (``torch.fx`` bakes ``self.training``
into the graph), no forward override is active, and no hook is registered on any module or globally (the graph
calls modules' ``forward`` directly, as ``Module.__call__`` does when there are none). Anything else, and any
model that does not trace, takes the hook path.

A model whose ``forward`` first turns its arguments into tensors (an RL policy wrapper taking numpy
observations) does not trace as a whole, but it can offer its tensor part: an attribute ``traced_method``
naming a method on tensors only (traced instead of ``forward``; ``None``: do not trace), and
``traced_call(fn, *args, **kwargs)``, which prepares ``forward``'s arguments and calls ``fn`` on them — the
graph built from that method, here; the method itself in ``forward``, so the two paths cannot drift apart.

A graph replays the tensor operations the model performed when it was traced: Python side effects of
``forward`` (a call counter, a list it appends to) are not replayed. For such a model set
``hm.fast_cache = False`` and patch with ``reuse_prefix=False``.
"""

from __future__ import annotations

import copy
import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from .axes import pool as pool_tensor

_FAILED = object()


def _record(how: Any, axes: tuple[str, ...] | None, pos_names: dict[str, int], copy: bool) -> Callable[[Any], Any]:
    def record(act: torch.Tensor) -> torch.Tensor:  # the graph runs under no_grad: nothing to detach
        if how is None:
            return act.clone() if copy else act
        pooled, _ = pool_tensor(act, axes, how, pos_names)
        return pooled.clone() if copy and (pooled._base is not None or pooled is act) else pooled
    return record


_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift,
                      operator.irshift, operator.imatmul, operator.setitem}


def _mutates(node: fx.Node, root: nn.Module) -> bool:
    """Whether a graph node may write into one of its inputs (then recorded activations must be copies)."""
    if node.op == "call_module":
        return bool(getattr(root.get_submodule(str(node.target)), "inplace", False))
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return node.target in _INPLACE_FUNCTIONS or (name.endswith("_") and not name.endswith("__")) or bool(
            node.kwargs.get("inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).endswith("__")
    return False


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


class TracedCache:
    """``(graph call, inlined modules, axes, sites, fingerprint)`` per (sites, pooling) key, built on first use;
    ``None`` where the model does not trace or a site is not a node of the graph."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.graphs: dict[Any, Any] = {}

    def get(self, sites: Sequence[Any], pools: dict[str, Any], fresh: bool = False,
            ) -> tuple[Callable, list[nn.Module], dict, dict, list] | None:
        """The graph for ``sites``; ``fresh=True`` traces it again (the model changed since it was built)."""
        key = tuple((s.name, repr(pools.get(s.name))) for s in sites)
        got = self.graphs.get(key)
        if got is None or (fresh and got is not _FAILED):
            got = self._build(sites, pools)
            self.graphs[key] = got
        return None if got is _FAILED else got

    def _build(self, sites: Sequence[Any], pools: dict[str, Any]) -> Any:
        if any(s.kind != "output" or s.read is not None or s.write is not None for s in sites):
            return _FAILED
        traced = _trace(self.model, {s.module_path for s in sites if s.module_path})
        if traced is None:
            return _FAILED
        graph, method = traced
        output = next(n for n in graph.nodes if n.op == "output")
        # the activations are returned without a copy unless some op of the graph works in place
        copy = any(_mutates(n, self.model) for n in graph.nodes)
        recorded = []
        for s in sites:
            node = _site_node(graph, s)
            if node is None:
                return _FAILED
            with graph.inserting_after(node):
                rec = graph.call_function(_record(pools.get(s.name), s.axes, dict(s.pos_names), copy), (node,))
            recorded.append(rec)
        graph.output((output.args[0], tuple(recorded)))
        graph.erase_node(output)
        inlined = _inlined(self.model, graph)
        gm = _module(self.model, graph)
        if gm is None:
            return _FAILED
        axes = {s.name: (s.axes if pools.get(s.name) is None or "pos" not in s.axes
                         else tuple(a for a in s.axes if a != "pos")) for s in sites}
        return _entry(self.model, gm, method), inlined, axes, {s.name: s for s in sites}, fingerprint(inlined)


def _trace(model: nn.Module, leaves: set[str]) -> tuple[fx.Graph, str] | None:
    """The graph of the model's ``forward`` (or its ``traced_method``) with ``leaves`` kept as module calls, and
    the method's name; ``None`` where it does not trace."""
    method = getattr(model, "traced_method", "forward")
    if method is None:
        return None
    tracer = _Tracer(leaves)
    tracer.traced_func_name = method
    try:
        return tracer.trace(model), method
    except Exception:  # data-dependent control flow, numpy inside forward, ...: the hooks serve
        return None


def _site_node(graph: fx.Graph, site: Any) -> fx.Node | None:
    """The node whose value is ``site`` (its module's output; the graph's output for the root)."""
    if site.module_path == "":
        node = next(n for n in graph.nodes if n.op == "output").args[0]
        return node if isinstance(node, fx.Node) else None
    nodes = [n for n in graph.nodes if n.op == "call_module" and str(n.target) == site.module_path]
    index = site.call_index or 0
    if len(nodes) <= index or (site.call_index is None and len(nodes) != 1):
        return None
    return nodes[index]


def _module(model: nn.Module, graph: fx.Graph) -> fx.GraphModule | None:
    """The graph as a module calling each module's ``forward`` directly (the graph's call targets are renamed)."""
    try:
        gm = fx.GraphModule(model, graph)
    except Exception:
        return None
    _flatten_module_calls(gm)
    return gm


def _inlined(model: nn.Module, graph: fx.Graph) -> list[nn.Module]:
    """The modules whose code the graph inlines (every module that is not a called one or inside one)."""
    used = {str(n.target) for n in graph.nodes if n.op == "call_module"}
    return [m for path, m in model.named_modules() if path not in used and not any(path.startswith(u + ".")
                                                                                   for u in used)]


def _entry(model: nn.Module, gm: fx.GraphModule, method: str) -> Callable:
    """How to call the graph with ``forward``'s arguments."""
    return gm.forward if method == "forward" else functools.partial(model.traced_call, gm.forward)


class Cones:
    """Graphs for exact patching of several sites (:func:`site_cones`).

    ``record(*forward's arguments) -> (output, site values, external values)`` runs the whole model once;
    ``rest[site](site value, *its external values) -> output`` then computes only the nodes downstream of that
    site — its value replaced by what is passed — with every other value they read (a skip connection from
    before the site, a second head that does not depend on it) taken from the recorded run
    (``uses[site]``: the indices of its external values). A patched run thus does the work of a hand-written
    loop over the modules after the site, without the modules' ``__call__`` machinery, or less once
    :meth:`narrowed` has cut it to the rows the output reads."""

    def __init__(self, model: nn.Module, record: Callable, rest: dict[str, Callable], graphs: dict[str, fx.Graph],
                 uses: dict[str, list[int]], inlined: list[nn.Module], baked: list[tuple]):
        self.model, self.record, self.rest, self.uses = model, record, rest, uses
        self.inlined, self.baked = inlined, baked
        self.graphs = graphs  # each site's cone before compilation, for :meth:`narrowed`
        self.modules = list(model.modules())  # for the hook check (:func:`usable`)
        self._narrowed: dict[tuple, Callable] = {}

    def narrowed(self, site: str, args: Sequence[Any]) -> Callable:
        """``rest[site]`` narrowed to the rows the output reads (:func:`interp_core.narrow.narrow`), built for
        the base run's ``args`` (site value, external values) on first use and kept per their shapes."""
        key = (site, *(tuple(a.shape) if isinstance(a, torch.Tensor) else a for a in args))
        fn = self._narrowed.get(key)
        if fn is None:
            from .narrow import narrow

            got = narrow(self.model, self.graphs[site], args,
                         lambda g: getattr(_module(self.model, g), "forward", None))
            fn = self._narrowed[key] = got[0] if got else self.rest[site]
            if got:  # its code is now baked in too: the same checks apply to it (:func:`usable`, :func:`unchanged`)
                self.inlined += got[1]
                self.baked += fingerprint(got[1])
        return fn


def site_cones(model: nn.Module, sites: Sequence[Any]) -> Cones | None:
    """:class:`Cones` of ``sites`` (module outputs or inputs, each module run once, none inside another); ``None`` where
    the model does not trace, works in place anywhere (a recorded value could change after it is read), or a
    site is not one node of the graph."""
    if any(s.kind not in ("output", "input") or s.read is not None or s.write is not None or not s.module_path
           for s in sites):
        return None
    traced = _trace(model, {s.module_path for s in sites})
    if traced is None:
        return None
    graph, method = traced
    calls = [_site_node(graph, s) for s in sites]
    if any(n is None for n in calls) or any(_mutates(n, model) for n in graph.nodes):
        return None
    # the node holding each site's value: the module's output, or (an "input" site) its first argument, which
    # the patch replaces for that module only (other readers of the same value keep the recorded one)
    values = [c if s.kind == "output" else c.args[0] if c.args else None for s, c in zip(sites, calls)]
    if any(not isinstance(v, fx.Node) for v in values) or any(
            s.kind == "input" and (c.args.count(v) != 1 or v in c.kwargs.values())
            for s, c, v in zip(sites, calls, values)):  # the patch replaces that one argument
        return None
    output = next(n for n in graph.nodes if n.op == "output")
    externals: dict[fx.Node, int] = {}
    cones, uses = {}, {}
    try:
        for s, call, value in zip(sites, calls, values):
            down = {call}
            for n in graph.nodes:
                if n.op != "output" and n not in down and any(a in down for a in n.all_input_nodes):
                    down.add(n)
            again = down - {call} if s.kind == "output" else down  # computed again on the patched value

            def reads(n: fx.Node) -> bool:  # whether the cone reads n's recorded value
                return any(u is output or (u in again and not (u is call and n is value)) for u in n.users)

            needed = [n for n in graph.nodes if n not in again and n is not call and n.op not in ("output", "get_attr")
                      and reads(n)]
            cone = fx.Graph()
            site_value = cone.placeholder("site_value")
            env = {n: cone.placeholder(f"external_{i}") for i, n in enumerate(needed)}
            if s.kind == "output":
                env[call] = site_value
            for n in graph.nodes:
                if n.op == "get_attr" and any(u in down or u is output for u in n.users):
                    env[n] = cone.node_copy(n, lambda a: env[a])
                elif n is call and s.kind == "input":
                    env[n] = cone.node_copy(n, lambda a: site_value if a is value else env[a])
                elif n in down and n is not call:
                    env[n] = cone.node_copy(n, lambda a: env[a])
            cone.output(fx.map_arg(output.args[0], lambda a: env[a]))
            cones[s.name] = cone
            uses[s.name] = [externals.setdefault(n, len(externals)) for n in needed]
    except KeyError:  # a value the cone reads that is neither downstream nor recorded
        return None
    inlined = _inlined(model, graph)
    graph.output((output.args[0], tuple(values), tuple(externals)))
    graph.erase_node(output)
    record = _module(model, graph)
    rest = {name: _module(model, copy.deepcopy(g)) for name, g in cones.items()}  # compiling renames targets
    if record is None or any(r is None for r in rest.values()):
        return None
    return Cones(model, _entry(model, record, method), {k: r.forward for k, r in rest.items()}, cones, uses, inlined,
                 fingerprint(inlined))


def _flatten_module_calls(gm: fx.GraphModule) -> None:
    """Call each module's ``forward`` through one plain instance attribute (``self._m3.forward(x)``) instead of
    ``nn.Module``'s ``__getattr__`` chain and ``__call__`` (``getattr(self.policy.net, "0")(x)``). With no hook
    registered anywhere (which :func:`usable` checks before every call) ``Module.__call__`` does exactly that, so
    the results are the same, a microsecond per module cheaper at batch 1. The aliases live in the instance
    ``__dict__`` only (not submodules: ``state_dict`` and ``modules()`` are unchanged); ``forward`` is looked up
    per call, so a later ``module.forward = ...`` is honoured."""
    for i, node in enumerate(n for n in gm.graph.nodes if n.op == "call_module"):
        alias = f"_m{i}"
        gm.__dict__[alias] = gm.get_submodule(str(node.target))
        node.target = f"{alias}.forward"
    gm.recompile()


def fingerprint(inlined: Sequence[nn.Module]) -> list[tuple]:
    """What the graph baked in from the modules whose code it inlines: their attributes, submodules, parameters
    and buffers, by identity. A module replaced (``model.fc = nn.Linear(...)``), a parameter swapped for
    another, a setting changed (``vit.global_pool = "avg"``) makes :func:`unchanged` false: the graph is then
    stale and is built again. (Values changed in place, ``weight.mul_(2)``, need nothing: the graph reads the
    same tensors; and the modules it calls read their own attributes live.)"""
    return [(m, dict(m.__dict__), dict(m._modules), tuple(map(id, m._parameters.values())),
             tuple(map(id, m._buffers.values()))) for m in inlined]


def unchanged(baked: list[tuple]) -> bool:
    """Whether the modules still hold what :func:`fingerprint` recorded (dict comparisons short-cut on
    identical values, so this costs well under a microsecond per module)."""
    try:
        for m, attrs, mods, params, bufs in baked:
            if m.__dict__ != attrs or m._modules != mods:
                return False
            if (params or m._parameters) and tuple(map(id, m._parameters.values())) != params:
                return False
            if (bufs or m._buffers) and tuple(map(id, m._buffers.values())) != bufs:
                return False
    except (RuntimeError, TypeError, ValueError):  # an attribute swapped for a tensor that does not compare
        return False
    return True


def usable(model: nn.Module, modules: Sequence[nn.Module], inlined: Sequence[nn.Module]) -> bool:
    """Whether the graph computes exactly what the model would now: no forward override, no hook anywhere (the
    graph calls modules' ``forward`` directly and skips inlined modules' calls), and eval mode in every module
    whose code the graph inlines (``torch.fx`` bakes ``self.training`` into the graph; modules the graph calls
    read their own flag)."""
    from torch.nn.modules import module as module_mod

    from .forwards import _REGISTRY

    if (len(_REGISTRY) or module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks
            or module_mod._global_backward_hooks or module_mod._global_backward_pre_hooks):
        return False
    for m in modules:
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return False
    for m in inlined:
        if m.training:
            return False
    return True
