"""Edge scores: edge attribution patching (EAP), EAP with integrated gradients, exact per-edge patching.

The effect of an edge ``s -> r`` is the change of the batch-mean metric when that edge alone is patched in
the clean run (its sender's write to ``r`` replaced by the corrupted, or mean, write; the noising
direction of :mod:`interp_core.patching`):

- **exact** (:func:`edge_patching`): ``m(clean, edge patched) - m(clean)``, one patched run per edge
  (many stacked along the batch axis per forward);
- **EAP** (:func:`eap`; Nanda 2023, Syed et al. 2023 "Attribution patching outperforms automated circuit
  discovery"): the first-order Taylor term ``(w'_s - w_s) . d m / d x_r`` summed over batch, positions and
  features, for every edge from one forward and one backward (the gradient at each receiver's input is
  taken through a zero tensor added to it). Exact when the metric is linear in the receiver's input;
- **EAP-IG** (:func:`eap_ig`; Hanna, Pezzelle & Belinkov 2024, "Have faith in faithfulness"): the same
  product with the gradient averaged over ``steps`` points on the straight path from the corrupted to the
  clean input (the input node's write interpolated, ``x_alpha = w' + alpha (w - w')``, ``alpha = k/steps``,
  ``k = 1..steps``): ``steps`` forwards and backwards. By the completeness of integrated gradients the
  scores of the edges leaving the input node sum to ``m(corrupted) - m(clean)`` as ``steps`` grows.

Node attribution (:func:`node_attribution`): a node's effect is that of patching all its outgoing edges
at once; its EAP estimate is the sum of its outgoing edges' EAP scores.

Every function takes the model (any ``nn.Module`` or HookedModel, or a prebuilt
:class:`~interp_core.circuits.graph.CircuitGraph`), clean data in any form the boundary accepts, the
corruption (paired corrupted inputs, ``"mean"`` — each write's mean over the clean data — or ``"zero"``)
and a metric or class index; it runs in eval mode.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..boundary import as_inputs, describe_inputs
from ..errors import InputError, InputTypeError
from ..metrics import Metric, as_metric
from ..progress import progress_bar
from ..results import Result
from .graph import CircuitGraph, Source, Writes, build_graph, edge_name

log = logging.getLogger(__name__)

__all__ = ["EdgeScores", "eap", "eap_ig", "edge_patching", "node_attribution", "Setup", "setup", "eap_from",
           "eap_ig_from", "edge_patching_from"]

AUTO_ROWS = 512  # default rows per stacked forward of patched runs (at most) ...
AUTO_VALUES = 2**24  # ... and about this many sender-write values per stacked forward


def _map(x: Any, fn: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: _map(v, fn) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a NamedTuple (e.g. a policy's output)
        return type(x)(*(_map(v, fn) for v in x))
    if isinstance(x, (tuple, list)):
        return type(x)(_map(v, fn) for v in x)
    return x


def repeat_rows(x: Any, k: int) -> Any:
    """``k`` copies stacked along the batch axis (copy ``j`` in rows ``[j*B, (j+1)*B)``)."""
    if k == 1:
        return x
    return _map(x, lambda t: t.repeat(k, *([1] * (t.dim() - 1))))


def slice_rows(x: Any, lo: int, hi: int) -> Any:
    return _map(x, lambda t: t[lo:hi] if t.dim() else t)


@dataclass
class Setup:
    """Checked arguments shared by the circuit methods: graph, metric, clean inputs and the source writes."""

    graph: CircuitGraph
    metric: Metric
    clean: Any
    batch: int
    clean_writes: Writes
    source_writes: Writes
    corruption: str
    data: dict[str, Any]
    clean_metric: float
    train: bool = False
    corrupted: Any = None

    def evaluate(self, masks: torch.Tensor, batch_rows: int | None = None, progress: bool | None = False,
                 desc: str = "patched runs") -> torch.Tensor:
        """Batch-mean metric ``[K]`` of the runs keeping edges where ``masks[k] == 1`` and patching the rest
        from the source (stacked ``batch_rows`` rows per forward)."""
        masks = masks.reshape(-1, self.graph.n_edges).float()
        K, B = masks.shape[0], self.batch
        if batch_rows is None:  # about AUTO_VALUES write values per stacked forward, at most AUTO_ROWS rows
            per_row = sum(v[0].numel() for v in self.clean_writes.values())
            batch_rows = min(AUTO_ROWS, AUTO_VALUES // max(1, per_row))
        rows = batch_rows
        per = max(1, rows // B)
        values = []
        bar = progress_bar(total=K, desc=desc, unit="run", progress=progress)
        with self.graph.hm.analysis(train=self.train), torch.no_grad():
            for lo in range(0, K, per):
                m = masks[lo:lo + per]
                k = m.shape[0]
                coef = (1.0 - m).repeat_interleave(B, 0)
                src = self.source_writes
                src = src if _batch_one(src) else {key: repeat_rows(v, k) for key, v in src.items()}
                out, _, _ = self.graph.run(repeat_rows(self.clean, k), [Source(src, coef)])
                values.append(metric_means(out, self.metric, B, k))
                bar.update(k)
        bar.close()
        return torch.cat(values)


def _batch_one(w: Writes) -> bool:
    return all(v.shape[0] == 1 for v in w.values())


def metric_means(out: Any, metric: Metric, B: int, k: int) -> torch.Tensor:
    """Batch-mean metric of each of ``k`` stacked copies of a ``B``-row batch (the metric sees ``B`` rows
    at a time, so per-example targets work)."""
    vals = []
    for j in range(k):
        m = metric(slice_rows(out, j * B, (j + 1) * B))
        if m.shape[0] != B:
            raise InputError(f"metric {metric.name!r} returned {m.shape[0]} values for a batch of {B}; a metric "
                             f"returns one number per example")
        vals.append(m.detach().double().mean().cpu())
    return torch.stack(vals)


def setup(model: Any, clean: Any, corrupted: Any, metric: Any, *, graph: CircuitGraph | None = None,
          layers: Sequence[str] | None = None, groups: Mapping[str, int] | None = None,
          train: bool = False) -> Setup:
    """Check and prepare the arguments every circuit method shares (module docstring)."""
    g = graph if graph is not None else build_graph(model, layers=layers, groups=groups, example_input=clean)
    if not isinstance(g, CircuitGraph):
        raise InputTypeError(f"graph: expected a CircuitGraph (interp_core.circuits.build_graph), got "
                             f"{type(g).__name__}")
    hm = g.hm
    metric = as_metric(metric)
    x, _ = as_inputs(clean, model=hm, argument="clean")
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"clean: circuit methods take one input tensor per batch, got {describe_inputs(x)}")
    with hm.analysis(train=train):
        out_clean, w_clean = g.record(x)
    B = x.shape[0]
    corr_x = None
    if isinstance(corrupted, str):
        if corrupted == "mean":
            src = {k: v.mean(0, keepdim=True) for k, v in w_clean.items()}
        elif corrupted == "zero":
            src = {k: torch.zeros_like(v[:1]) for k, v in w_clean.items()}
        else:
            raise InputError(f"corrupted: {corrupted!r} is not 'mean' or 'zero'; give corrupted inputs paired "
                             f"with the clean ones, 'mean' (each write's mean over the clean data) or 'zero'")
        what = corrupted
    elif corrupted is None:
        raise InputError("corrupted: none given; give corrupted inputs paired row by row with the clean ones, "
                         "or 'mean' / 'zero'")
    else:
        corr_x, _ = as_inputs(corrupted, model=hm, argument="corrupted")
        if not isinstance(corr_x, torch.Tensor) or corr_x.shape != x.shape:
            raise InputError(f"corrupted: must pair with clean row by row (same shape {tuple(x.shape)}), got "
                             f"{describe_inputs(corr_x)}")
        with hm.analysis(train=train):
            _, src = g.record(corr_x)
        what = f"paired corrupted inputs {describe_inputs(corr_x)}"
    m_clean = float(metric_means(out_clean, metric, B, 1)[0])
    return Setup(g, metric, x, B, w_clean, src, what, {"clean": describe_inputs(x), "n": B}, m_clean, train,
                 corr_x)


# ---------------------------------------------------------------------------------------------- result
@dataclass
class EdgeScores(Result):
    """A score per edge of a graph.

    Attributes:
        edges: the graph's edges ``[(sender, receiver), ...]``.
        scores: ``[E]`` — the (estimated or exact) change of the batch-mean metric when the edge alone is
            patched in the clean run.
        method: ``"eap"``, ``"eap-ig"`` or ``"exact"``.
        clean_metric: batch-mean metric of the clean run; ``ablated_metric``: with every edge patched (the
            corrupted / mean-ablated model), when measured.
        graph: the graph's description (nodes with layers, edges); ``config``: metric, corruption, data, steps.
    """

    edges: list[tuple[str, str]]
    scores: torch.Tensor
    method: str
    clean_metric: float
    ablated_metric: float | None
    graph: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return {edge_name(e): float(s) for e, s in zip(self.edges, self.scores)}

    def ranking(self) -> list[tuple[str, str]]:
        """Edges by decreasing ``|score|``."""
        order = torch.argsort(self.scores.abs(), descending=True, stable=True)
        return [self.edges[i] for i in order.tolist()]

    def top(self, k: int = 10) -> list[tuple[tuple[str, str], float]]:
        order = torch.argsort(self.scores.abs(), descending=True, stable=True)[:k]
        return [(self.edges[i], float(self.scores[i])) for i in order.tolist()]

    def node_scores(self) -> dict[str, float]:
        """Sum of each sender's outgoing edge scores (its node-level attribution, for EAP)."""
        out: dict[str, float] = {}
        for (s, _), v in zip(self.edges, self.scores.tolist()):
            out[s] = out.get(s, 0.0) + v
        return out

    def plot(self, k: int = 20, ax: Any = None) -> Any:
        """Horizontal bars of the ``k`` edges with the largest ``|score|``; returns the figure."""
        import matplotlib.pyplot as plt

        top = self.top(k)
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 0.3 * len(top) + 1.2))
        labels = [edge_name(e) for e, _ in top][::-1]
        vals = [v for _, v in top][::-1]
        ax.barh(range(len(vals)), vals, color=["C3" if v < 0 else "C0" for v in vals])
        ax.set_yticks(range(len(vals)), labels, fontsize=7)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel(f"edge effect on {self.config.get('metric', 'metric')} ({self.method})")
        ax.set_title(f"top {len(top)} of {len(self.edges)} edges")
        ax.figure.tight_layout()
        return ax.figure


