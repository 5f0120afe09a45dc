"""Narrowing a patching cone to the rows its output reads.

A ViT classifier reads one token: timm's ``global_pool="token"`` and torchvision's ``x[:, 0]`` select the class
token after the final norm. Everything between the last block's attention and that selection acts on each
token alone (the residual adds, LayerNorm, the MLP, LayerScale), and the attention itself needs only the class
token's query (every key and value still): computing only that gives the same values for a fraction of the
work — three quarters of ``vit_tiny``'s last block. A hand-written patching loop runs every token through it;
:func:`narrow` moves each selection up the graph instead.

A selection is ``x[:, i, ...]``: the batch axis kept whole, integers or slices on the axes after it, the last
axis untouched. It moves above the operation ``p`` that produced ``x`` when every user of ``p`` makes the same
selection and ``p`` is one of:

- a module of exactly one of the types in :data:`ROW_MODULES` (``nn.Linear``, activations, ``Identity``,
  ``Dropout``; ``nn.LayerNorm`` over the last axis) or the functions ``F.linear`` and ``F.layer_norm`` over the
  last axis: the input is selected, the parameters are kept;
- an elementwise function (:data:`ELEMENTWISE`: ``+ - * /``, activations): each tensor operand of the output's
  shape (batch size aside) is selected; one that broadcasts only along the untouched trailing axes (a
  LayerScale ``gamma``, a bias) is kept; any other operand stops the move;
- ``reshape`` / ``view`` that keep the selected leading axes (merging or splitting only the axes after them),
  ``transpose`` / ``permute`` (the selection is mapped to the input's axes);
- ``F.scaled_dot_product_attention`` without mask, causal masking or dropout, selected on query positions
  only: it then runs from the selected queries (``q[:, :, i:i+1]``) to every key.

A selection that reaches a module the graph calls (a block that is itself a patched site) goes on into its
code, which the graph then inlines (in eval mode only: ``torch.fx`` bakes the flag in). Shapes come from one run
of the cone on the base values (``torch.fx`` ``ShapeProp``), and the narrowed graph is then run on the same
values and compared with the full one (``allclose`` at float rounding): if they differ, the full graph is kept
and a warning logged. Values are those of the full graph up to float rounding (a matrix product over fewer rows
may round differently), as a batched loop's are those of a one-forward-per-patch loop. Used by
:func:`interp_core.patching.patch_sweep` through :meth:`interp_core.traced.Cones.narrowed`.
"""

from __future__ import annotations

import copy
import logging
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

log = logging.getLogger("interp_core.patching")

ROW_MODULES = (nn.Linear, nn.Identity, nn.Dropout, nn.GELU, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Tanh, nn.Sigmoid,
               nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Softplus, nn.LayerNorm)
ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
               torch.div, torch.relu, torch.tanh, torch.sigmoid, F.relu, F.gelu, F.silu, F.hardswish, F.mish}
_LAST_AXIS = {F.linear, F.layer_norm}


def narrow(model: nn.Module, graph: fx.Graph, args: Sequence[Any], compile: Callable[[fx.Graph], Any],
           ) -> tuple[Any, list[nn.Module]] | None:
    """``(compile(narrowed graph), modules whose code it inlined)`` for the cone ``graph`` of ``model`` run on
    ``args`` (its site value and external values), or ``None`` where no selection moved (or the narrowed graph
    disagreed with the full one, which is then logged)."""
    if not any(n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[1], tuple)
               for n in graph.nodes):  # no selection to move (a CNN's cone): no need to run it
        return None
    try:
        return _narrow(model, graph, args, compile)
    except Exception as e:  # noqa: BLE001 - an optimisation: the full cone computes the same values
        log.warning("narrowing a patching cone failed (%s: %s); the full cone is used", type(e).__name__, e)
        return None


def _narrow(model: nn.Module, graph: fx.Graph, args: Sequence[Any], compile: Callable[[fx.Graph], Any],
            ) -> tuple[Any, list[nn.Module]] | None:
    graph = copy.deepcopy(graph)
    full = _shapes(model, graph, args)
    if full is _FAILED:
        return None
    values = dict(zip((n for n in graph.nodes if n.op == "placeholder"), args))
    moved, inlined, refused = 0, [], set()
    while (step := _move_one(model, graph, refused, values)) is not None:
        if step is True:
            moved += 1
            continue
        got = _inline(model, graph, step)
        if got is None:  # the graph is as it was: the selection stops there
            refused.add(step)
            continue
        if _shapes(model, graph, args) is _FAILED:
            return None
        inlined += got
    if not moved:
        return None
    graph.eliminate_dead_code()
    graph.lint()
    fn = compile(graph)
    if fn is None:
        return None
    with torch.no_grad():
        got = fn(*args)
    if not _close(full, got):
        log.warning("narrowing a patching cone changed its output; the full cone is used (please report this)")
        return None
    return fn, inlined


_FAILED = object()


