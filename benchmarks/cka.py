"""Layer x layer linear CKA between two 12-layer ViTs on n = 50,000 pooled activations, streamed.

Two random-init timm ``vit_tiny_patch16_224`` (12 blocks, width 192; built at ``img_size=16`` so a forward is
cheap: CLS + 1 patch token; seeds 0 and 1) run over 100 batches of 500 random images. Each block output is
mean-pooled over tokens inside the hook, and the 12 x 12 CKA matrix is accumulated by
``LinearCKAAccumulator`` (exact full-data linear CKA in feature space: memory is the accumulated
``(12*192)^2`` cross-product, independent of n; no n x n matrix, no stored rows). Also ``MinibatchCKA``
(Nguyen et al. 2021, debiased, batch 500) on the same batches.

Per batch (interleaved, one torch thread): bare forward of each model, the forward that caches the 12 pooled
sites, each accumulator's update. Reported: medians, the ratio of CKA-update time to the bare forwards of both
models (what produces the activations), totals, the accumulator state size vs an n x n float64 Gram matrix,
the process's peak RSS (before, after 10 batches, at the end: flat once the first batches are done, i.e.
bounded by d, not n), and a check of the streamed matrix against ``cka()`` on the first 5,000 rows.

Run: ``python benchmarks/cka.py [--n 50000] [--batch 500]``; writes ``benchmarks/results/cka.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import timm
import torch

from interp_core import HookedModel
from interp_core.similarity import LinearCKAAccumulator, MinibatchCKA, cka

RESULTS = Path(__file__).parent / "results"


def _state_bytes(acc) -> int:
    return sum(v.numel() * v.element_size() for v in vars(acc).values() if isinstance(v, torch.Tensor)) + sum(
        t.numel() * t.element_size() for v in vars(acc).values() if isinstance(v, list)
        for t in v if isinstance(t, torch.Tensor))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--check-rows", type=int, default=5000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(HookedModel(timm.create_model("vit_tiny_patch16_224", img_size=16, pretrained=False,
                                                    num_classes=10).eval()))
    sites = [f"blocks.{i}" for i in range(12)]
    g = torch.Generator().manual_seed(0)
    exact, minibatch = LinearCKAAccumulator(), MinibatchCKA(debiased=True)
    t = {k: [] for k in ("bare_a", "bare_b", "cached_a", "cached_b", "update_exact", "update_minibatch")}
    check_x, check_y = [], []
    rss10 = 0
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n_batches = args.n // args.batch
    for i in range(n_batches):
        x = torch.randn(args.batch, 3, 16, 16, generator=g)
        with torch.no_grad():
            for key, m in (("bare_a", models[0]), ("bare_b", models[1])):
                s = time.perf_counter()
                m(x)
                t[key].append(time.perf_counter() - s)
        feats = []
        for key, m in (("cached_a", models[0]), ("cached_b", models[1])):
            s = time.perf_counter()
            _, cache = m.run_with_cache(x, sites=sites, pool="mean")
            t[key].append(time.perf_counter() - s)
            feats.append([cache.features(n) for n in sites])
        for key, acc in (("update_exact", exact), ("update_minibatch", minibatch)):
            s = time.perf_counter()
            acc.update(feats[0], feats[1])
            t[key].append(time.perf_counter() - s)
        if len(check_x) * args.batch < args.check_rows:
            check_x.append(feats[0])
            check_y.append(feats[1])
        if i == 9:
            rss10 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    M, Mmb = exact.matrix(), minibatch.matrix()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cx = [torch.cat([b[k] for b in check_x]) for k in range(12)]
    cy = [torch.cat([b[k] for b in check_y]) for k in range(12)]
    sub = LinearCKAAccumulator().update(cx, cy).matrix()
    direct = np.array([[cka(a, b) for b in cy] for a in cx])
    med = {k: statistics.median(v) for k, v in t.items()}
    bare = med["bare_a"] + med["bare_b"]
    results = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1,
                    "processor": platform.processor() or platform.machine()},
        "setup": {"models": "2 x random-init timm vit_tiny_patch16_224 (12 blocks, d=192), img_size=16, seeds 0/1",
                  "sites": "blocks.0..11 output, mean-pooled over tokens", "n": n_batches * args.batch,
                  "batch": args.batch, "batches": n_batches},
        "median_seconds_per_batch": med,
        "total_seconds": {k: sum(v) for k, v in t.items()},
        "ratio_update_exact_to_bare_forwards": med["update_exact"] / bare,
        "ratio_update_minibatch_to_bare_forwards": med["update_minibatch"] / bare,
        "ratio_cached_forwards_to_bare_forwards": (med["cached_a"] + med["cached_b"]) / bare,
        "memory": {"exact_accumulator_state_bytes": _state_bytes(exact),
                   "n_by_n_float64_gram_bytes": (n_batches * args.batch) ** 2 * 8,
                   "peak_rss_bytes_before_loop": rss0 * 1024,
                   "peak_rss_bytes_after_10_batches": rss10 * 1024 if n_batches >= 10 else None,
                   "peak_rss_bytes_after_loop": rss1 * 1024},
        "cka_matrix_exact": M.tolist(),
        "cka_matrix_minibatch_debiased": Mmb.tolist(),
        "max_abs_diff_exact_vs_minibatch": float(np.abs(M - Mmb).max()),
        "check_first_rows": {"rows": int(cx[0].shape[0]),
                             "max_abs_diff_streamed_vs_direct_cka": float(np.abs(sub - direct).max())},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cka.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in ("median_seconds_per_batch", "ratio_update_exact_to_bare_forwards",
                                              "ratio_update_minibatch_to_bare_forwards", "memory",
                                              "max_abs_diff_exact_vs_minibatch", "check_first_rows")}, indent=1))


if __name__ == "__main__":
    main()
