"""Benchmark: a probe sweep (4 sites x 3 variables) with ``fit_many`` vs sequential scikit-learn (issue 17).

Setting (issue 17): 12 multinomial logistic probes, the block outputs ``blocks.{2,5,8,11}`` (mean-pooled,
d = 192) of a randomly initialised timm ``vit_tiny_patch16_224`` (img 32, patch 8) read out for three
variables of 10, 6 and 4 classes planted in the images (three template sets + Gaussian noise); 20,000
training rows, 4,000 test rows. Both sides solve the same problem: standardised features (StandardScaler
fitted on the training rows, precomputed outside scikit-learn's timing), ``C = 1 / l2 = 1``, gradient
tolerance ``tol = 1e-4`` (scikit-learn's lbfgs ``gtol`` and ours are both ``max |grad|`` of the objective
divided by N), ``max_iter = 1000``; every BLAS and torch pool at one thread (``pin_threads(1)``, and
``threadpool_limits(1)`` around each fit); the pools are recorded in the results.

Variants, each timed per site (the three probes of one site) and interleaved with the others within the
site, so a site is one paired repetition (``_timing.paired``, shuffled order, wall and CPU time):

- ``sklearn``: three ``LogisticRegression(C=1, tol=1e-4, max_iter=1000).fit`` calls (float64 lbfgs);
- ``ours``: ``fit_many`` on the three probes (default: whitened coordinates, one wide product per
  evaluation for the three variables, float32 products) — what ``probe_sites`` runs;
- levers, one at a time: ``ours_separate`` (``joint=False``: the three probes one after the other, still
  whitened), ``ours_float64`` (``dtype="float64"`` products), ``ours_plain`` (``precondition=False,
  joint=False``: L-BFGS in the original coordinates, one probe at a time);
- ``ours_single``: the 10-class probe alone, against scikit-learn's time for that fit (each scikit-learn fit
  inside the ``sklearn`` variant is timed on its own).

Reported: per-variant wall and CPU seconds per site, the sweep ratio (sklearn total / ours total over the
four sites) and the median of the per-site paired ratios, L-BFGS iterations of every probe on both sides,
test accuracies and the largest accuracy gap, and, recomputed independently in float64 numpy for every
probe, the objective and ``max |grad|`` at both solutions; an untimed reference optimum (``fit_many`` in
float64 at ``tol = 1e-7``) shows how far each side's ``tol = 1e-4`` accuracies are from the exact
optimum's. The scikit-learn variant dominates the run time (one sweep, ~40 s to ~2 min on a loaded 2-core
machine), so each variant runs once per site: 4 paired repetitions. Activations are cached at ``--cache``
(the first run also collects them: ~3.5 min at one thread).

Run: ``python benchmarks/probes.py`` (writes ``benchmarks/results/probes.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import machine, paired, pin_threads, pools  # noqa: E402

pin_threads(1)

import numpy as np  # noqa: E402
import torch  # noqa: E402

N_TRAIN, N_TEST = 20_000, 4_000
SITES = (2, 5, 8, 11)
CLASSES = (10, 6, 4)
TOL, C = 1e-4, 1.0
COMMAND = "python benchmarks/probes.py"
RESULTS = Path(__file__).parent / "results" / "probes.json"


def make_activations(cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``X [4, 24000, 192]`` mean-pooled block outputs and ``y [3, 24000]`` labels (cached on disk)."""
    if cache.exists():
        d = torch.load(cache, weights_only=True)
        return d["X"], d["y"]
    import timm

    from interp_core import HookedModel

    g = torch.Generator().manual_seed(0)
    n = N_TRAIN + N_TEST
    # one template set per variable, at different spatial scales, summed with noise
    temps = [torch.nn.functional.interpolate(torch.randn(k, 3, r, r, generator=g), size=32, mode="bilinear")
             for k, r in zip(CLASSES, (4, 2, 8))]
    ys = torch.stack([torch.randint(k, (n,), generator=g) for k in CLASSES])
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              num_classes=10).eval()
    hm = HookedModel(model, example_input=torch.randn(1, 3, 32, 32))
    sites = [f"blocks.{i}" for i in SITES]
    feats: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    with torch.no_grad():
        for i in range(0, n, 500):
            sl = slice(i, i + 500)
            x = sum(a * t[ys[j, sl]] for j, (a, t) in enumerate(zip((0.35, 0.3, 0.3), temps)))
            x = x + torch.randn(x.shape, generator=g)
            _, c = hm.run_with_cache(x, sites=sites, pool="mean")
            for s in sites:
                feats[s].append(c.features(s))
    X = torch.stack([torch.cat(feats[s]) for s in sites])
    torch.save({"X": X, "y": ys}, cache)
    return X, ys


