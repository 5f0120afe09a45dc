"""The circuits stage of ``interp demo``: the digits ViT's 3-vs-8 circuit (issue 13's demo section).

On the graph of the digits ViT (:func:`interp_core.circuits.build_graph`: the embedding, every attention head
``blocks.i.attn.z[h]``, every MLP and the logits as nodes; an edge from every writer to every later reader of
the residual stream), with clean = images of a 3, corrupted = paired images of an 8 and the metric
logit(3) - logit(8):

- edge attribution patching (EAP, Syed et al. 2023: one forward and one backward) against exact per-edge
  patching, as a rank correlation;
- ACDC pruning (Conmy et al. 2023) to a circuit, drawn as a layered graph, with its faithfulness
  ``(m(circuit) - m(corrupted)) / (m(clean) - m(corrupted))``;
- the faithfulness curve of the top-k edges by EAP-IG against random circuits of the same size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def circuit_stage(report: Any, quick: bool = False) -> None:
    """Find, draw and check the digits ViT's 3-vs-8 circuit; adds two sections to ``report``."""
    import matplotlib.pyplot as plt
    from scipy.stats import spearmanr

    from interp_core.circuits import acdc, build_graph, eap, eap_ig, edge_patching, faithfulness_curve
    from interp_core.metrics import logit_diff

    from . import zoo

    n_pairs, n_random = (16, 10) if quick else (32, 20)
    vit = zoo.load("digits-vit")
    x, y = zoo.test_data("digits-vit")
    three, eight = x[y == 3], x[y == 8]
    n = min(len(three), len(eight), n_pairs)
    clean, corrupted = three[:n], eight[:n]
    metric = logit_diff(3, 8)
    graph = build_graph(vit)
    fast = eap(vit, clean, corrupted, metric, graph=graph)
    exact = edge_patching(vit, clean, corrupted, metric, graph=graph, progress=False)
    rho = float(spearmanr(fast.scores.numpy(), exact.scores.numpy()).statistic)
    circuit = acdc(vit, clean, corrupted, metric, threshold=0.01, graph=graph)
    report.add("Circuits: the digits ViT's 3-vs-8 circuit (EAP and ACDC)", text=(
        f"A graph over the digits ViT with {len(graph.nodes)} nodes (embedding, 12 heads, 3 MLPs, logits) and "
        f"{graph.n_edges} edges (every writer to every later reader of the residual stream). Clean: {n} images "
        "of a 3; corrupted: paired images of an 8; metric logit(3) - logit(8). Edge attribution patching (one "
        f"forward and one backward) ranks the edges with Spearman {rho:.2f} against exact per-edge patching. "
        f"ACDC (threshold 0.01) keeps {len(circuit.edges)} of the {graph.n_edges} edges; run alone, with every "
        f"other edge fed from the corrupted run, they recover {circuit.faithfulness:.0%} of the clean-minus-"
        "corrupted metric (faithfulness)."),
        figure=circuit.plot(ax=plt.subplots(figsize=(9.5, 3.8))[1]),
        caption="The ACDC circuit: kept edges in blue (width: effect), pruned edges and unused nodes in grey; "
                "layers left to right, logits at the right.",
        table=[{"edge": f"{s} -> {r}", "EAP score": float(v)} for (s, r), v in fast.top(10)],
        numbers={"n_edges": graph.n_edges, "circuit_edges": len(circuit.edges),
                 "faithfulness": circuit.faithfulness, "spearman_eap_vs_exact": rho,
                 "edges": [list(e) for e in circuit.edges]})

    scores = eap_ig(vit, clean, corrupted, metric, graph=graph)
    sizes = sorted({2, 5, 10, 20, len(circuit.edges), 40, 80, graph.n_edges})
    curve = faithfulness_curve(vit, scores, clean, corrupted, metric, sizes=sizes, n_random=n_random, graph=graph)
    at = sizes.index(len(circuit.edges))
    report.add("Circuits: faithfulness against random circuits", text=(
        "Faithfulness of the top-k edges by EAP-IG (5 integration steps), for growing k, beside random circuits "
        f"of the same size ({n_random} draws: mean and one standard deviation). At the ACDC circuit's size "
        f"({len(circuit.edges)} edges) the top edges recover {float(curve.faithfulness[at]):.0%} and random ones "
        f"{float(curve.random_mean[at]):.0%}: which edges are kept matters, not only how many."),
        figure=curve.plot(),
        table=[{"edges": int(s), "top-k by EAP-IG": float(f), "random (mean)": float(r), "random (std)": float(d)}
               for s, f, r, d in zip(curve.sizes, curve.faithfulness, curve.random_mean, curve.random_std)],
        numbers=curve.to_dict())


def stages(quick: bool = False) -> list[tuple[str, Callable[[Any], None]]]:
    """The circuits stage as ``(name, fn(report))``."""
    return [("3-vs-8 circuit", lambda report: circuit_stage(report, quick))]
