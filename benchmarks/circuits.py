"""Circuit discovery cost on the digits ViT: EAP for every edge against exact per-edge patching, and ACDC.

Model: ``vision.zoo`` ``digits-vit`` (timm VisionTransformer, 3 blocks x 4 heads: 16 nodes writing, 118
edges), 16 test "3"s as clean and 16 "8"s as corrupted inputs, metric ``logit_diff(3, 8)``. CPU, one torch
thread. Variants, timed in interleaved repetitions (:mod:`benchmarks._timing`; medians of the paired ratios
to the baseline, process CPU time beside wall time):

- ``fwd_bwd`` (baseline): one forward and one backward of the model on the clean batch;
- ``eap``: :func:`interp_core.circuits.eap` — every edge's score (including the clean and corrupted
  recording runs);
- ``eap_ig``: :func:`interp_core.circuits.eap_ig` with 5 steps;
- ``exact_stacked``: :func:`interp_core.circuits.edge_patching`, patched runs stacked 32 per forward;
- ``exact_loop``: the same numbers with one patched forward per edge (``batch_rows`` = the batch);
- ``acdc``: :func:`interp_core.circuits.acdc` at threshold 0.01 (one patched forward per tested edge).

Also recorded: Spearman correlation of EAP / EAP-IG with the exact scores, and the ACDC circuit's size and
faithfulness. Run ``python benchmarks/circuits.py``; writes ``benchmarks/results/circuits.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

try:  # run as ``python -m benchmarks.circuits`` or ``python benchmarks/circuits.py``
    from benchmarks._timing import machine, paired, pin_threads, pools
except ImportError:  # pragma: no cover
    from _timing import machine, paired, pin_threads, pools

RESULTS = Path(__file__).parent / "results"


def claims(result: dict) -> list[dict]:
    """The claims this benchmark checks (see ``python -m benchmarks``): EAP over every edge costs a small constant
    number of forward + backward passes; the exact per-edge loop and ACDC are given for reference."""
    v, cmd = result["timing"]["variants"], "python benchmarks/circuits.py"
    edges = result["edges"]
    return [
        {"claim": f"EAP scores for all {edges} edges of the digits ViT, in forward+backward passes (CPU time)",
         "value": v["eap"]["ratio_cpu"], "unit": "x", "target": "<= 5", "met": v["eap"]["ratio_cpu"] <= 5,
         "command": cmd},
        {"claim": "EAP-IG (5 steps), in forward+backward passes", "value": v["eap_ig"]["ratio_cpu"], "unit": "x",
         "target": "—", "met": None, "command": cmd},
        {"claim": "reference: exact per-edge patching loop / EAP", "value": result["exact_loop_over_eap_cpu_median"],
         "unit": "x", "target": "—", "met": None, "command": cmd},
        {"claim": "ACDC (threshold 0.01) run time, in forward+backward passes",
         "value": result["acdc_timing"]["variants"]["acdc"]["ratio_cpu"], "unit": "x", "target": "—", "met": None,
         "command": cmd},
        {"claim": f"ACDC circuit: {result['acdc_circuit']['edges']} of {edges} edges, faithfulness",
         "value": result["acdc_circuit"]["faithfulness"], "unit": "", "target": ">= 0.9",
         "met": result["acdc_circuit"]["faithfulness"] >= 0.9, "command": cmd},
    ]


def main(reps: int = 5, out: Path = RESULTS / "circuits.json") -> dict:
    pin_threads(1)
    from scipy.stats import spearmanr

    from interp_core.circuits import acdc, build_graph, eap, eap_ig, edge_patching
    from interp_core.metrics import logit_diff
    from vision import zoo

    hm = zoo.load("digits-vit")
    X, y = zoo.test_data("digits-vit")
    clean, corr = X[y == 3][:16], X[y == 8][:16]
    metric = logit_diff(3, 8)
    g = build_graph(hm)
    B = clean.shape[0]

    def fwd_bwd() -> None:
        x = clean.clone().requires_grad_(True)
        metric(hm.model(x)).mean().backward()
        hm.model.zero_grad(set_to_none=True)

    runners = {
        "fwd_bwd": fwd_bwd,
        "eap": lambda: eap(hm, clean, corr, metric, graph=g),
        "eap_ig": lambda: eap_ig(hm, clean, corr, metric, steps=5, graph=g),
        "exact_stacked": lambda: edge_patching(hm, clean, corr, metric, graph=g, batch_rows=32 * B, progress=False),
        "exact_loop": lambda: edge_patching(hm, clean, corr, metric, graph=g, batch_rows=B, progress=False),
    }
    timing = paired(runners, reps, baseline="fwd_bwd", warmup=1)
    acdc_timing = paired({"fwd_bwd": fwd_bwd, "acdc": lambda: acdc(hm, clean, corr, metric, threshold=0.01,
                                                                   graph=g, progress=False)},
                         max(2, reps // 2), baseline="fwd_bwd", warmup=1)
    exact = edge_patching(hm, clean, corr, metric, graph=g)
    e, ig = eap(hm, clean, corr, metric, graph=g), eap_ig(hm, clean, corr, metric, graph=g)
    c = acdc(hm, clean, corr, metric, threshold=0.01, graph=g)
    loop_vs_eap = [a / b for a, b in zip(timing["variants"]["exact_loop"]["cpu_s"], timing["variants"]["eap"]["cpu_s"])]
    result = {
        "model": "digits-vit", "batch": B, "nodes": len(g.nodes), "edges": g.n_edges, "metric": metric.name,
        "timing": timing, "acdc_timing": acdc_timing,
        "exact_loop_over_eap_cpu_median": sorted(loop_vs_eap)[len(loop_vs_eap) // 2],
        "fidelity": {"spearman_eap_exact": float(spearmanr(e.scores, exact.scores)[0]),
                     "spearman_eap_ig_exact": float(spearmanr(ig.scores, exact.scores)[0])},
        "acdc_circuit": {"edges": len(c.edges), "faithfulness": c.faithfulness, "threshold": 0.01},
        "threads": pools(), "machine": machine(),
    }
    result["claims"] = claims(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    r = main(args.reps)
    for name, v in {**r["timing"]["variants"], **r["acdc_timing"]["variants"]}.items():
        print(f"{name:14s} wall {v['median_wall_s'] * 1e3:9.1f} ms  cpu {v['median_cpu_s'] * 1e3:9.1f} ms  "
              f"x fwd+bwd (cpu) {v['ratio_cpu']:8.1f}")
    print("fidelity", r["fidelity"], "acdc", r["acdc_circuit"])
