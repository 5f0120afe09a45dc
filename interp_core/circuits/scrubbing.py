"""Causal scrubbing (Chan, Garriga-Alonso, Goldowsky-Dill, Greenblatt, Nitishinskaya, Radhakrishnan,
Shlegeris & Thomas 2022, "Causal scrubbing: a method for rigorously testing interpretability hypotheses").

A **hypothesis** maps an interpretation onto nodes of the circuit graph: ``{node: labels}`` where ``labels``
(``[N]``, or a function ``inputs -> [N]``) says which inputs the hypothesis treats as equivalent at that
node (the same value of the feature the node is claimed to compute). The hypothesis' edges are the graph's
edges between its nodes (the output node always belongs to it), or the ``edges`` given.

The **scrubbed run** resamples every activation: along a hypothesis edge ``s -> r`` the sender's write is
taken from another input ``x'`` with ``labels_s(x') == labels_s(x)`` (drawn independently per node and
example), and that write is itself scrubbed: computed on ``x'`` with ``s``'s own incoming edges resampled
the same way, recursively down to the input (the treeified hypothesis of Chan et al.); along every other
edge — which the hypothesis says does not matter — the write comes from a random input (one random draw
per scrubbed run). The cost is one forward per path of the hypothesis from a node to the output.

The report is the share of the effect the hypothesis recovers,
``(m_scrubbed - m_random) / (m_original - m_random)``, with ``m_random`` the run in which every edge is
resampled at random (Chan et al.'s "loss recovered", for a metric in place of the loss): about 1 when the
hypothesis is right, about 0 or below when what it declares irrelevant matters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..boundary import as_inputs, describe_inputs
from ..errors import InputError, InputTypeError
from ..metrics import as_metric
from ..results import Result
from .graph import CircuitGraph, Source, build_graph, edge_name
from .scoring import metric_means

__all__ = ["causal_scrubbing", "ScrubbingResult"]


@dataclass
class ScrubbingResult(Result):
    """Outcome of causal scrubbing.

    Attributes:
        recovered: ``(m_scrubbed - m_random) / (m_original - m_random)`` averaged over the resamples' metrics.
        scrubbed_metric, original_metric, random_metric: batch-mean metrics (scrubbed: mean over ``n_samples``).
        hypothesis: the hypothesis' nodes and edges; ``config``: metric, data, seed, samples.
    """

    recovered: float
    scrubbed_metric: float
    original_metric: float
    random_metric: float
    hypothesis: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    def plot(self, ax: Any = None, title: str | None = None) -> Any:
        """Bars of the original, scrubbed and random runs' metrics; returns the figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4.0, 3.0))
        ax.bar(["original", "scrubbed", "random"], [self.original_metric, self.scrubbed_metric, self.random_metric],
               color=["C0", "C1", "C3"])
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_ylabel(str(self.config.get("metric", "metric")))
        ax.set_title(title or f"causal scrubbing: {self.recovered:.2f} of the effect recovered", fontsize=9)
        ax.figure.tight_layout()
        return ax.figure


def _labels(spec: Any, x: torch.Tensor, node: str) -> torch.Tensor:
    if callable(spec) and not isinstance(spec, torch.Tensor):
        spec = spec(x)
    try:
        t = torch.as_tensor(spec).reshape(-1) if not isinstance(spec, torch.Tensor) else spec.reshape(-1)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InputTypeError(f"hypothesis[{node!r}]: labels must be [N] values or a function inputs -> [N] ({e})") \
            from None
    if t.shape[0] != x.shape[0]:
        raise InputError(f"hypothesis[{node!r}]: {t.shape[0]} labels for {x.shape[0]} inputs; give one per input")
    return t.detach().cpu()


