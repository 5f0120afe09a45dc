"""Streaming linear CKA: the cost of the accumulator update, against plain PyTorch, and its agreement.

Features: two random-init timm ``vit_tiny_patch16_224`` (12 blocks, width 192, seeds 0 and 1; built at
``img_size=16`` so the forwards are cheap), every block output mean-pooled over tokens inside the hook, on
``--n`` random images (default 8,192 = two 4,096-row blocks) collected once in batches of ``--batch`` (512).
The 12 x 12 layer matrix over those rows is then accumulated, per repetition, by:

- ``suite``: ``LinearCKAAccumulator()`` (default: rows gathered into 4,096-row blocks, centred in float64,
  products ``A^T B``, ``A^T A``, ``B^T B`` in float32, added to float64 sums), fed the batches, then
  ``matrix()``;
- ``plain_float64``: the hand-written loop of what the accumulator did before (and what the issue measured):
  per 512-row batch, centre in float64, float64 products added to float64 sums, then the CKA from the sums;
- ``plain_float32_blocks``: the same loop by hand on 4,096-row blocks with float32 products (the floor of the
  suite's method: its overhead is the difference).

Timing (:mod:`benchmarks._timing`): one torch / BLAS thread, variants interleaved in a shuffled order per
repetition after a warm-up, process CPU time and wall time, medians of paired per-repetition ratios, load
average before and after. Agreement: the largest difference between the suite's matrix and the float64
matrix, biased and debiased (the debiased one with ``product_dtype=None`` as reference).

Run: ``python benchmarks/cka.py [--n 8192] [--batch 512] [--reps 7]``; writes ``benchmarks/results/cka.json``.
"""

from __future__ import annotations

import os
import sys

try:
    from benchmarks._timing import machine, paired, pin_threads, pools
except ImportError:  # run as a script from the benchmarks folder
    sys.path.insert(0, os.path.dirname(__file__))
    from _timing import machine, paired, pin_threads, pools

pin_threads(1)  # before numpy / torch create their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

from interp_core import HookedModel  # noqa: E402
from interp_core.similarity import LinearCKAAccumulator  # noqa: E402

RESULTS = Path(__file__).parent / "results"
COMMAND = "python benchmarks/cka.py"


