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
"""

from __future__ import annotations

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
        leaves = {s.module_path for s in sites if s.module_path}
        method = getattr(self.model, "traced_method", "forward")
        if method is None:
            return _FAILED
        tracer = _Tracer(leaves)
        tracer.traced_func_name = method
        try:
            graph = tracer.trace(self.model)
        except Exception:  # data-dependent control flow, numpy inside forward, ...: the hooks serve
            return _FAILED
        calls: dict[str, list[fx.Node]] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls.setdefault(str(node.target), []).append(node)
        output = next(n for n in graph.nodes if n.op == "output")
        # the activations are returned without a copy unless some op of the graph works in place
        copy = any(_mutates(n, self.model) for n in graph.nodes)
        recorded = []
        for s in sites:
            if s.module_path == "":
                node = output.args[0]
                if not isinstance(node, fx.Node):
                    return _FAILED
            else:
                nodes = calls.get(s.module_path, [])
                index = s.call_index or 0
                if len(nodes) <= index or (s.call_index is None and len(nodes) != 1):
                    return _FAILED
                node = nodes[index]
            with graph.inserting_after(node):
                rec = graph.call_function(_record(pools.get(s.name), s.axes, dict(s.pos_names), copy), (node,))
            recorded.append(rec)
        graph.output((output.args[0], tuple(recorded)))
        graph.erase_node(output)
        try:
            gm = fx.GraphModule(self.model, graph)
        except Exception:
            return _FAILED
        used = {str(n.target) for n in graph.nodes if n.op == "call_module"}
        inlined = [m for path, m in self.model.named_modules()
                   if path not in used and not any(path.startswith(u + ".") for u in used)]
        _flatten_module_calls(gm)
        axes = {s.name: (s.axes if pools.get(s.name) is None or "pos" not in s.axes
                         else tuple(a for a in s.axes if a != "pos")) for s in sites}
        call = gm.forward if method == "forward" else functools.partial(self.model.traced_call, gm.forward)
        return call, inlined, axes, {s.name: s for s in sites}, fingerprint(inlined)


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