def _equivalent_to(labels: torch.Tensor, ctx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For each context example ``ctx[i]`` (an index into the data), a random data index ``j`` with
    ``labels[j] == labels[ctx[i]]`` (possibly ``ctx[i]`` itself)."""
    want = labels[ctx]
    idx = torch.empty(len(ctx), dtype=torch.long)
    for v in want.unique():
        members = (labels == v).nonzero().reshape(-1)
        rows = (want == v).nonzero().reshape(-1)
        idx[rows] = members[torch.randint(len(members), (len(rows),), generator=gen)]
    return idx


def causal_scrubbing(model: Any, data: Any, hypothesis: Mapping[str, Any], metric: Any, *,
                     edges: Sequence[Sequence[str]] | None = None, n_samples: int = 4, seed: int = 0,
                     graph: CircuitGraph | None = None, layers: Sequence[str] | None = None,
                     groups: Mapping[str, int] | None = None,
                     labels: Any = None) -> ScrubbingResult:
    """Test ``hypothesis`` (``{node: labels or inputs -> labels}``) by causal scrubbing (module docstring).

    Args:
        data: the inputs (any form the boundary accepts); their row order is the labels' order.
        metric: a metric or class index; a per-example target (``[N]`` tensor) sees the rows in order.
        edges: the hypothesis' edges (default: every graph edge between its nodes and into the output).
        n_samples: independent resamplings averaged.
        labels: labels carried with the data (unused unless a hypothesis entry is the string ``"labels"``).
    """
    g = graph if graph is not None else build_graph(model, layers=layers, groups=groups, example_input=data)
    metric = as_metric(metric)
    x, y = as_inputs(data, labels, model=g.hm, argument="data")
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"data: causal scrubbing takes one input tensor, got {describe_inputs(x)}")
    if not isinstance(hypothesis, Mapping) or not hypothesis:
        raise InputError("hypothesis: a non-empty {node: labels} mapping (labels: [N] values or a function "
                         "inputs -> [N]) naming what each node computes")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise InputError(f"n_samples: a positive number of resamplings, got {n_samples!r}")
    interp: dict[str, torch.Tensor] = {}
    for node, spec in hypothesis.items():
        if node not in g.by_name:
            close = [n.name for n in g.nodes if node.split("[")[0] in n.name][:6]
            raise InputError(f"hypothesis: {node!r} is not a node of the graph; nodes like it: {close} "
                             f"({len(g.nodes)} nodes)")
        if g.by_name[node].role == "output":
            continue
        if isinstance(spec, str) and spec == "labels":
            if y is None:
                raise InputError(f"hypothesis[{node!r}]: 'labels' but the data carries no labels; pass labels=")
            spec = y
        interp[node] = _labels(spec, x, node)
    in_hyp = set(interp) | {g.output}
    if edges is None:
        hyp_edges = [e for e in g.edges if e[0] in interp and e[1] in in_hyp]
    else:
        hyp_edges = [(str(e[0]), str(e[1])) for e in edges]
        g.mask(hyp_edges, "edges")  # checks they exist
        outside = [edge_name(e) for e in hyp_edges if e[0] not in interp]
        if outside:
            raise InputError(f"edges: {outside} start at nodes without an interpretation in the hypothesis; add "
                             f"them to hypothesis")
    E, B = g.n_edges, x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    hm = g.hm
    parents = {n: [e for e in hyp_edges if e[1] == n] for n in in_hyp}

    def scrubbed_run(receiver: str, ctx: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run on inputs ``x[ctx]`` with every edge into ``receiver`` resampled: a hypothesis edge from ``p``
        carries ``p``'s scrubbed write on an input equivalent to the context under ``p``'s interpretation
        (recursively), every other edge a random input's write."""
        sources = []
        coef_rand = torch.zeros(E)
        for e in g.incoming(receiver):
            coef_rand[g.edge_index[e]] = 1.0
        for p, _ in parents.get(receiver, []):
            idx_p = _equivalent_to(interp[p], ctx, gen)
            _, w_p = scrubbed_run(p, idx_p) if parents.get(p) else g.record(x[idx_p])
            c = torch.zeros(E)
            c[g.edge_index[(p, receiver)]] = 1.0
            coef_rand[g.edge_index[(p, receiver)]] = 0.0
            sources.append(Source(w_p, c))
        _, w_rand = g.record(x[torch.randint(B, (B,), generator=gen)])
        out, writes, _ = g.run(x[ctx], [*sources, Source(w_rand, coef_rand)])
        return out, writes

    with hm.analysis(), torch.no_grad():
        out, _ = g.record(x)
        m_orig = float(metric_means(out, metric, B, 1)[0])
        rand_runs, scrubbed = [], []
        everything = torch.arange(B)
        for _ in range(n_samples):
            out_s, _ = scrubbed_run(g.output, everything)
            scrubbed.append(float(metric_means(out_s, metric, B, 1)[0]))
            _, w_rand = g.record(x[torch.randint(B, (B,), generator=gen)])
            out_r, _, _ = g.run(x, [Source(w_rand, torch.ones(E))])
            rand_runs.append(float(metric_means(out_r, metric, B, 1)[0]))
    m_scr, m_rand = sum(scrubbed) / n_samples, sum(rand_runs) / n_samples
    denom = m_orig - m_rand
    if abs(denom) < 1e-8:
        raise InputError(f"data: the original and fully resampled runs give the same metric ({m_orig:.6g}); "
                         f"there is no effect to recover. Use a metric that depends on the inputs' labels")
    return ScrubbingResult((m_scr - m_rand) / denom, m_scr, m_orig, m_rand,
                           {"nodes": sorted(interp), "edges": [list(e) for e in hyp_edges]},
                           {"metric": metric.name, "data": describe_inputs(x), "seed": seed, "n_samples": n_samples,
                            "scrubbed_runs": scrubbed, "random_runs": rand_runs})