def objective(Xs: np.ndarray, y: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> tuple[float, float]:
    """``(f, max |grad f|)`` of scikit-learn's objective ``mean CE + ||W||^2 / (2 C n)`` at a solution in
    standardised coordinates, in float64 numpy (independent of both solvers)."""
    n = len(y)
    Z = Xs @ coef.T + intercept
    Z -= Z.max(1, keepdims=True)
    logp = Z - np.log(np.exp(Z).sum(1, keepdims=True))
    f = -logp[np.arange(n), y].mean() + 0.5 / (C * n) * float((coef ** 2).sum())
    G = np.exp(logp)
    G[np.arange(n), y] -= 1.0
    G /= n
    gW = G.T @ Xs + coef / (C * n)
    return float(f), float(max(np.abs(gW).max(), np.abs(G.sum(0)).max()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/interp_probe_bench_sweep.pt"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from interp_core.probes import LinearProbe, fit_many

    X, Y = make_activations(args.cache)
    Xtr, Xte = X[:, :N_TRAIN].contiguous(), X[:, N_TRAIN:].contiguous()
    Ytr, Yte = Y[:, :N_TRAIN].numpy(), Y[:, N_TRAIN:].numpy()
    n_var = len(CLASSES)

    # warm-up (torch kernels, allocator) on a slice, untimed
    fit_many([LinearProbe(l2=1 / C, tol=TOL) for _ in range(n_var)], [Xtr[0, :2000]] * n_var,
             [y[:2000] for y in Ytr])

    out: dict[str, dict] = {}  # variant -> {(site, var): (accuracy, iterations, solution)}

    def sklearn(s: int, sc: StandardScaler, variables: tuple[int, ...], key: str) -> None:
        tr = sc.transform(Xtr[s].numpy())
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for v in variables:
                t = time.perf_counter()
                m = LogisticRegression(C=C, tol=TOL, max_iter=1000).fit(tr, Ytr[v])
                out[key][(s, v)] = (m.coef_, m.intercept_, int(m.n_iter_[0]), time.perf_counter() - t)

    def ours(s: int, variables: tuple[int, ...], key: str, **kw: object) -> None:
        dtype = kw.pop("dtype", "float32")
        probes = [LinearProbe(l2=1 / C, tol=TOL, max_iter=1000, dtype=dtype) for _ in variables]
        with threadpool_limits(1):
            fit_many(probes, [Xtr[s]] * len(variables), [Ytr[v] for v in variables], **kw)
        for p, v in zip(probes, variables):
            out[key][(s, v)] = p

    all_v = tuple(range(n_var))
    names = ["sklearn", "ours", "ours_separate", "ours_float64", "ours_plain", "ours_single"]
    out.update({k: {} for k in names})
    per_site = []
    for s in range(len(SITES)):
        # the scaler is fitted outside the timed region (the suite's fit_many includes its standardisation)
        sc = StandardScaler().fit(Xtr[s].numpy())
        runners = {
            "sklearn": lambda s=s, sc=sc: sklearn(s, sc, all_v, "sklearn"),
            "ours": lambda s=s: ours(s, all_v, "ours"),
            "ours_separate": lambda s=s: ours(s, all_v, "ours_separate", joint=False),
            "ours_float64": lambda s=s: ours(s, all_v, "ours_float64", dtype="float64"),
            "ours_plain": lambda s=s: ours(s, all_v, "ours_plain", precondition=False, joint=False),
            "ours_single": lambda s=s: ours(s, (0,), "ours_single"),
        }
        r = paired(runners, reps=1, baseline="sklearn", warmup=0, seed=s)
        per_site.append(r)
        print(f"site blocks.{SITES[s]}: " + ", ".join(f"{k} {v['median_wall_s']:.2f}s"
                                                    for k, v in r["variants"].items()), flush=True)

    wall = {k: [r["variants"][k]["median_wall_s"] for r in per_site] for k in names}
    cpu = {k: [r["variants"][k]["median_cpu_s"] for r in per_site] for k in names}
    total = {k: float(sum(v)) for k, v in wall.items()}
    total_cpu = {k: float(sum(v)) for k, v in cpu.items()}
    # the 10-class probe alone: scikit-learn's time for that fit inside its sweep (timed per fit)
    sk_single = [out["sklearn"][(s, 0)][3] for s in range(len(SITES))]
    total["sklearn_single (10-class fits inside the sklearn sweep)"] = float(sum(sk_single))

    def paired_median(num: str, den: str) -> float:
        return statistics.median(a / b for a, b in zip(wall[num], wall[den]))

    # reference optimum (untimed): float64 products, tol 1e-7; where the tol-1e-4 fits of both sides stand
    out["reference"] = {}
    for s in range(len(SITES)):
        probes = [LinearProbe(l2=1 / C, tol=1e-7, max_iter=5000, dtype="float64") for _ in all_v]
        fit_many(probes, [Xtr[s]] * n_var, [Ytr[v] for v in all_v])
        out["reference"].update({(s, v): p for v, p in zip(all_v, probes)})

    # accuracies, iterations, objective and gradient at every solution (float64, independent of both solvers)
    table = []
    for s in range(len(SITES)):
        sc = StandardScaler().fit(Xtr[s].numpy())
        tr, te = sc.transform(Xtr[s].numpy()), sc.transform(Xte[s].numpy())
        for v in all_v:
            row = {"site": f"blocks.{SITES[s]}", "classes": CLASSES[v]}
            coef, icpt, it, _ = out["sklearn"][(s, v)]
            row["sklearn_iterations"] = it
            row["sklearn_test_accuracy"] = float(((te @ coef.T + icpt).argmax(1) == Yte[v]).mean())
            row["sklearn_objective"], row["sklearn_max_grad"] = objective(tr, Ytr[v], coef, icpt)
            for k in ("ours", "ours_separate", "ours_float64", "ours_plain", "reference"):
                p = out[k][(s, v)]
                c_std = p.coef_.numpy() * sc.scale_  # standardised coordinates
                i_std = p.intercept_.numpy() + p.coef_.numpy() @ sc.mean_
                row[f"{k}_iterations"] = int(p.n_iter_)
                row[f"{k}_test_accuracy"] = float(np.mean(p.predict(Xte[s]) == Yte[v]))
                row[f"{k}_objective"], row[f"{k}_max_grad"] = objective(tr, Ytr[v], c_std, i_std)
            table.append(row)

    def gap(k: str, ref: str = "sklearn") -> float:  # accuracies are counts / N_TEST: round off the float noise
        return round(100 * max(abs(r[f"{k}_test_accuracy"] - r[f"{ref}_test_accuracy"]) for r in table), 9)

    speedup = total["sklearn"] / total["ours"]
    acc_gap = gap("ours")
    iters = {k: [r[f"{k}_iterations"] for r in table] for k in ("sklearn", "ours", "ours_separate", "ours_plain")}
    results = {
        "machine": machine(), "pools": pools(),
        "setup": {"n_train": N_TRAIN, "n_test": N_TEST, "d": int(X.shape[2]), "sites": [f"blocks.{i}" for i in SITES],
                  "variables_classes": list(CLASSES), "probes": len(table), "tol": TOL, "C": C, "max_iter": 1000,
                  "threads": 1, "repetitions": "each variant once per site, interleaved (4 paired repetitions)",
                  "model": "random-init timm vit_tiny_patch16_224 (img 32, patch 8), mean-pooled blocks.{2,5,8,11}"},
        "wall_s_per_site": wall, "cpu_s_per_site": cpu, "total_wall_s": total, "total_cpu_s": total_cpu,
        "ratios": {
            "sweep: sklearn / ours (total wall)": speedup,
            "sweep: sklearn / ours (total cpu)": total_cpu["sklearn"] / total_cpu["ours"],
            "sweep: median per-site paired ratio sklearn / ours": paired_median("sklearn", "ours"),
            "lever joint: ours_separate / ours": total["ours_separate"] / total["ours"],
            "lever float32: ours_float64 / ours": total["ours_float64"] / total["ours"],
            "lever whitening: ours_plain / ours_separate": total["ours_plain"] / total["ours_separate"],
            "single 10-class probe: sklearn_single / ours_single":
                total["sklearn_single (10-class fits inside the sklearn sweep)"] / total["ours_single"],
        },
        "iterations_per_probe": {k: {"values": v, "median": float(np.median(v)), "max": int(max(v))}
                                 for k, v in iters.items()},
        "max_test_accuracy_gap_points": {k: gap(k) for k in ("ours", "ours_separate", "ours_float64", "ours_plain")},
        "max_test_accuracy_gap_to_reference_optimum_points (float64, tol 1e-7)": {
            k: gap(k, "reference") for k in ("sklearn", "ours", "ours_plain")},
        "max_relative_objective_excess_vs_sklearn": {
            k: float(max((r[f"{k}_objective"] - r["sklearn_objective"]) / r["sklearn_objective"] for r in table))
            for k in ("ours", "ours_separate", "ours_float64", "ours_plain")},
        "probes": table,
    }
    results["claims"] = [
        {"claim": "probe sweep, 12 logistic probes (4 sites x 3 variables of 10/6/4 classes, n 20,000, d 192), "
                  "fit_many vs sequential sklearn LogisticRegression at equal tol 1e-4, one thread, total wall",
         "value": speedup, "unit": "x", "target": ">= 5", "met": speedup >= 5, "command": COMMAND},
        {"claim": "largest test-accuracy gap over the 12 probes, fit_many vs sklearn (tol 1e-4)",
         "value": acc_gap, "unit": " pt", "target": "<= 0.2", "met": acc_gap <= 0.2, "command": COMMAND},
        {"claim": "single 10-class probe (LinearProbe.fit) vs sklearn LogisticRegression, tol 1e-4, total wall",
         "value": results["ratios"]["single 10-class probe: sklearn_single / ours_single"], "unit": "x",
         "target": ">= 1", "met": results["ratios"]["single 10-class probe: sklearn_single / ours_single"] >= 1,
         "command": COMMAND},
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({"pools": results["pools"], "total_wall_s": total, "ratios": results["ratios"],
                      "iterations_median": {k: v["median"] for k, v in results["iterations_per_probe"].items()},
                      "accuracy_gap_points": results["max_test_accuracy_gap_points"],
                      "accuracy_gap_to_reference": results[
                          "max_test_accuracy_gap_to_reference_optimum_points (float64, tol 1e-7)"],
                      "objective_excess": results["max_relative_objective_excess_vs_sklearn"]}, indent=1))


if __name__ == "__main__":
    main()
