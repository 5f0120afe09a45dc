"""Narrowing a patching cone to the rows its output reads.

A ViT classifier reads one token: timm's ``global_pool="token"`` and torchvision's ``x[:, 0]`` select the class
token after the final norm. Everything between the last attention and that selection acts on each token alone
(the residual adds, LayerNorm, the MLP, LayerScale), so computing it for the selected token only gives the same
values for a fraction of the work: two thirds of ``vit_tiny``'s last block. A hand-written patching loop runs
every token through it; :func:`narrow` moves each selection up the graph instead.

A selection is ``x[:, i, ...]``: the batch axis kept whole, integers or slices on the axes after it, the last
axis untouched. It moves above the operation ``p`` that produced ``x`` when every user of ``p`` makes the same
selection and ``p`` is one of:

- a module of exactly one of the types in :data:`ROW_MODULES` (``nn.Linear``, activations, ``Identity``,
  ``Dropout``; ``nn.LayerNorm`` over the last axis) or the functions ``F.linear`` and ``F.layer_norm`` over the
  last axis: the input is selected, the parameters are kept;
- an elementwise function (:data:`ELEMENTWISE`: ``+ - * /``, activations): each tensor operand of the output's
  shape (batch size aside) is selected; one that broadcasts only along the untouched trailing axes (a
  LayerScale ``gamma``, a bias) is kept; any other operand stops the move.

Shapes come from one run of the cone on the base values (``torch.fx`` ``ShapeProp``), and the narrowed graph is
then run on the same values and compared with the full one (``allclose`` at float rounding): if they differ,
the full graph is kept. Values are those of the full graph up to float rounding (a matrix product over fewer
rows may round differently), as a batched loop's are those of a one-forward-per-patch loop.
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
    ``args``, or ``None`` where no selection moved (or the narrowed graph disagreed with the full one, which is
    then logged). A selection that reaches a module the graph calls (a block that is itself a patched site)
    goes on into its code, which the graph then inlines (only in eval mode: ``torch.fx`` bakes the flag in)."""
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
    moved, inlined, refused = 0, [], set()
    while (step := _move_one(model, graph, refused)) is not None:
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


def _plan(model: nn.Module, p: fx.Node, idx: tuple) -> set[fx.Node] | None:
    """The operands of ``p`` to select when the selection ``idx`` moves above it; ``None`` where it cannot."""
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
        return {p.args[0]}
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
        return {x}
    if p.target in ELEMENTWISE:
        picked = set()
        for a in operands:
            s = _shape(a)
            if s is not None and len(s) == len(out) and s[1:] == out[1:]:
                picked.add(a)
            elif s is None or len(s) > len(out) - len(idx):  # broadcasts along a selected axis
                return None
        return picked
    return None


def _move_one(model: nn.Module, graph: fx.Graph, refused: set[fx.Node]) -> bool | fx.Node | None:
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
        picked = _plan(model, p, idx)
        if picked is None:
            if p.op == "call_module" and p not in refused and not _layer(model, p):
                return p
            continue
        with graph.inserting_before(p):
            selected = {a: graph.call_function(operator.getitem, (a, idx)) for a in picked}
            new = graph.create_node(p.op, p.target, fx.map_arg(p.args, lambda a: selected.get(a, a)),
                                    fx.map_arg(p.kwargs, lambda a: selected.get(a, a)))
        for u in users:
            u.replace_all_uses_with(new)
            graph.erase_node(u)
        graph.erase_node(p)
        return True
    return None


def _layer(model: nn.Module, node: fx.Node) -> bool:
    """Whether the module ``node`` calls is one ``torch.fx`` keeps as a call (a torch.nn layer)."""
    return fx.Tracer().is_leaf_module(model.get_submodule(str(node.target)), str(node.target))
