"""A computational graph over sites, on which any single edge can be patched.

**Nodes** are components that write to, or read from, other components: a ViT's ``embed``, each attention
head (``blocks.{i}.attn.z[h]``), each MLP (``blocks.{i}.mlp.out``) and ``logits``; a plain sequential CNN
or policy MLP's layers (``conv2``, ``policy.0``) or unit / channel groups of them (``conv2[0:4]``), its
``input`` and its output layer. **Edges** are the paths along which a sender's output reaches a receiver's
input: in a residual network every upstream writer to every downstream reader (the residual stream at a
reader is the sum of all earlier writes), in a plain sequential model layer to the next layer.

**Edge patching** (the one primitive every method here uses). A receiver ``r``'s input is the sum of its
senders' writes, ``x_r = sum_s w_s (+ constants)``. With a mask ``M[e]`` over edges (1 = keep, 0 = patch)
and source writes ``w'`` (a corrupted run's, or their mean over a data set), the patched run feeds

    x_r = sum_s w_s + sum_{s -> r} (1 - M[s -> r]) * (w'_s - w_s)

to ``r`` only (``w_s`` being the sender's value *in this run*, so upstream patches propagate), while every
other receiver of ``s`` sees the unpatched write. The mask may be fractional (EAP-IG's interpolation) and
may differ per row (many edge patches stacked along the batch axis share one forward). Gradients with
respect to a zero tensor added to each receiver's input give every edge's attribution at once
(:mod:`interp_core.circuits.scoring`).

Graphs come from :func:`build_graph`: an adapter may supply one (a ``circuit_graph(hooked_model, **kw)``
method), timm ViTs get a :class:`ViTGraph`, recurrent policies unrolled over ``steps`` a
:class:`~.recurrent.RecurrentGraph`, anything else a :class:`SequentialGraph` over its ``nn.Linear`` / ``nn.Conv*``
layers in forward order (or the ``layers`` given: module paths or site names, e.g. a ResNet's stages).
A sequential graph is checked to be a chain on the first inputs it sees (each layer's input determined by
the previous layer's output alone); layers bypassed by a skip connection or a parallel branch are refused
rather than patched wrongly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..boundary import as_hooked, as_inputs
from ..errors import InputError, InputTypeError, InterpError
from ..hooked import HookedModel, call_model

__all__ = ["Node", "CircuitGraph", "ViTGraph", "SequentialGraph", "build_graph", "Writes",
           "Source"]

Writes = dict[str, torch.Tensor]  # the senders' writes of one run, every tensor with the batch axis first


@dataclass(frozen=True)
class Node:
    """A component of the graph.

    Attributes:
        name: unique name: the site, with a head index or a unit range in brackets (``blocks.0.attn.z[1]``,
            ``conv2[0:4]``).
        site: the suite's site the node lives at (``blocks.0.attn.z``, ``conv2``, ``input``).
        layer: topological depth (edges go from lower to higher layers).
        role: ``"input"`` (sends only), ``"component"`` (both) or ``"output"`` (receives only).
        index: the head index or ``(start, stop)`` unit range, ``None`` for the whole site.
    """

    name: str
    site: str
    layer: int
    role: str
    index: Any = None


@dataclass
class Source:
    """Source writes and per-edge coefficients ``[rows, E]`` (1 = the edge carries the source's write)."""

    writes: Writes
    coef: torch.Tensor


def _map_tensors(x: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: _map_tensors(v, fn) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_map_tensors(v, fn) for v in x)
    return x


def edge_name(edge: tuple[str, str]) -> str:
    return f"{edge[0]} -> {edge[1]}"


class CircuitGraph:
    """Nodes, edges and an edge-patching forward (module docstring). Subclasses define ``_forward``."""

    kind = "graph"

    def __init__(self, hm: HookedModel, nodes: Sequence[Node], edges: Sequence[tuple[str, str]]):
        self.hm = hm
        self.nodes = list(nodes)
        self.edges = list(edges)
        self.node_index = {n.name: i for i, n in enumerate(self.nodes)}
        self.edge_index = {e: i for i, e in enumerate(self.edges)}
        self.by_name = {n.name: n for n in self.nodes}

    # ------------------------------------------------------------------ description
    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def edge_names(self) -> list[str]:
        return [edge_name(e) for e in self.edges]

    def incoming(self, receiver: str) -> list[tuple[str, str]]:
        return [e for e in self.edges if e[1] == receiver]

    def outgoing(self, sender: str) -> list[tuple[str, str]]:
        return [e for e in self.edges if e[0] == sender]

    @property
    def output(self) -> str:
        return next(n.name for n in self.nodes if n.role == "output")

    def describe(self) -> dict[str, Any]:
        """The graph as JSON types: nodes (name, site, layer, role) and edges."""
        return {"kind": self.kind,
                "nodes": [{"name": n.name, "site": n.site, "layer": n.layer, "role": n.role} for n in self.nodes],
                "edges": [list(e) for e in self.edges]}

    def mask(self, edges: Sequence[Sequence[str]] | None, argument: str = "edges") -> torch.Tensor:
        """``[E]`` mask: 1 for the given edges (the circuit), 0 elsewhere."""
        m = torch.zeros(self.n_edges)
        for e in edges or ():
            key = (str(e[0]), str(e[1]))
            if key not in self.edge_index:
                close = [edge_name(x) for x in self.edges if x[0] == key[0] or x[1] == key[1]][:5]
                raise InputError(f"{argument}: {edge_name(key)!r} is not an edge of this graph "
                                 f"({self.n_edges} edges; edges sharing an end: {close})")
            m[self.edge_index[key]] = 1.0
        return m

    # ------------------------------------------------------------------ runs
    def record(self, inputs: Any) -> tuple[Any, Writes]:
        """One unpatched forward (no grad): the model's output and every sender's write."""
        with torch.no_grad():
            out, writes, _ = self.run(inputs)
        return out, {k: v.detach() for k, v in writes.items()}

    def run(self, inputs: Any, sources: Sequence[Source] = (), leaves: bool = False,
            call: Callable[[Any], Any] | None = None) -> tuple[Any, Writes, dict[str, torch.Tensor]]:
        """The edge-patched forward (module docstring).

        Args:
            inputs: one batch of model inputs, ``rows`` examples.
            sources: source writes (batch ``rows`` or 1) with per-edge coefficients ``[rows, E]`` or ``[E]``.
            leaves: add a zero tensor requiring grad to each receiver's input; returned by receiver group,
                so ``autograd.grad(metric, leaves)`` gives ``d metric / d x_r`` for every receiver.
            call: the function that runs the model's own forward (default: the model).

        Returns:
            ``(output, writes, leaves)``; ``writes`` are this run's sender writes.
        """
        device = self.hm.device
        srcs = [Source(s.writes, (s.coef if s.coef.dim() == 2 else s.coef[None]).to(device)) for s in sources]
        try:
            return self._forward(inputs, srcs, leaves, call)
        except InterpError:
            raise
        except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as e:  # timm asserts on shapes
            from ..boundary import describe_inputs

            raise InputError(f"inputs: {type(self.hm.model).__name__} failed on {describe_inputs(inputs)} in the "
                             f"circuit graph's forward: {e}; check the input's shape and dtype against what the "
                             f"model expects") from e

    def _forward(self, inputs: Any, sources: list[Source], leaves: bool,
                 call: Callable[[Any], Any] | None) -> tuple[Any, Writes, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def edge_dot(self, diff: Writes, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[E]``: per edge ``sum_{batch, entries} diff_s * grad_r`` (sender write difference times the
        gradient at the receiver's input)."""
        raise NotImplementedError


def _coef_rows(coef: torch.Tensor, idx: torch.Tensor, rows: int) -> torch.Tensor:
    """``coef[:, idx]`` with ``idx`` holding -1 where there is no edge (coefficient 0); rows broadcast."""
    idx = idx.to(coef.device)
    safe = idx.clamp(min=0)
    c = coef[:, safe.reshape(-1)].reshape(coef.shape[0], *idx.shape)
    c = c * (idx >= 0).to(c.dtype)
    return c.expand(rows, *idx.shape) if c.shape[0] == 1 else c


# ---------------------------------------------------------------------------------------------- ViT
def is_timm_vit(module: nn.Module) -> bool:
    """A timm ``VisionTransformer`` whose blocks are plain timm ``Block``s with plain ``Attention``."""
    try:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block, VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency of vision only
        return False
    if not isinstance(module, VisionTransformer):
        return False
    return all(type(b) is Block and type(b.attn) is Attention for b in module.blocks)


class ViTGraph(CircuitGraph):
    """The residual graph of a timm ``VisionTransformer``.

    Nodes: ``embed`` (tokens after position embedding and ``norm_pre``), every head
    ``blocks.{i}.attn.z[h]`` — its write is ``ls1(z_h @ W_O[:, h*F:(h+1)*F].T)`` ``[B, N, D]`` — every MLP
    ``blocks.{i}.mlp.out`` and ``logits`` (``forward_head(norm(x))``). Edges: every writer to every later
    reader (heads of block ``i`` read ``blocks.{i}.resid_pre``, its MLP reads ``resid_mid``). A head's
    receiver input is its q/k/v input (the input of ``norm1``), one per head, so one head's input can be
    patched while the other heads of the block see the original (the forward computes all heads of a
    block from a ``[B, H, N, D]`` stack of inputs). The forward is rebuilt from the model's own modules and
    checked against the model's output when the graph is built.
    """

    kind = "vit"

    def __init__(self, hm: HookedModel, example_input: Any = None):
        model = hm.model
        if not is_timm_vit(model):
            raise InputTypeError("model: ViTGraph needs a timm VisionTransformer built from timm Block / "
                                 "Attention; for other models use build_graph(model, layers=[...])")
        self.model = model
        blocks = list(model.blocks)
        self.n_heads = blocks[0].attn.num_heads if blocks else 0
        nodes = [Node("embed", "embed", 0, "input")]
        for i, b in enumerate(blocks):
            if not isinstance(b.attn.norm, nn.Identity) or getattr(b.attn, "gate", None) is not None:
                raise InputTypeError(f"model: block {i}'s attention has a norm or gate after the heads; ViTGraph "
                                     f"decomposes only plain timm attention")
            for h in range(b.attn.num_heads):
                nodes.append(Node(f"blocks.{i}.attn.z[{h}]", f"blocks.{i}.attn.z", 2 * i + 1, "component", h))
            nodes.append(Node(f"blocks.{i}.mlp.out", f"blocks.{i}.mlp.out", 2 * i + 2, "component"))
        nodes.append(Node("logits", "logits", 2 * len(blocks) + 1, "output"))
        self.senders = [n.name for n in nodes if n.role != "output"]
        edges = [(s.name, r.name) for r in nodes if r.role != "input" for s in nodes
                 if s.role != "output" and s.layer < r.layer]
        super().__init__(hm, nodes, edges)
        # receiver groups in forward order: (key, receiver names); idx[r, s] = edge id or -1
        self.groups: list[tuple[str, list[str]]] = []
        for i, b in enumerate(blocks):
            self.groups.append((f"blocks.{i}.heads", [f"blocks.{i}.attn.z[{h}]" for h in range(b.attn.num_heads)]))
            self.groups.append((f"blocks.{i}.mlp", [f"blocks.{i}.mlp.out"]))
        self.groups.append(("logits", ["logits"]))
        self._idx = {}
        for key, recv in self.groups:
            idx = torch.full((len(recv), len(self.senders)), -1, dtype=torch.long)
            for a, r in enumerate(recv):
                for j, s in enumerate(self.senders):
                    e = self.edge_index.get((s, r))
                    if e is not None:
                        idx[a, j] = e
            self._idx[key] = idx
        self._check(example_input)

    def _check(self, example_input: Any) -> None:
        x = example_input
        if x is None:
            x = self.hm.adapter.example_input(self.model) if hasattr(self.hm.adapter, "example_input") else None
        if x is None:
            return
        x = x.to(next(self.model.parameters()).dtype) if isinstance(x, torch.Tensor) else x
        with torch.no_grad(), self.hm.analysis():
            want = call_model(self.model, x)
            got, _, _ = self.run(x)
        if not torch.allclose(got, want, atol=1e-4, rtol=1e-3):
            raise InputTypeError(f"model: the head-by-head forward of {type(self.model).__name__} differs from "
                                 f"its own (max |diff| {float((got - want).abs().max()):.3g}); this ViT variant is "
                                 f"not supported by ViTGraph")

    def _delta(self, key: str, cur: list[torch.Tensor], sources: list[Source], rows: int) -> torch.Tensor | None:
        """Patch term ``[rows, R, N, D]`` of the receivers of group ``key`` (None: nothing patched)."""
        if not sources:
            return None
        S = len(cur)
        idx = self._idx[key][:, :S]
        stack = torch.stack(cur, 1)  # [B, S, N, D]
        total = None
        for src in sources:
            c = _coef_rows(src.coef, idx, rows).to(stack.dtype)  # [rows, R, S]
            if not bool(c.any()):
                continue
            w = src.writes["stack"][:, :S]
            d = torch.einsum("brs,bsnd->brnd", c, w - stack)
            total = d if total is None else total + d
        return total

    def _forward(self, inputs: Any, sources: list[Source], leaves: bool,
                 call: Callable[[Any], Any] | None) -> tuple[Any, Writes, dict[str, torch.Tensor]]:
        m = self.model
        x = m.patch_embed(inputs)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        rows = x.shape[0]
        cur = [x]
        resid = x
        grads: dict[str, torch.Tensor] = {}

        def leaf(key: str, shape: tuple) -> torch.Tensor:
            t = torch.zeros(shape, dtype=x.dtype, device=x.device, requires_grad=True)
            grads[key] = t
            return t

        for i, b in enumerate(m.blocks):
            a = b.attn
            H, F = a.num_heads, a.head_dim
            key = f"blocks.{i}.heads"
            xin = resid[:, None].expand(rows, H, *resid.shape[1:])
            d = self._delta(key, cur, sources, rows)
            if d is not None:
                xin = xin + d
            if leaves:
                xin = xin + leaf(key, tuple(xin.shape))
            ln = b.norm1(xin)  # [B, H, N, D]
            W = a.qkv.weight.reshape(3, H, F, -1)
            bias = a.qkv.bias.reshape(3, H, F) if a.qkv.bias is not None else None
            qkv = [torch.einsum("bhnd,hfd->bhnf", ln, W[j]) + (bias[j][None, :, None] if bias is not None else 0)
                   for j in range(3)]
            q, k, v = a.q_norm(qkv[0]), a.k_norm(qkv[1]), qkv[2]
            pattern = ((q * a.scale) @ k.transpose(-2, -1)).softmax(-1)
            pattern = a.attn_drop(pattern)
            z = pattern @ v  # [B, H, N, F]
            WO = a.proj.weight.reshape(-1, H, F)  # [D, H, F]
            head_w = b.ls1(torch.einsum("bhnf,dhf->bhnd", z, WO))
            cur.extend(head_w.unbind(1))
            resid = resid + head_w.sum(1)
            if a.proj.bias is not None:
                resid = resid + b.ls1(a.proj.bias)
            key = f"blocks.{i}.mlp"
            xin = resid
            d = self._delta(key, cur, sources, rows)
            if d is not None:
                xin = xin + d[:, 0]
            if leaves:
                xin = xin + leaf(key, tuple(xin.shape))
            mw = b.ls2(b.mlp(b.norm2(xin)))
            cur.append(mw)
            resid = resid + mw
        xin = resid
        d = self._delta("logits", cur, sources, rows)
        if d is not None:
            xin = xin + d[:, 0]
        if leaves:
            xin = xin + leaf("logits", tuple(xin.shape))
        out = m.forward_head(m.norm(xin))
        return out, {"stack": torch.stack(cur, 1)}, grads

    def edge_dot(self, diff: Writes, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = torch.zeros(self.n_edges, dtype=torch.float64)
        dstack = diff["stack"]  # [B, S, N, D]
        for key, recv in self.groups:
            g = grads[key]
            if g.dim() == 3:
                g = g[:, None]
            idx = self._idx[key]
            vals = torch.einsum("bsnd,brnd->rs", dstack.to(g.dtype), g).double()  # [R, S]
            ok = idx >= 0
            out[idx[ok]] = vals.cpu()[ok]
        return out


# ---------------------------------------------------------------------------------------------- sequential
def _ranges(n: int, groups: int, what: str) -> list[tuple[int, int]]:
    if not isinstance(groups, int) or groups < 1 or n % groups:
        raise InputError(f"groups[{what!r}]: {groups!r} does not split its {n} units into equal groups; give a "
                         f"divisor of {n}")
    step = n // groups
    return [(g * step, (g + 1) * step) for g in range(groups)]


def _unit_count(module: nn.Module, side: str) -> int | None:
    if isinstance(module, nn.Linear):
        return module.in_features if side == "in" else module.out_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module.in_channels if side == "in" else module.out_channels
    return None


class SequentialGraph(CircuitGraph):
    """Layer-to-layer graph of a plain sequential model (CNN without skips, policy MLP).

    ``layers`` are module paths ``M_1 .. M_L`` in forward order, each reading (after channel-wise steps such
    as ReLU, pooling or flattening) the previous one's output. Nodes: ``input`` (the input of ``M_1``),
    ``M_1 .. M_{L-1}`` and the output layer ``M_L`` (named ``logits`` where the adapter has that site),
    each optionally split into ``groups[path]`` equal unit / channel groups (``conv1[0:2]``). A node's write
    is its group's slice of the next layer's input; a receiver group's output units are computed from its
    own copy of the layer's input, so an edge ``M_l[g] -> M_{l+1}[g']`` is patched by replacing units ``g``
    of ``M_{l+1}``'s input for output group ``g'`` only. Inputs and outputs carry units on axis 1
    (``[B, C, ...]`` or ``[B, F]``).
    """

    kind = "sequential"

    def __init__(self, hm: HookedModel, layers: Sequence[str], groups: Mapping[str, int] | None = None,
                 example_input: Any = None):
        modules = dict(hm.model.named_modules())
        # a site name (an adapter's canonical name, e.g. ``policy.0``) stands for its module
        layers = [p if p in modules or p not in hm.sites or hm.sites[p].kind != "output"
                  else hm.sites[p].module_path for p in layers]
        groups = {(k if k == "input" or k in modules or k not in hm.sites else hm.sites[k].module_path): v
                  for k, v in dict(groups or {}).items()}
        if len(layers) < 1:
            raise InputError("layers: give at least one module path (the output layer)")
        for p in layers:
            if p not in modules or p == "":
                close = [n for n in modules if n and (p in n or n in p)][:5]
                raise InputError(f"layers: {p!r} is not a module path of {type(hm.model).__name__}; closest: {close}")
        groups = dict(groups or {})
        for k in groups:
            if k != "input" and k not in layers[:-1]:
                raise InputError(f"groups: {k!r} is not 'input' or one of the non-output layers {layers[:-1]}")
        self.layers = layers
        self.group_spec = groups
        self.modules_ = [modules[p] for p in layers]
        self._checked = False
        self._hm_for_check = hm
        shapes = self._shapes(example_input) if example_input is not None else {}
        # unit ranges of every sender layer: "input" then M_1..M_{L-1} (ranges over the next layer's input)
        self.ranges: list[list[tuple[int, int]]] = []
        self.out_ranges: list[list[tuple[int, int]]] = []
        for li, p in enumerate(["input", *layers[:-1]]):
            n_in = _unit_count(self.modules_[li], "in") or shapes.get((layers[li], "in"))
            g = groups.get(p, 1)
            if n_in is None:
                if g != 1:
                    raise InputError(f"groups[{p!r}]: the module after it, {layers[li]!r}, is a "
                                     f"{type(self.modules_[li]).__name__}, whose unit count is unknown; pass "
                                     f"example_input= to build_graph so the shapes are traced")
                self.ranges.append([(0, -1)])
            else:
                self.ranges.append(_ranges(n_in, g, p))
        for li, p in enumerate(layers):
            n_out = _unit_count(self.modules_[li], "out") or shapes.get((p, "out"))
            g = groups.get(p, 1) if li < len(layers) - 1 else 1
            if g == 1:
                self.out_ranges.append([(0, -1)])
            else:
                if n_out is None:
                    raise InputError(f"groups[{p!r}]: a {type(self.modules_[li]).__name__} has no known unit count; "
                                     f"pass example_input= to build_graph so the shapes are traced")
                self.out_ranges.append(_ranges(n_out, g, p))
        site_of = {}
        for name in hm.sites:
            s = hm.sites[name]
            if s.kind == "output" and s.module_path in layers and s.module_path not in site_of:
                site_of[s.module_path] = name
        last = layers[-1]
        out_name = "logits" if "logits" in hm.sites and hm.sites["logits"].module_path in (last, "") else last
        nodes_by_layer: list[list[Node]] = []
        for li, p in enumerate(["input", *layers]):
            if li == len(layers):
                nodes_by_layer.append([Node(out_name, out_name, li, "output")])
                continue
            site = "input" if li == 0 else site_of.get(p, p)
            rng = self.ranges[li]
            role = "input" if li == 0 else "component"
            if len(rng) == 1:
                nodes_by_layer.append([Node(site, site, li, role)])
            else:
                nodes_by_layer.append([Node(f"{site}[{a}:{b}]", site, li, role, (a, b)) for a, b in rng])
        nodes = [n for layer in nodes_by_layer for n in layer]
        edges = [(s.name, r.name) for li in range(len(layers)) for r in nodes_by_layer[li + 1]
                 for s in nodes_by_layer[li]]
        self.nodes_by_layer = nodes_by_layer
        super().__init__(hm, nodes, edges)
        # idx[l][g_out, g_in] = edge id into receiver layer l+1 (module M_{l+1} = self.modules_[l])
        self._idx = []
        for li in range(len(layers)):
            recv, send = nodes_by_layer[li + 1], nodes_by_layer[li]
            self._idx.append(torch.tensor([[self.edge_index[(s.name, r.name)] for s in send] for r in recv]))

    def _shapes(self, example: Any) -> dict[tuple[str, str], int]:
        """Units (axis 1) of each layer's input and output on ``example``; checks the chain on it too."""
        found: dict[tuple[str, str], int] = {}
        handles = []
        try:
            for p, mod in zip(self.layers, self.modules_):
                handles.append(mod.register_forward_pre_hook(
                    lambda m, a, p=p: found.__setitem__((p, "in"), int(a[0].shape[1])) if a and isinstance(
                        a[0], torch.Tensor) and a[0].dim() > 1 else None))
                handles.append(mod.register_forward_hook(
                    lambda m, a, o, p=p: found.__setitem__((p, "out"), int(o.shape[1])) if isinstance(
                        o, torch.Tensor) and o.dim() > 1 else None))
            with torch.no_grad(), self._hm_for_check.analysis():
                call_model(self._hm_for_check.model, example)
        finally:
            for h in handles:
                h.remove()
        return found

    def check_chain(self, inputs: Any) -> None:
        """Refuse layers that do not form a chain: with layer ``M_l``'s output taken from another input, the
        next layer's input must be the one it has on that other input (no skip connection or branch
        bypasses ``M_l``). One forward per layer, on the first inputs the graph sees."""
        if self._checked:
            return
        hm = self._hm_for_check
        gen = torch.Generator(device="cpu").manual_seed(0)
        changed = []

        def perturb(t: torch.Tensor) -> torch.Tensor:
            if t.is_floating_point() and t.numel():
                changed.append(True)
                return t + (t.std(unbiased=False) + 1) * torch.randn(t.shape, generator=gen).to(t)
            return t

        other = _map_tensors(inputs, perturb)
        if not changed:
            raise InputError("inputs: the layer chain is checked on a perturbed copy of the inputs, but they hold no "
                             "floating tensors; give floating inputs")
        seen: dict[tuple[str, str], Any] = {}

        with torch.no_grad(), hm.analysis():
            handles = []
            try:
                for p, mod in zip(self.layers, self.modules_):
                    handles.append(mod.register_forward_pre_hook(lambda m, a, p=p: seen.__setitem__(("in", p), a[0])))
                    handles.append(mod.register_forward_hook(lambda m, a, o, p=p: seen.__setitem__(("out", p), o)))
                call_model(hm.model, other)
            finally:
                for h in handles:
                    h.remove()
            ref = dict(seen)
            for prev, nxt, mod_prev, mod_next in zip(self.layers, self.layers[1:], self.modules_, self.modules_[1:]):
                got: dict[str, Any] = {}
                h1 = mod_prev.register_forward_hook(lambda m, a, o, prev=prev: ref[("out", prev)])
                h2 = mod_next.register_forward_pre_hook(lambda m, a: got.__setitem__("in", a[0]))
                try:
                    call_model(hm.model, inputs)
                finally:
                    h1.remove()
                    h2.remove()
                want = ref[("in", nxt)]
                if "in" not in got or got["in"].shape != want.shape or not torch.allclose(
                        got["in"], want, atol=1e-5 * (float(want.abs().max()) + 1)):
                    raise InputError(f"layers: the input of {nxt!r} is not determined by the output of {prev!r} (a "
                                     f"skip connection or another branch reaches it), so {prev!r} -> {nxt!r} is not "
                                     f"the only path; give build_graph(layers=[...]) modules that form a chain (for a "
                                     f"ResNet: its stages or blocks, whose outputs include the skip)")
        self._checked = True

    def record(self, inputs: Any) -> tuple[Any, Writes]:
        self.check_chain(inputs)
        return super().record(inputs)

    def _chan_coef(self, li: int, coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``[rows, G_out, C_in]`` coefficients of each input unit for each receiver group of layer ``li``."""
        c = coef[:, self._idx[li].to(coef.device)]  # [rows, G_out, G_in]
        rng = self.ranges[li]
        if rng == [(0, -1)]:
            return c
        sizes = torch.tensor([b - a for a, b in rng], device=c.device)
        return torch.repeat_interleave(c, sizes, dim=2)

    def _forward(self, inputs: Any, sources: list[Source], leaves: bool,
                 call: Callable[[Any], Any] | None) -> tuple[Any, Writes, dict[str, torch.Tensor]]:
        writes: Writes = {}
        grads: dict[str, torch.Tensor] = {}

        def make(li: int) -> Callable:
            def wrap(module: nn.Module, inner: Callable) -> Callable:
                def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                    key = str(li)
                    writes[key] = x
                    rows = x.shape[0]
                    G = len(self.out_ranges[li])
                    xs = [x] * G
                    for src in sources:
                        if not bool(src.coef[:, self._idx[li].to(src.coef.device)].any()):
                            continue
                        cc = self._chan_coef(li, src.coef.to(x.dtype), x)  # [rows or 1, G, C or 1]
                        cc = cc.expand(rows, *cc.shape[1:])
                        diff = src.writes[key] - x
                        for g in range(G):
                            c = cc[:, g].reshape(rows, cc.shape[2], *([1] * (x.dim() - 2)))
                            xs[g] = xs[g] + c * diff
                    if leaves:
                        lf = torch.zeros((G, *x.shape), dtype=x.dtype, device=x.device, requires_grad=True)
                        grads[key] = lf
                        xs = [xg + lf[g] for g, xg in enumerate(xs)]
                    if G == 1:
                        return inner(xs[0], *args, **kwargs)
                    outs = [inner(xg, *args, **kwargs)[:, a:b] for xg, (a, b) in zip(xs, self.out_ranges[li])]
                    return torch.cat(outs, 1)
                return forward
            return wrap

        with contextlib.ExitStack() as stack:
            for li, p in enumerate(self.layers):
                stack.enter_context(self.hm.replacing_forward(p, make(li)))
            out = call(inputs) if call is not None else call_model(self.hm.model, inputs)
        missing = [self.layers[int(k)] for k in map(str, range(len(self.layers))) if k not in writes]
        if missing:
            raise InputError(f"layers: {missing} did not run in this forward; give layers the model runs")
        return out, writes, grads

    def edge_dot(self, diff: Writes, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = torch.zeros(self.n_edges, dtype=torch.float64)
        for li in range(len(self.layers)):
            key = str(li)
            d, g = diff[key], grads[key]  # [B, C, ...], [G_out, B, C, ...]
            prod = (d[None].to(g.dtype) * g)
            per_unit = prod.transpose(1, 2).reshape(g.shape[0], g.shape[2], -1).sum(-1)  # [G_out, C]
            rng = self.ranges[li]
            if rng == [(0, -1)]:
                vals = per_unit.sum(1, keepdim=True)
            else:
                vals = torch.stack([per_unit[:, a:b].sum(1) for a, b in rng], 1)  # [G_out, G_in]
            out[self._idx[li].reshape(-1)] = vals.reshape(-1).double().cpu()
        return out


# ---------------------------------------------------------------------------------------------- builder
def _forward_order(hm: HookedModel, example: Any) -> list[str]:
    """Leaf ``Linear`` / ``Conv`` modules in the order they run on ``example``."""
    order: list[str] = []
    counts: dict[str, int] = {}
    handles = []
    try:
        for p, m in hm.model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                def hook(mod: nn.Module, args: tuple, p: str = p) -> None:
                    counts[p] = counts.get(p, 0) + 1
                    if counts[p] == 1:
                        order.append(p)
                handles.append(m.register_forward_pre_hook(hook))
        with torch.no_grad(), hm.analysis():
            call_model(hm.model, example)
    finally:
        for h in handles:
            h.remove()
    again = [p for p, c in counts.items() if c > 1]
    if again:
        raise InputError(f"model: layers {again} run more than once per forward (recurrence or reuse); give "
                         f"build_graph(model, layers=[...]) the layers of one pass")
    return order


def build_graph(model: Any, *, layers: Sequence[str] | None = None, groups: Mapping[str, int] | None = None,
                example_input: Any = None, steps: int | None = None) -> CircuitGraph:
    """The circuit graph of ``model`` (module docstring).

    Args:
        model: a HookedModel or any ``nn.Module`` (wrapped by its registered adapter).
        layers: module paths of a sequential graph in forward order (the last is the output layer).
            Default: the adapter's own graph, a :class:`ViTGraph` for timm ViTs, else every ``Linear`` /
            ``Conv`` layer in the order it runs on ``example_input``.
        groups: ``{layer or "input": n}`` splits a sequential node into ``n`` equal unit / channel groups.
        example_input: one batch of inputs (needed to find the forward order when ``layers`` is not given
            and the adapter has no example input).
        steps: for a recurrent policy (an ``rl`` agent), the number of time steps to unroll: a
            :class:`RecurrentGraph` over observation sequences ``[batch, steps, *obs]``.
    """
    if isinstance(model, CircuitGraph):
        return model
    hm = as_hooked(model)
    if steps is not None:
        from .recurrent import RecurrentGraph  # it builds on CircuitGraph from this module

        return RecurrentGraph(hm, steps)
    maker = getattr(hm.adapter, "circuit_graph", None)
    if layers is None and callable(maker):
        return maker(hm, groups=groups)
    if layers is None and is_timm_vit(hm.model):
        if groups:
            raise InputError("groups: a ViT graph's nodes are heads and MLPs already; groups apply to sequential "
                             "graphs")
        return ViTGraph(hm, example_input)
    ex = None
    if example_input is not None:
        ex, _ = as_inputs(example_input, model=hm, argument="example_input")
    if layers is None:
        if ex is None and hasattr(hm.adapter, "example_input"):
            ex = hm.adapter.example_input(hm.model)
        if ex is None:
            raise InputError("layers: not given and the model has no example input to find its layers; pass "
                             "layers=[module paths in forward order] or example_input=")
        layers = _forward_order(hm, ex)
        if not layers:
            raise InputError(f"model: {type(hm.model).__name__} has no Linear or Conv layers; pass layers=[...]")
    g = SequentialGraph(hm, layers, groups, example_input=ex)
    if ex is not None:
        g.check_chain(ex)
    return g