def _scores(s: Setup, values: torch.Tensor, method: str, ablated: float | None, **config: Any) -> EdgeScores:
    return EdgeScores(list(s.graph.edges), values.double(), method, s.clean_metric, ablated, s.graph.describe(),
                      {"metric": s.metric.name, "corruption": s.corruption, "data": s.data, **config})


def _gradients(s: Setup, coef: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], float]:
    """Gradients of the batch-mean metric at every receiver input (a run on the clean inputs with the
    given source coefficients), and the metric."""
    with s.graph.hm.analysis(train=s.train), torch.enable_grad():
        sources = [Source(s.source_writes, coef)] if coef is not None else []
        out, _, leaves = s.graph.run(s.clean, sources, leaves=True)
        m = s.metric(out)
        if m.shape[0] != s.batch:
            raise InputError(f"metric {s.metric.name!r} returned {m.shape[0]} values for a batch of {s.batch}")
        m = m.mean()
        if not m.requires_grad:
            raise InputError(f"metric {s.metric.name!r} does not depend on the model's output through autograd; "
                             f"write it with torch operations on the output")
        keys = list(leaves)
        grads = torch.autograd.grad(m, [leaves[k] for k in keys], allow_unused=True)
    return {k: (g if g is not None else torch.zeros_like(leaves[k])) for k, g in zip(keys, grads)}, float(m.detach())