def features(n: int, batch: int) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Per batch, the 12 pooled block outputs of each model (float32 ``[batch, 192]``)."""
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(HookedModel(timm.create_model("vit_tiny_patch16_224", img_size=16, pretrained=False,
                                                    num_classes=10).eval()))
    sites = [f"blocks.{i}" for i in range(12)]
    g = torch.Generator().manual_seed(0)
    fa, fb = [], []
    for _ in range(n // batch):
        x = torch.randn(batch, 3, 16, 16, generator=g)
        for m, out in zip(models, (fa, fb)):
            _, cache = m.run_with_cache(x, sites=sites, pool="mean")
            out.append([cache.features(s).float() for s in sites])
    return fa, fb


def plain(fa, fb, rows: int, product_dtype: torch.dtype) -> np.ndarray:
    """Linear CKA from float64 sums over ``rows``-row blocks with products in ``product_dtype``, by hand."""
    dims = [t.shape[1] for t in fa[0]]
    offs = np.cumsum([0, *dims])
    blocks_a, blocks_b, pend_a, pend_b, n_pend = [], [], [], [], 0
    for a, b in zip(fa, fb):
        pend_a.append(torch.cat(a, 1))
        pend_b.append(torch.cat(b, 1))
        n_pend += len(a[0])
        if n_pend >= rows:
            blocks_a.append(torch.cat(pend_a))
            blocks_b.append(torch.cat(pend_b))
            pend_a, pend_b, n_pend = [], [], 0
    if pend_a:
        blocks_a.append(torch.cat(pend_a))
        blocks_b.append(torch.cat(pend_b))
    shift_a, shift_b = blocks_a[0].double().mean(0), blocks_b[0].double().mean(0)
    D = offs[-1]
    xy = torch.zeros(D, D, dtype=torch.float64)
    xx = [torch.zeros(d, d, dtype=torch.float64) for d in dims]
    yy = [torch.zeros(d, d, dtype=torch.float64) for d in dims]
    sa, sb, n = torch.zeros(D, dtype=torch.float64), torch.zeros(D, dtype=torch.float64), 0
    for A, B in zip(blocks_a, blocks_b):
        A, B = A.double() - shift_a, B.double() - shift_b
        sa += A.sum(0)
        sb += B.sum(0)
        n += len(A)
        A, B = A.to(product_dtype), B.to(product_dtype)
        xy += (A.T @ B).double()
        for k in range(len(dims)):
            s = slice(offs[k], offs[k + 1])
            xx[k] += (A[:, s].T @ A[:, s]).double()
            yy[k] += (B[:, s].T @ B[:, s]).double()

    def hsic(G, s1, s2):
        return float(((G - torch.outer(s1, s2) / n) ** 2).sum())

    sl = [slice(offs[k], offs[k + 1]) for k in range(len(dims))]
    hx = [hsic(xx[k], sa[sl[k]], sa[sl[k]]) for k in range(len(dims))]
    hy = [hsic(yy[k], sb[sl[k]], sb[sl[k]]) for k in range(len(dims))]
    return np.array([[hsic(xy[sl[i], sl[j]], sa[sl[i]], sb[sl[j]]) / np.sqrt(hx[i] * hy[j])
                      for j in range(len(dims))] for i in range(len(dims))])


def suite(fa, fb, **kw) -> np.ndarray:
    acc = LinearCKAAccumulator(**kw)
    for a, b in zip(fa, fb):
        acc.update(a, b)
    return acc.matrix()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    fa, fb = features(args.n, args.batch)
    n = len(fa) * args.batch
    M = suite(fa, fb)
    agreement = {
        "biased_vs_float64_products": float(np.abs(M - suite(fa, fb, product_dtype=None)).max()),
        "biased_vs_plain_float64_loop": float(np.abs(M - plain(fa, fb, args.batch, torch.float64)).max()),
        "debiased_vs_float64_products": float(np.abs(suite(fa, fb, debiased=True) - suite(
            fa, fb, debiased=True, product_dtype=None)).max()),
        "suite_vs_plain_float32_blocks": float(np.abs(M - plain(fa, fb, 4096, torch.float32)).max()),
    }
    runners = {
        "suite": lambda: suite(fa, fb),
        "plain_float64": lambda: plain(fa, fb, args.batch, torch.float64),
        "plain_float32_blocks": lambda: plain(fa, fb, 4096, torch.float32),
    }
    load_before = os.getloadavg()
    timing = paired(runners, args.reps, baseline="suite", warmup=1)
    v = timing["variants"]
    speedup = {clock: v["plain_float64"][f"ratio_{clock}"] for clock in ("cpu", "wall")}  # plain time / suite time
    overhead = {clock: 1.0 / v["plain_float32_blocks"][f"ratio_{clock}"] for clock in ("cpu", "wall")}
    worst = max(agreement["biased_vs_float64_products"], agreement["debiased_vs_float64_products"])
    results = {
        "machine": machine(), "threads": pools(),
        "setup": {"models": "2 x random-init timm vit_tiny_patch16_224 (12 blocks, d=192), img_size=16, seeds 0/1",
                  "sites": "blocks.0..11 output, mean-pooled over tokens (12 + 12 layers, 2,304 + 2,304 features)",
                  "rows": n, "batch": args.batch, "reps": args.reps},
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "timing": timing,
        "suite_speedup_vs_plain_float64": speedup,
        "suite_time_vs_plain_float32_blocks": overhead,
        "agreement_max_abs_diff": agreement,
        "cka_matrix": M.tolist(),
        "claims": [
            {"claim": f"LinearCKAAccumulator update + matrix vs plain float64 products on {args.batch}-row batches "
                      f"(12 x 12 ViT layers, d=192, n={n}; CPU time, wall {speedup['wall']:.2f})",
             "value": speedup["cpu"], "unit": "x", "target": ">= 2.0", "met": speedup["cpu"] >= 2.0,
             "command": COMMAND},
            {"claim": "LinearCKAAccumulator time vs the same float32-block method written by hand (CPU time, wall "
                      f"{overhead['wall']:.2f})",
             "value": overhead["cpu"], "unit": "x", "target": "<= 1.1", "met": overhead["cpu"] <= 1.1,
             "command": COMMAND},
            {"claim": "largest |CKA(float32 blocks) - CKA(float64 products)|, biased and debiased, 12 x 12",
             "value": worst, "unit": "", "target": "<= 1e-6", "met": worst <= 1e-6, "command": COMMAND},
        ],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cka.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({"speedup": speedup, "overhead": overhead, "agreement": agreement}, indent=1))


if __name__ == "__main__":
    main()