def _shapes(model: nn.Module, graph: fx.Graph, args: Sequence[Any]) -> Any:
    """Run ``graph`` on ``args``, recording each node's shape (``node.meta["tensor_meta"]``); its output."""
    try:
        with torch.no_grad():
            return ShapeProp(fx.GraphModule(model, graph)).propagate(*args)
    except Exception:  # noqa: BLE001 - the full graph serves as it is
        return _FAILED


def _inline(model: nn.Module, graph: fx.Graph, node: fx.Node) -> list[nn.Module] | None:
    """Replace the call of a module by its traced code; the modules whose code was inlined, or ``None`` (the
    graph unchanged) where it cannot be."""
    from .traced import _inlined, _Tracer

    path = str(node.target)
    sub = model.get_submodule(path)
    if any(m.training for m in sub.modules()):
        return None
    try:
        inner = _Tracer(set()).trace(sub)
    except Exception:  # noqa: BLE001 - left as a call
        return None
    slots = [n for n in inner.nodes if n.op == "placeholder"]
    names = {str(n.target) for n in slots}
    result = next(n for n in inner.nodes if n.op == "output").args[0]
    if (any(name.startswith("*") for name in names) or len(node.args) > len(slots) or set(node.kwargs) - names
            or not isinstance(result, fx.Node)):
        return None
    env: dict[fx.Node, Any] = {}
    for i, ph in enumerate(slots):
        if i < len(node.args):
            env[ph] = node.args[i]
        elif ph.target in node.kwargs:
            env[ph] = node.kwargs[ph.target]
        elif ph.args:  # the parameter's default
            env[ph] = ph.args[0]
        else:
            return None
    with graph.inserting_before(node):
        for n in inner.nodes:
            if n.op in ("placeholder", "output"):
                continue
            env[n] = graph.node_copy(n, lambda a: env[a])
            if n.op in ("get_attr", "call_module"):
                env[n].target = f"{path}.{n.target}"
    node.replace_all_uses_with(env[result])
    graph.erase_node(node)
    return _inlined(sub, inner)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not a.is_floating_point():
            return bool(torch.equal(a, b))
        tol = 1e-4 if torch.finfo(a.dtype).bits >= 32 else 3e-2  # half precision rounds at ~1e-3 per layer
        scale = float(a.abs().max()) if a.numel() else 1.0
        return bool(torch.allclose(a, b, rtol=tol, atol=tol * max(1.0, scale) / 10))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return type(a) is type(b) and (a is b or a == b)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _selection(node: fx.Node) -> tuple | None:
    """The index of ``node`` if it is a selection ``x[:, ...]`` that keeps the batch and the last axis whole."""
    if node.op != "call_function" or node.target is not operator.getitem:
        return None
    shape = _shape(node.args[0])
    idx = node.args[1]
    if shape is None or not isinstance(idx, tuple) or not 2 <= len(idx) <= len(shape) - 1 or idx[0] != slice(None):
        return None

    def plain(v: Any) -> bool:  # an integer index (not a bool, which adds an axis) or a constant slice
        if isinstance(v, slice):
            return all(b is None or plain(b) for b in (v.start, v.stop, v.step))
        return isinstance(v, int) and not isinstance(v, bool)

    ok = all(map(plain, idx[1:]))
    return idx if ok else None


Plan = tuple[dict[fx.Node, tuple], Callable[[fx.Graph, Callable], fx.Node] | None]


def _plan(model: nn.Module, p: fx.Node, idx: tuple, values: dict[fx.Node, Any]) -> Plan | None:
    """How the selection ``idx`` of ``p``'s output moves above ``p``: the selection of each operand that gets
    one, and how to build the replacement of ``p[idx]`` from the selected operands (``None``: ``p`` itself on
    them); ``None`` where it cannot move. ``values``: the constant value of the graph's inputs (placeholders)."""
    out = _shape(p)
    if out is None:
        return None
    operands = p.all_input_nodes

    def row_input(a: Any) -> bool:  # a per-row input of a last-axis operation
        s = _shape(a)
        return s is not None and len(s) == len(out) and s[1:-1] == out[1:-1]

    if p.op == "call_module":
        m = model.get_submodule(str(p.target))
        if type(m) not in ROW_MODULES or p.kwargs or len(p.args) != 1 or not row_input(p.args[0]):
            return None
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
            return None
        return {p.args[0]: idx}, None
    if p.op == "call_method":
        return _plan_method(p, idx, out)
    if p.op != "call_function":
        return None
    if p.target in _LAST_AXIS:
        x = p.args[0] if p.args else None
        if p.target is F.layer_norm:
            ns = p.args[1] if len(p.args) > 1 else p.kwargs.get("normalized_shape")
            if not isinstance(ns, (tuple, list)) or len(ns) != 1:
                return None
        if not row_input(x) or any(a is not x and a.op != "get_attr" for a in operands):
            return None
        return {x: idx}, None
    if p.target in ELEMENTWISE:
        picked = {}
        for a in operands:
            s = _shape(a)
            if s is not None and len(s) == len(out) and s[1:] == out[1:]:
                picked[a] = idx
            elif s is None or len(s) > len(out) - len(idx):  # broadcasts along a selected axis
                return None
        return picked, None
    if p.target is F.scaled_dot_product_attention:
        return _plan_attention(p, idx, out, values)
    return None


