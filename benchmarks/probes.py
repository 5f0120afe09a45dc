"""Benchmark: one logistic probe per site for the 12 block outputs of a ViT vs scikit-learn.

Issue 5 target: fitting one probe per site for all 12 block outputs of a ViT (n = 20,000 training rows,
d = 192, 10 classes) >= 3x faster than 12 sequential scikit-learn ``LogisticRegression`` fits at equal test
accuracy (within 0.5 points); a single probe no slower than scikit-learn.

Data: a randomly initialised timm ``vit_tiny_patch16_224`` (d = 192, 12 blocks; built at img_size=32,
patch 8, so 17 tokens and a fast forward) on 24,000 images of 10 classes (class template + Gaussian noise),
mean-pooled block outputs ``blocks.{i}`` collected with ``HookedModel.run_with_cache``; 20,000 rows train,
4,000 test. Activations are cached at ``--cache`` (default /tmp) so reruns skip the forward.

The main comparison gives both sides the same problem: standardised features (StandardScaler for
scikit-learn, fitted on the training rows), ``C = 1 / l2 = 1``, the same gradient tolerance ``tol``
(scikit-learn's lbfgs ``gtol`` and ours are both ``max |grad|`` of the objective divided by N) and
``max_iter=1000``; one thread each (``torch.set_num_threads(1)``, threadpoolctl for numpy's BLAS). Extra
rows: scikit-learn with its default ``max_iter=100``, scikit-learn on the raw (unstandardised) features as
``LogisticRegression().fit(X, y)`` would be called, our probe at looser tolerances, and the closed-form ridge
classifier; each with its test accuracy, so "equal accuracy" can be checked.

Our sweep is ``interp_core.probes.fit_many`` (what ``probe_sites`` runs): float32 L-BFGS with analytic
gradients in a transposed layout, one site after the other, each site warm-started from the previous site's
solution when that has the lower objective (the problems are convex, so the optimum to ``tol`` is the same;
adjacent residual blocks read out alike, which about halves the iterations). Timings are medians over ``--repeats``
rounds, the variants interleaved within each round. Results go to ``benchmarks/results/probes.json``.

Run: ``python benchmarks/probes.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

N_TRAIN, N_TEST, N_CLASSES, N_BLOCKS = 20_000, 4_000, 10, 12


def make_activations(cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``X [12, 24000, 192]`` mean-pooled block outputs and ``y [24000]`` labels (cached on disk)."""
    if cache.exists():
        d = torch.load(cache, weights_only=True)
        return d["X"], d["y"]
    import timm

    from interp_core import HookedModel

    g = torch.Generator().manual_seed(0)
    n = N_TRAIN + N_TEST
    templates = torch.nn.functional.interpolate(torch.randn(N_CLASSES, 3, 4, 4, generator=g), size=32,
                                                mode="bilinear")
    y = torch.randint(N_CLASSES, (n,), generator=g)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              num_classes=N_CLASSES).eval()
    hm = HookedModel(model, example_input=torch.randn(1, 3, 32, 32))
    sites = [f"blocks.{i}" for i in range(N_BLOCKS)]
    feats: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    for i in range(0, n, 500):
        yy = y[i:i + 500]
        x = 0.35 * templates[yy] + torch.randn(len(yy), 3, 32, 32, generator=g)
        _, c = hm.run_with_cache(x, sites=sites, pool="mean")
        for s in sites:
            feats[s].append(c.features(s))
    X = torch.stack([torch.cat(feats[s]) for s in sites])
    torch.save({"X": X, "y": y}, cache)
    return X, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/interp_probe_bench_acts.pt"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "probes.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from interp_core.probes import LinearProbe, fit_many

    X, y = make_activations(args.cache)
    Xtr, Xte = X[:, :N_TRAIN].contiguous(), X[:, N_TRAIN:].contiguous()
    ytr, yte = y[:N_TRAIN].numpy(), y[N_TRAIN:].numpy()
    scalers = [StandardScaler().fit(Xtr[k].numpy()) for k in range(N_BLOCKS)]
    Str = [sc.transform(Xtr[k].numpy()) for k, sc in enumerate(scalers)]
    Ste = [sc.transform(Xte[k].numpy()) for k, sc in enumerate(scalers)]

    def sklearn_fit(ks: list[int], tol: float, max_iter: int, raw: bool = False) -> tuple[list[float], list[int]]:
        accs, iters = [], []
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for k in ks:
                tr, te = (Xtr[k].numpy(), Xte[k].numpy()) if raw else (Str[k], Ste[k])
                m = LogisticRegression(C=1.0, tol=tol, max_iter=max_iter).fit(tr, ytr)
                accs.append(float(m.score(te, yte)))
                iters.append(int(m.n_iter_[0]))
        return accs, iters

    def ours_fit(ks: list[int], tol: float, kind: str = "logistic") -> tuple[list[float], list[int]]:
        probes = [LinearProbe(kind=kind, l2=1.0, tol=tol, max_iter=1000) for _ in ks]
        fit_many(probes, [Xtr[k] for k in ks], [ytr] * len(ks))
        return [float(p.score(Xte[k], yte)) for p, k in zip(probes, ks)], [getattr(p, "n_iter_", 0) for p in probes]

    all_k = list(range(N_BLOCKS))
    variants = {
        "sklearn_12_tol1e-4": lambda: sklearn_fit(all_k, 1e-4, 1000),
        "sklearn_12_default_max_iter100": lambda: sklearn_fit(all_k, 1e-4, 100),
        "sklearn_12_raw_features_tol1e-4": lambda: sklearn_fit(all_k, 1e-4, 1000, raw=True),
        "ours_12_tol1e-4": lambda: ours_fit(all_k, 1e-4),
        "ours_12_tol3e-4": lambda: ours_fit(all_k, 3e-4),
        "ours_12_tol1e-3": lambda: ours_fit(all_k, 1e-3),
        "ours_12_ridge_classifier": lambda: ours_fit(all_k, 1e-4, "ridge_classifier"),
        "sklearn_single_tol1e-4": lambda: sklearn_fit([6], 1e-4, 1000),
        "ours_single_tol1e-4": lambda: ours_fit([6], 1e-4),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    accs: dict[str, list[float]] = {}
    iters: dict[str, list[int]] = {}
    for r in range(args.repeats):
        for name, fn in variants.items():  # interleaved: every round runs every variant once
            t = time.perf_counter()
            a, it = fn()
            times[name].append(time.perf_counter() - t)
            accs[name], iters[name] = a, it
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(f"{k}={v[-1]:.2f}s" for k, v in times.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}

    def gap(a: str, b: str) -> float:
        return float(100 * np.max(np.abs(np.array(accs[a]) - np.array(accs[b]))))

    result = {
        "setup": {"n_train": N_TRAIN, "n_test": N_TEST, "d": int(X.shape[2]), "classes": N_CLASSES,
                  "sites": N_BLOCKS, "threads": 1, "repeats": args.repeats, "C": 1.0,
                  "model": "random-init timm vit_tiny_patch16_224 (img 32, patch 8), mean-pooled blocks.{i}"},
        "median_seconds": med,
        "all_seconds": times,
        "test_accuracy": accs,
        "iterations": iters,
        "ratios": {
            "sweep_speedup_equal_tol (sklearn_12_tol1e-4 / ours_12_tol1e-4)":
                med["sklearn_12_tol1e-4"] / med["ours_12_tol1e-4"],
            "sweep_speedup_tol3e-4 (sklearn_12_tol1e-4 / ours_12_tol3e-4)":
                med["sklearn_12_tol1e-4"] / med["ours_12_tol3e-4"],
            "sweep_speedup_tol1e-3 (sklearn_12_tol1e-4 / ours_12_tol1e-3)":
                med["sklearn_12_tol1e-4"] / med["ours_12_tol1e-3"],
            "sweep_speedup_vs_sklearn_default (sklearn_12_default_max_iter100 / ours_12_tol1e-4)":
                med["sklearn_12_default_max_iter100"] / med["ours_12_tol1e-4"],
            "sweep_speedup_vs_sklearn_raw (sklearn_12_raw_features_tol1e-4 / ours_12_tol1e-4)":
                med["sklearn_12_raw_features_tol1e-4"] / med["ours_12_tol1e-4"],
            "single_speedup (sklearn_single / ours_single)":
                med["sklearn_single_tol1e-4"] / med["ours_single_tol1e-4"],
        },
        "max_test_accuracy_gap_points": {
            f"{a} vs sklearn_12_tol1e-4": gap(a, "sklearn_12_tol1e-4")
            for a in ("ours_12_tol1e-4", "ours_12_tol3e-4", "ours_12_tol1e-3", "sklearn_12_default_max_iter100",
                      "sklearn_12_raw_features_tol1e-4", "ours_12_ridge_classifier")
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({"median_seconds": med, "ratios": result["ratios"],
                      "accuracy_gaps": result["max_test_accuracy_gap_points"]}, indent=1))


if __name__ == "__main__":
    main()
