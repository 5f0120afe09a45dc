"""Finding circuits: ACDC-style greedy pruning with exact patching, and top-k by score with verification.

**ACDC** (:func:`acdc`; Conmy et al. 2023, "Towards automated circuit discovery for mechanistic
interpretability"): start from the full graph, visit receivers from the output backwards (reverse
topological order) and, for each of a receiver's incoming edges, patch it on top of the edges already
removed; keep it removed when the metric moves by less than ``threshold`` — measured as
``|m(current without e) - m(current)| / |m(E) - m(∅)|``, a share of the full clean-to-ablated gap (the
"abs" variant of ACDC's metric; ACDC proper uses a KL divergence, which ``metric=kl_from(...)`` gives).
A receiver none of whose outgoing edges survived cannot affect the output: its incoming edges are removed
without testing. One patched forward per tested edge.

**Top-k** (:func:`top_k`): the ``k`` edges with the largest ``|score|`` (EAP, EAP-IG, exact or a given
:class:`~interp_core.circuits.scoring.EdgeScores`), verified by exact patching: the circuit's faithfulness
and the exact effect of removing each of its edges from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import InputError, InputTypeError
from ..progress import progress_bar
from .circuit import Circuit, circuit_nodes
from .graph import CircuitGraph
from .scoring import EdgeScores, check_gap, eap_from, eap_ig_from, edge_patching_from, setup

__all__ = ["acdc", "top_k"]


def acdc(model: Any, clean: Any, corrupted: Any, metric: Any, *, threshold: float = 0.05,
         graph: CircuitGraph | None = None, layers: Sequence[str] | None = None,
         groups: Mapping[str, int] | None = None, progress: bool | None = None) -> Circuit:
    """ACDC greedy pruning (module docstring). ``threshold``: the largest normalised metric change an edge's
    removal may cause and still be pruned (0.05 = 5% of the clean-to-ablated gap). Returns a
    :class:`Circuit` whose ``scores`` hold each tested edge's normalised change and whose ``faithfulness``
    is that of the final circuit."""
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or threshold < 0:
        raise InputError(f"threshold: a normalised metric change >= 0, got {threshold!r}")
    s = setup(model, clean, corrupted, metric, graph=graph, layers=layers, groups=groups)
    g = s.graph
    E = g.n_edges
    ablated = float(s.evaluate(torch.zeros(1, E))[0])
    gap = check_gap(s, ablated)
    mask = torch.ones(E)
    current = s.clean_metric
    scores: dict[str, float] = {}
    receivers = sorted((n for n in g.nodes if n.role != "input"), key=lambda n: -n.layer)
    output = g.output
    bar = progress_bar(total=E, desc="ACDC", unit="edge", progress=progress)
    for r in receivers:
        incoming = sorted(g.incoming(r.name), key=lambda e: -g.by_name[e[0]].layer)
        alive = r.name == output or any(mask[g.edge_index[e]] > 0 for e in g.outgoing(r.name))
        for e in incoming:
            i = g.edge_index[e]
            if not alive:
                mask[i] = 0.0
                bar.update(1)
                continue
            trial = mask.clone()
            trial[i] = 0.0
            m = float(s.evaluate(trial[None])[0])
            change = abs(m - current) / abs(gap)
            scores[f"{e[0]} -> {e[1]}"] = change
            if change < threshold:
                mask, current = trial, m
            bar.update(1)
    bar.close()
    kept = [e for e, v in zip(g.edges, mask.tolist()) if v > 0]
    faith = (current - ablated) / gap
    config = {"method": "acdc", "threshold": threshold, "clean_metric": s.clean_metric, "ablated_metric": ablated,
              "circuit_metric": current, **_graph_config(g, layers, groups)}
    return Circuit(circuit_nodes(kept), kept, {k: v for k, v in scores.items() if _in(k, kept)}, s.metric.name,
                   s.corruption, s.data, g.describe(), faith, config)


def _in(name: str, edges: Sequence[tuple[str, str]]) -> bool:
    return any(name == f"{a} -> {b}" for a, b in edges)


def _graph_config(g: CircuitGraph, layers: Any, groups: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"graph_kind": g.kind}
    if g.kind == "sequential":
        out["layers"] = list(getattr(g, "layers", layers) or [])
        out["groups"] = dict(getattr(g, "group_spec", None) or groups or {})
    if g.kind == "recurrent":
        out["steps"] = int(getattr(g, "steps"))
    return out


def top_k(model: Any, clean: Any, corrupted: Any, metric: Any, k: int, *, scores: EdgeScores | str = "eap",
          steps: int = 5, graph: CircuitGraph | None = None, layers: Sequence[str] | None = None,
          groups: Mapping[str, int] | None = None, verify: bool = True) -> Circuit:
    """The ``k`` edges with the largest ``|score|`` as a :class:`Circuit` (module docstring).

    ``scores``: ``"eap"``, ``"eap-ig"`` (``steps`` interpolation points), ``"exact"`` or an
    :class:`~interp_core.circuits.scoring.EdgeScores` computed on the same graph. With ``verify`` the
    circuit's faithfulness is measured by exact patching and ``config["verified"]`` holds, per edge, the
    exact normalised drop in faithfulness when that edge alone is removed from the circuit.
    """
    s = setup(model, clean, corrupted, metric, graph=graph, layers=layers, groups=groups)
    g = s.graph
    if not isinstance(k, int) or isinstance(k, bool) or not 0 < k <= g.n_edges:
        raise InputError(f"k: a number of edges between 1 and {g.n_edges}, got {k!r}")
    if isinstance(scores, str):
        if scores == "eap":
            scores = eap_from(s)
        elif scores == "eap-ig":
            scores = eap_ig_from(s, steps)
        elif scores == "exact":
            scores = edge_patching_from(s)
        else:
            raise InputError(f"scores: 'eap', 'eap-ig', 'exact' or an EdgeScores, got {scores!r}")
    if not isinstance(scores, EdgeScores):
        raise InputTypeError(f"scores: 'eap', 'eap-ig', 'exact' or an EdgeScores, got {type(scores).__name__}")
    if [tuple(e) for e in scores.edges] != list(g.edges):
        raise InputError("scores: computed on another graph (its edges differ from this model's graph)")
    order = torch.argsort(scores.scores.abs(), descending=True, stable=True)[:k].tolist()
    kept = [g.edges[i] for i in sorted(order)]
    edge_scores = {f"{a} -> {b}": float(scores.scores[g.edge_index[(a, b)]]) for a, b in kept}
    config: dict[str, Any] = {"method": f"top-k ({scores.method})", "k": k, **_graph_config(g, layers, groups)}
    faith = None
    if verify:
        ablated = float(s.evaluate(torch.zeros(1, g.n_edges))[0])
        gap = check_gap(s, ablated)
        full = g.mask(kept)
        masks = full[None].repeat(len(kept) + 1, 1)
        for i, e in enumerate(kept):
            masks[i + 1, g.edge_index[e]] = 0.0
        f = (s.evaluate(masks) - ablated) / gap
        faith = float(f[0])
        config["verified"] = {f"{a} -> {b}": float(f[0] - f[i + 1]) for i, (a, b) in enumerate(kept)}
        config["clean_metric"], config["ablated_metric"] = s.clean_metric, ablated
    return Circuit(circuit_nodes(kept), kept, edge_scores, s.metric.name, s.corruption, s.data, g.describe(),
                   faith, config)