def _plan_method(p: fx.Node, idx: tuple, out: tuple[int, ...]) -> Plan | None:
    """``reshape`` / ``view`` that keep the selected leading axes, and ``transpose`` / ``permute``."""
    x, rest = p.args[0], p.args[1:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = tuple(rest[0])
    s = _shape(x)
    if s is None or p.kwargs:
        return None
    if p.target in ("reshape", "view"):  # rows of the leading axes stay whole: select them before reshaping
        n = len(idx)
        if len(rest) != len(out) or s[:n] != out[:n]:
            return None
        sizes = [rest[0], *(len(range(*i.indices(out[d]))) for d, i in enumerate(idx) if d and isinstance(i, slice)),
                 *rest[n:]]
        return {x: idx}, lambda graph, sub: graph.call_method("reshape", (sub(x), *sizes))
    if p.target in ("transpose", "permute") and all(isinstance(d, int) for d in rest):
        perm = list(range(len(out)))  # output axis j is input axis perm[j]
        if p.target == "transpose" and len(rest) == 2:
            a, b = (d % len(out) for d in rest)
            perm[a], perm[b] = b, a
        elif p.target == "permute" and sorted(d % len(out) for d in rest) == perm:
            perm = [d % len(out) for d in rest]
        else:
            return None
        full = [*idx, *[slice(None)] * (len(out) - len(idx))]
        inner = [slice(None)] * len(out)
        for j, i in enumerate(full):
            inner[perm[j]] = i
        while len(inner) > 2 and inner[-1] == slice(None):
            inner.pop()
        kept = [perm[j] for j in range(len(out)) if not isinstance(full[j], int)]  # surviving axes, input order
        order = [sorted(kept).index(a) for a in kept]

        def build(graph: fx.Graph, sub: Callable) -> fx.Node:
            y = sub(x)
            return y if order == sorted(order) else graph.call_method("permute", (y, *order))
        return {x: tuple(inner)}, build
    return None


def _plan_attention(p: fx.Node, idx: tuple, out: tuple[int, ...], values: dict[fx.Node, Any]) -> Plan | None:
    """Query rows of ``scaled_dot_product_attention`` (no mask, not causal, no dropout): attend from the
    selected queries only, to every key."""
    kw = p.kwargs
    value = lambda a: values.get(a, a) if isinstance(a, fx.Node) else a  # noqa: E731
    if (len(out) != 4 or out[2] == 1 or len(idx) != 3 or idx[1] != slice(None) or len(p.args) != 3
            or set(kw) - {"attn_mask", "dropout_p", "is_causal", "scale"} or value(kw.get("attn_mask")) is not None
            or value(kw.get("is_causal", False)) is not False or value(kw.get("dropout_p", 0.0)) != 0.0):
        return None
    q, i = p.args[0], idx[2]
    rows = slice(i, i + 1 or None) if isinstance(i, int) else i  # an integer keeps its axis, then is taken

    def build(graph: fx.Graph, sub: Callable) -> fx.Node:
        new = graph.call_function(p.target, (sub(q), *p.args[1:]), dict(kw))
        return graph.call_function(operator.getitem, (new, (slice(None), slice(None), 0))) if isinstance(i, int) \
            else new
    return {q: (slice(None), slice(None), rows)}, build


def _move_one(model: nn.Module, graph: fx.Graph, refused: set[fx.Node], values: dict[fx.Node, Any],
              ) -> bool | fx.Node | None:
    """Move one selection above the operation that produced its input (``True``); or the call of a module
    (not a torch.nn layer) that a selection reads, to inline; ``None`` where nothing can move."""
    for sel in reversed(list(graph.nodes)):
        idx = _selection(sel)
        if idx is None:
            continue
        p = sel.args[0]
        users = list(p.users)
        if any(_selection(u) != idx for u in users):
            continue
        plan = _plan(model, p, idx, values)
        if plan is None:
            if p.op == "call_module" and p not in refused and not _layer(model, p):
                return p
            continue
        selects, build = plan
        with graph.inserting_before(p):
            selected = {a: graph.call_function(operator.getitem, (a, i)) for a, i in selects.items()}

            def sub(a: Any) -> Any:
                return selected.get(a, a)
            new = build(graph, sub) if build else graph.create_node(p.op, p.target, fx.map_arg(p.args, sub),
                                                                     fx.map_arg(p.kwargs, sub))
        for u in users:
            u.replace_all_uses_with(new)
            graph.erase_node(u)
        graph.erase_node(p)
        return True
    return None


def _layer(model: nn.Module, node: fx.Node) -> bool:
    """Whether the module ``node`` calls is one ``torch.fx`` keeps as a call (a torch.nn layer)."""
    return fx.Tracer().is_leaf_module(model.get_submodule(str(node.target)), str(node.target))