def _diff(s: Setup) -> Writes:
    return {k: (s.source_writes[k] - s.clean_writes[k]).expand_as(s.clean_writes[k]) for k in s.clean_writes}


def eap(model: Any, clean: Any, corrupted: Any, metric: Any, *, graph: CircuitGraph | None = None,
        layers: Sequence[str] | None = None, groups: Mapping[str, int] | None = None) -> EdgeScores:
    """Edge attribution patching: every edge's first-order effect from one forward and one backward
    (module docstring). ``scores[e] = sum_{batch, entries} (w'_s - w_s) * d mean(m) / d x_r``."""
    return eap_from(setup(model, clean, corrupted, metric, graph=graph, layers=layers, groups=groups))


def eap_from(s: Setup) -> EdgeScores:
    grads, _ = _gradients(s, None)
    return _scores(s, s.graph.edge_dot(_diff(s), grads), "eap", None)


def eap_ig(model: Any, clean: Any, corrupted: Any, metric: Any, *, steps: int = 5,
           graph: CircuitGraph | None = None, layers: Sequence[str] | None = None,
           groups: Mapping[str, int] | None = None) -> EdgeScores:
    """EAP with integrated gradients (Hanna et al. 2024; module docstring): the receivers' gradients
    averaged over ``steps`` inputs on the path from corrupted (``alpha = 0``) to clean (``alpha = 1``)."""
    _check_steps(steps)
    return eap_ig_from(setup(model, clean, corrupted, metric, graph=graph, layers=layers, groups=groups), steps)


