"""Faithfulness, completeness and minimality of a circuit, and the faithfulness-against-size curve.

With ``m(C)`` the batch-mean metric of the model restricted to the edge set ``C`` (every other edge patched
from the corrupted run or the mean, :mod:`interp_core.circuits.graph`), ``m(E)`` the full model and
``m(∅)`` the fully ablated one:

- **faithfulness** ``F(C) = (m(C) - m(∅)) / (m(E) - m(∅))`` — 1: the circuit alone reproduces the model's
  behaviour, 0: no better than the ablated model (Wang et al. 2022, "Interpretability in the wild";
  Hanna et al. 2024 normalise the same way);
- **completeness** ``1 - F(E \\ C)`` — the model with the circuit's edges removed and everything else kept
  should lose the behaviour (1: it loses all of it);
- **minimality**: for each edge ``e`` of ``C``, ``F(C) - F(C \\ {e})``; the share of edges whose removal
  lowers faithfulness by at least ``tolerance`` (1: every edge is needed);
- **curve** (:func:`faithfulness_curve`): ``F`` of the top-``k`` edges by a score, for increasing ``k``,
  against the mean ``F`` of ``n_random`` random edge sets of the same size (the baseline).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputError, InputTypeError, InterpWarning
from ..results import Result
from .circuit import Circuit
from .graph import CircuitGraph
from .scoring import EdgeScores, Setup, check_gap, setup

log = logging.getLogger(__name__)

__all__ = ["faithfulness", "completeness", "minimality", "faithfulness_curve", "FaithfulnessCurve"]


def _edges_of(circuit: Any) -> list[tuple[str, str]]:
    if isinstance(circuit, Circuit):
        return list(circuit.edges)
    if isinstance(circuit, (list, tuple, set)):
        return [(str(e[0]), str(e[1])) for e in circuit]
    raise InputTypeError(f"circuit: a Circuit or a list of (sender, receiver) edges, got {type(circuit).__name__}")


def _graph_kw(circuit: Any, graph: CircuitGraph | None, layers: Any, groups: Any) -> dict[str, Any]:
    if isinstance(circuit, Circuit) and graph is None and layers is None and groups is None:
        return {"layers": circuit.config.get("layers"), "groups": circuit.config.get("groups")}
    return {"graph": graph, "layers": layers, "groups": groups}


class _Scale:
    """``F`` of edge masks for one setup: ``(m(mask) - m(∅)) / (m(E) - m(∅))``."""

    def __init__(self, s: Setup, batch_rows: int | None = None):
        self.s = s
        self.batch_rows = batch_rows
        self.ablated = float(s.evaluate(torch.zeros(1, s.graph.n_edges))[0])
        self.gap = check_gap(s, self.ablated)
        if s.corrupted is not None:
            with s.graph.hm.analysis(train=s.train):
                out, _ = s.graph.record(s.corrupted)
            from .scoring import metric_means

            m_corr = float(metric_means(out, s.metric, s.batch, 1)[0])
            if abs(m_corr - self.ablated) > 1e-3 * abs(self.gap) + 1e-6:
                warnings.warn(f"graph: patching every edge gives metric {self.ablated:.4g} but the corrupted run "
                              f"gives {m_corr:.4g}: some paths from the input to the output bypass the graph's "
                              f"nodes, so faithfulness is measured against the graph's ablation, not the "
                              f"corrupted model; give build_graph the layers every path runs through",
                              InterpWarning, stacklevel=3)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        vals = self.s.evaluate(masks, self.batch_rows)
        return (vals - self.ablated) / self.gap


def faithfulness(model: Any, circuit: Any, clean: Any, corrupted: Any, metric: Any, *,
                 graph: CircuitGraph | None = None, layers: Sequence[str] | None = None,
                 groups: Mapping[str, int] | None = None) -> float:
    """``F(C)`` of the circuit (a :class:`Circuit` or a list of edges) on ``clean`` with the edges outside it
    patched from ``corrupted`` (paired inputs, ``"mean"`` or ``"zero"``); module docstring."""
    s = setup(model, clean, corrupted, metric, **_graph_kw(circuit, graph, layers, groups))
    scale = _Scale(s)
    return float(scale(s.graph.mask(_edges_of(circuit), "circuit")[None])[0])


def completeness(model: Any, circuit: Any, clean: Any, corrupted: Any, metric: Any, *,
                 graph: CircuitGraph | None = None, layers: Sequence[str] | None = None,
                 groups: Mapping[str, int] | None = None) -> float:
    """``1 - F(E \\ C)``: how much of the behaviour is lost when only the circuit's edges are patched."""
    s = setup(model, clean, corrupted, metric, **_graph_kw(circuit, graph, layers, groups))
    scale = _Scale(s)
    rest = 1.0 - s.graph.mask(_edges_of(circuit), "circuit")
    return 1.0 - float(scale(rest[None])[0])


