"""The ``Circuit`` result: a set of edges of a circuit graph, with how it was found.

A circuit is the subgraph the model is claimed to use: running the model *restricted to the circuit* means
every edge outside it is patched (its sender's write to that receiver replaced by the corrupted or mean
write) while the circuit's edges carry the run's own values (:mod:`interp_core.circuits.graph`). A
``Circuit`` saves to and loads from JSON (``save`` / :meth:`Circuit.load`), draws as a layered graph
(``plot``), and applies to a model as an intervention (:meth:`Circuit.run`, :meth:`Circuit.applied`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..boundary import as_inputs, describe_inputs
from ..errors import InputError, InputTypeError, StoreError
from ..results import Result
from .graph import CircuitGraph, Source, build_graph, edge_name

__all__ = ["Circuit"]


@dataclass
class Circuit(Result):
    """A circuit: edges of a graph over sites, their scores, and the question it answers.

    Attributes:
        nodes: names of the nodes the circuit's edges touch.
        edges: ``[(sender, receiver), ...]`` kept in the circuit.
        scores: ``{"sender -> receiver": score}`` — what the finding method measured per edge (ACDC: the
            normalised metric change when the edge was tested; top-k: the ranking score).
        metric: the metric's name; ``corruption``: how patched edges were filled (paired corrupted inputs,
            ``"mean"`` or ``"zero"``); ``data``: a description of the clean data.
        graph: the full graph (nodes with layers and roles, every edge) the circuit is a subgraph of.
        faithfulness: normalised metric of the model restricted to the circuit (1 = full model, 0 = fully
            ablated), when measured.
        config: the method and its parameters (``layers`` / ``groups`` of a sequential graph, ``steps`` of a
            recurrent one: what :meth:`build_graph` needs to rebuild the graph from the model).
    """

    nodes: list[str]
    edges: list[tuple[str, str]]
    scores: dict[str, float]
    metric: str
    corruption: str
    data: dict[str, Any]
    graph: dict[str, Any]
    faithfulness: float | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.edges = [(str(e[0]), str(e[1])) for e in self.edges]

    def __len__(self) -> int:
        return len(self.edges)

    def __contains__(self, edge: object) -> bool:
        return isinstance(edge, (tuple, list)) and len(edge) == 2 and (str(edge[0]), str(edge[1])) in set(self.edges)

    # ------------------------------------------------------------------ JSON
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Circuit":
        missing = [k for k in ("nodes", "edges", "scores", "metric", "corruption", "data", "graph") if k not in d]
        if missing:
            raise InputError(f"circuit: the dict lacks {missing}; give what Circuit.to_dict() wrote")
        return cls(list(d["nodes"]), [tuple(e) for e in d["edges"]], dict(d["scores"]), d["metric"],
                   d["corruption"], dict(d["data"]), dict(d["graph"]), d.get("faithfulness"),
                   dict(d.get("config") or {}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Circuit":
        """The circuit saved at ``path`` by :meth:`save`."""
        try:
            d = json.loads(Path(path).read_text())
        except OSError as e:
            raise StoreError(f"path: cannot read a circuit from {str(path)!r}: {e}") from None
        except json.JSONDecodeError as e:
            raise InputError(f"path: {str(path)!r} is not JSON ({e}); give a file written by Circuit.save") from None
        return cls.from_dict(d)

    # ------------------------------------------------------------------ graph
    def build_graph(self, model: Any, example_input: Any = None) -> CircuitGraph:
        """The graph of ``model`` this circuit lives on (checked to have the circuit's nodes and edges);
        ``example_input`` traces unit counts of sequential layers that are not Linear / Conv."""
        if isinstance(model, CircuitGraph):
            g = model
        else:
            g = build_graph(model, layers=self.config.get("layers"), groups=self.config.get("groups"),
                            example_input=example_input, steps=self.config.get("steps"))
        known = set(g.edges)
        absent = [edge_name(e) for e in self.edges if e not in known]
        if absent:
            raise InputError(f"model: its circuit graph lacks {len(absent)} of the circuit's edges (first: "
                             f"{absent[0]!r}); the circuit was found on another model or graph")
        return g

    def mask(self, graph: CircuitGraph) -> torch.Tensor:
        """``[E]``: 1 on the circuit's edges of ``graph``, 0 elsewhere."""
        return graph.mask(self.edges, argument="circuit")

    # ------------------------------------------------------------------ as an intervention
    def _source(self, g: CircuitGraph, corrupted: Any, reference: Any, batch: int | None) -> Any:
        hm = g.hm
        if isinstance(corrupted, str):
            if corrupted not in ("mean", "zero"):
                raise InputError(f"corrupted: {corrupted!r} is not 'mean' or 'zero' or corrupted inputs")
            if reference is None:
                raise InputError(f"reference: {corrupted!r} ablation needs reference data to take the writes' "
                                 f"{corrupted} from (e.g. the clean data the circuit was found on)")
            ref, _ = as_inputs(reference, model=hm, argument="reference")
            with hm.analysis():
                _, w = g.record(ref)
            if corrupted == "mean":
                return {k: v.mean(0, keepdim=True) for k, v in w.items()}
            return {k: torch.zeros_like(v[:1]) for k, v in w.items()}
        if corrupted is None:
            raise InputError("corrupted: give corrupted inputs paired with the inputs, or 'mean' / 'zero' with "
                             "reference data")
        cx, _ = as_inputs(corrupted, model=hm, argument="corrupted")
        if batch is not None and cx.shape[0] != batch:
            raise InputError(f"corrupted: {cx.shape[0]} rows for {batch} inputs; pair them row by row")
        with hm.analysis():
            _, w = g.record(cx)
        return w

    def run(self, model: Any, inputs: Any, corrupted: Any = "mean", reference: Any = None) -> Any:
        """The model's output on ``inputs`` restricted to the circuit: every other edge patched from
        ``corrupted`` (inputs paired with ``inputs``) or from the ``"mean"`` / ``"zero"`` of the writes over
        ``reference`` (default: ``inputs`` themselves). Eval mode, no grad."""
        g = self.build_graph(model, inputs)
        x, _ = as_inputs(inputs, model=g.hm, argument="inputs")
        src = self._source(g, corrupted, x if reference is None else reference, x.shape[0])
        with g.hm.analysis(), torch.no_grad():
            out, _, _ = g.run(x, [Source(src, 1.0 - self.mask(g))])
        return out

    @contextlib.contextmanager
    def applied(self, model: Any, corrupted: Any = "mean", reference: Any = None) -> Iterator[Any]:
        """Within the block, calling the model runs it restricted to the circuit (see :meth:`run`); yields the
        graph's HookedModel. With paired ``corrupted`` inputs each call must have as many rows."""
        g = self.build_graph(model, reference if isinstance(corrupted, str) else corrupted)
        if isinstance(corrupted, str) and reference is None:
            raise InputError(f"reference: applied(corrupted={corrupted!r}) needs reference data for the writes' "
                             f"{corrupted}")
        src = self._source(g, corrupted, reference, None)
        coef = 1.0 - self.mask(g)
        n_src = next(iter(src.values())).shape[0]

        def make(module: Any, inner: Any) -> Any:
            def forward(*args: Any, **kwargs: Any) -> Any:
                if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
                    raise InputTypeError(f"inputs: a circuit-restricted model takes one input tensor, got "
                                         f"{describe_inputs(args)}")
                x = args[0]
                if n_src != 1 and x.shape[0] != n_src:
                    raise InputError(f"inputs: {x.shape[0]} rows, but the corrupted inputs have {n_src}; pair "
                                     f"them row by row")
                out, _, _ = g.run(x, [Source(src, coef)], call=inner)
                return out
            return forward

        with g.hm.replacing_forward("", make):
            yield g.hm

    # ------------------------------------------------------------------ figure
    def plot(self, ax: Any = None, title: str | None = None, labels: bool = True) -> Any:
        """Layered graph: nodes by layer (left to right), every graph edge faint, the circuit's edges drawn
        with width by ``|score|`` (blue positive, red negative); returns the figure."""
        import matplotlib.pyplot as plt

        nodes = self.graph.get("nodes", [])
        layers: dict[int, list[str]] = {}
        for n in nodes:
            layers.setdefault(int(n["layer"]), []).append(n["name"])
        pos = {}
        for layer, names in layers.items():
            for i, name in enumerate(names):
                pos[name] = (layer, i - (len(names) - 1) / 2)
        if ax is None:
            width = max(4.0, 1.4 * (len(layers) + 1))
            height = max(3.0, 0.5 * max((len(v) for v in layers.values()), default=1) + 1.5)
            _, ax = plt.subplots(figsize=(width, height))
        for s, r in self.graph.get("edges", []):
            if s in pos and r in pos:
                ax.plot(*zip(pos[s], pos[r]), color="0.88", lw=0.5, zorder=1)
        vals = [abs(self.scores.get(edge_name(e), 1.0)) for e in self.edges]
        top = max(vals, default=1.0) or 1.0
        for (s, r), v in zip(self.edges, vals):
            if s in pos and r in pos:
                sign = self.scores.get(edge_name((s, r)), 1.0)
                ax.annotate("", xy=pos[r], xytext=pos[s], zorder=2,
                            arrowprops=dict(arrowstyle="-|>", lw=0.8 + 3.0 * v / top,
                                            color="C0" if sign >= 0 else "C3", shrinkA=6, shrinkB=6))
        used = set(self.nodes)
        for name, (x, y) in pos.items():
            ax.scatter([x], [y], s=60, color="C1" if name in used else "0.75", zorder=3, edgecolor="k", lw=0.5)
            if labels:
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=6,
                            color="k" if name in used else "0.5")
        ax.set_xticks(sorted(layers))
        ax.set_xlabel("layer")
        ax.set_yticks([])
        faith = f", faithfulness {self.faithfulness:.2f}" if self.faithfulness is not None else ""
        ax.set_title(title or f"{self.config.get('method', 'circuit')}: {len(self.edges)} of "
                              f"{len(self.graph.get('edges', []))} edges{faith}", fontsize=9)
        ax.figure.tight_layout()
        return ax.figure


def circuit_nodes(edges: Sequence[tuple[str, str]]) -> list[str]:
    seen: dict[str, None] = {}
    for s, r in edges:
        seen.setdefault(s)
        seen.setdefault(r)
    return list(seen)