def _check_steps(steps: Any) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InputError(f"steps: a positive number of interpolation steps, got {steps!r}")


def eap_ig_from(s: Setup, steps: int = 5) -> EdgeScores:
    _check_steps(steps)
    g = s.graph
    inputs = [n.name for n in g.nodes if n.role == "input"]
    from_input = torch.tensor([1.0 if e[0] in inputs else 0.0 for e in g.edges])
    total: dict[str, torch.Tensor] = {}
    for k in range(1, steps + 1):
        alpha = k / steps
        coef = (1.0 - alpha) * from_input
        grads, _ = _gradients(s, coef if alpha < 1 else None)
        for key, v in grads.items():
            total[key] = total[key] + v if key in total else v
    avg = {k: v / steps for k, v in total.items()}
    return _scores(s, g.edge_dot(_diff(s), avg), "eap-ig", None, steps=steps)


def edge_patching(model: Any, clean: Any, corrupted: Any, metric: Any, *, graph: CircuitGraph | None = None,
                  layers: Sequence[str] | None = None, groups: Mapping[str, int] | None = None,
                  batch_rows: int | None = None, progress: bool | None = None) -> EdgeScores:
    """Exact effect of patching each edge alone: ``mean m(clean, e patched) - mean m(clean)`` (one patched run
    per edge, ``batch_rows`` rows per stacked forward). The reference EAP and EAP-IG approximate."""
    s = setup(model, clean, corrupted, metric, graph=graph, layers=layers, groups=groups)
    return edge_patching_from(s, batch_rows, progress)


def edge_patching_from(s: Setup, batch_rows: int | None = None, progress: bool | None = None) -> EdgeScores:
    E = s.graph.n_edges
    masks = torch.ones(E, E) - torch.eye(E)
    vals = s.evaluate(masks, batch_rows, progress, "edge patching")
    ablated = float(s.evaluate(torch.zeros(1, E))[0])
    return _scores(s, vals - s.clean_metric, "exact", ablated)


def node_attribution(model: Any, clean: Any, corrupted: Any, metric: Any, *, method: str = "eap",
                     graph: CircuitGraph | None = None, layers: Sequence[str] | None = None,
                     groups: Mapping[str, int] | None = None) -> dict[str, float]:
    """Each sender node's effect: patching all its outgoing edges at once (``method="exact"``), or the sum
    of its outgoing edges' EAP scores, the first-order estimate of the same (``"eap"``)."""
    if method == "eap":
        return eap(model, clean, corrupted, metric, graph=graph, layers=layers, groups=groups).node_scores()
    if method != "exact":
        raise InputError(f"method: 'eap' or 'exact', got {method!r}")
    s = setup(model, clean, corrupted, metric, graph=graph, layers=layers, groups=groups)
    senders = [n.name for n in s.graph.nodes if n.role != "output"]
    masks = torch.ones(len(senders), s.graph.n_edges)
    for i, n in enumerate(senders):
        for e in s.graph.outgoing(n):
            masks[i, s.graph.edge_index[e]] = 0.0
    vals = s.evaluate(masks)
    return {n: float(v) - s.clean_metric for n, v in zip(senders, vals)}


def check_gap(s: Setup, ablated: float, argument: str = "corrupted") -> float:
    gap = s.clean_metric - ablated
    if not math.isfinite(gap) or abs(gap) < 1e-8:
        raise InputError(f"{argument}: the clean model and the fully ablated model give the same metric "
                         f"({s.clean_metric:.6g}); nothing to recover. Choose a corruption or metric that changes "
                         f"the model's behaviour")
    return gap