def minimality(model: Any, circuit: Any, clean: Any, corrupted: Any, metric: Any, *, tolerance: float = 0.01,
               graph: CircuitGraph | None = None, layers: Sequence[str] | None = None,
               groups: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Per circuit edge, ``F(C) - F(C \\ {e})``; returns ``{"drops": {edge: drop}, "minimality": share of
    edges with drop >= tolerance, "faithfulness": F(C)}``."""
    if not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise InputError(f"tolerance: a faithfulness drop >= 0, got {tolerance!r}")
    s = setup(model, clean, corrupted, metric, **_graph_kw(circuit, graph, layers, groups))
    scale = _Scale(s)
    edges = _edges_of(circuit)
    full = s.graph.mask(edges, "circuit")
    masks = full[None].repeat(len(edges) + 1, 1)
    for i, e in enumerate(edges):
        masks[i + 1, s.graph.edge_index[e]] = 0.0
    f = scale(masks)
    drops = {f"{a} -> {b}": float(f[0] - f[i + 1]) for i, (a, b) in enumerate(edges)}
    share = sum(d >= tolerance for d in drops.values()) / max(1, len(drops))
    return {"drops": drops, "minimality": share, "faithfulness": float(f[0]), "tolerance": tolerance}


@dataclass
class FaithfulnessCurve(Result):
    """Faithfulness of the top-``k`` edges by a score against random edge sets of the same size.

    Attributes:
        sizes: ``[K]`` circuit sizes (numbers of edges); ``faithfulness``: ``[K]`` ``F`` of the top-``k``.
        random_mean, random_std: ``[K]`` mean and standard deviation of ``F`` over ``n_random`` random sets.
        config: score method, metric, corruption, n_random, seed.
    """

    sizes: list[int]
    faithfulness: torch.Tensor
    random_mean: torch.Tensor
    random_std: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)

    def plot(self, ax: Any = None, title: str | None = None) -> Any:
        """Faithfulness against the number of edges, with the random baseline's mean ± std; returns the
        figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4.8, 3.2))
        ax.plot(self.sizes, self.faithfulness.numpy(), "o-", label=f"top-k by {self.config.get('method', 'score')}")
        mu, sd = self.random_mean.numpy(), self.random_std.numpy()
        ax.plot(self.sizes, mu, "s--", color="0.4", label=f"random ({self.config.get('n_random')} draws)")
        ax.fill_between(self.sizes, mu - sd, mu + sd, color="0.8", alpha=0.6)
        ax.axhline(1.0, color="grey", lw=0.7)
        ax.axhline(0.0, color="grey", lw=0.7)
        ax.set_xlabel("edges in circuit")
        ax.set_ylabel("faithfulness (0 = ablated, 1 = full)")
        ax.set_title(title or f"faithfulness curve ({self.config.get('metric', '')})", fontsize=9)
        ax.legend(fontsize=7)
        ax.figure.tight_layout()
        return ax.figure


def faithfulness_curve(model: Any, scores: EdgeScores, clean: Any, corrupted: Any, metric: Any, *,
                       sizes: Sequence[int] | None = None, n_random: int = 10, seed: int = 0,
                       graph: CircuitGraph | None = None, layers: Sequence[str] | None = None,
                       groups: Mapping[str, int] | None = None, batch_rows: int | None = None) -> FaithfulnessCurve:
    """``F`` of the top-``k`` edges of ``scores`` (by ``|score|``) for each ``k`` in ``sizes`` (default: about
    12 sizes from 1 to every edge), and of ``n_random`` uniformly random edge sets of each size (seeded)."""
    if not isinstance(scores, EdgeScores):
        raise InputTypeError(f"scores: an EdgeScores (from eap, eap_ig or edge_patching), got {type(scores).__name__}")
    if not isinstance(n_random, int) or n_random < 1:
        raise InputError(f"n_random: a positive number of random circuits per size, got {n_random!r}")
    s = setup(model, clean, corrupted, metric, graph=graph, layers=layers, groups=groups)
    E = s.graph.n_edges
    if [tuple(e) for e in scores.edges] != list(s.graph.edges):
        raise InputError("scores: computed on another graph (its edges differ from this model's graph); score and "
                         "measure on the same model and graph")
    if sizes is None:
        sizes = sorted({max(1, round(E * f)) for f in torch.logspace(-2, 0, 12).tolist()} | {1, E})
    sizes = [int(k) for k in sizes]
    bad = [k for k in sizes if k < 0 or k > E]
    if bad:
        raise InputError(f"sizes: {bad} outside 0..{E} (the graph's edge count)")
    scale = _Scale(s, batch_rows)
    order = torch.argsort(scores.scores.abs(), descending=True, stable=True)
    top = torch.zeros(len(sizes), E)
    gen = torch.Generator().manual_seed(seed)
    rand = torch.zeros(len(sizes) * n_random, E)
    for i, k in enumerate(sizes):
        top[i, order[:k]] = 1.0
        for j in range(n_random):
            rand[i * n_random + j, torch.randperm(E, generator=gen)[:k]] = 1.0
    f_top = scale(top)
    f_rand = scale(rand).reshape(len(sizes), n_random)
    return FaithfulnessCurve(sizes, f_top, f_rand.mean(1), f_rand.std(1) if n_random > 1 else torch.zeros(len(sizes)),
                             {"method": scores.method, "metric": s.metric.name, "corruption": s.corruption,
                              "n_random": n_random, "seed": seed, "data": s.data})
