"""Patching throughput: batched exact patching and attribution patching against the one-forward-per-patch loop.

Sweeps (CPU, one thread, one clean/corrupted pair, every layer x every unit):

- the tiny digits ViT of ``vision.zoo`` (``digits-vit``): the residual stream at every layer (``blocks.{i}.resid_pre``
  and the last ``resid_post``) x every token;
- the CartPole policy MLP of ``rl.zoo`` (``cartpole-ppo``): every hidden layer x every unit;
- timm ``vit_tiny_patch16_224`` at random init (12 blocks x 197 tokens).

For each: patches/s of ``patch_sweep`` (patches stacked along the batch, each patched run starting at the
patched layer), of the loop (one ``run_with_interventions`` per patch; on vit_tiny timed on a stratified
subset of 12 x 16 patches, since it costs a full forward per patch whatever the unit), of
``attribution_patching``, and of nnsight's per-patch trace when the ``bench`` extra is installed.
Small models: interleaved repetitions, medians. Targets (issue 5): batched >= 5x the loop on the small
models; prefix reuse >= 1.7x the loop on vit_tiny (compute floor ~1.85x); attribution >= 100x the loop.

Run: ``python benchmarks/patching.py``; writes ``benchmarks/results/patching.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import timm
import torch

from interp_core import HookedModel
from interp_core.interventions import Patch
from interp_core.metrics import logit_diff
from interp_core.patching import attribution_patching, patch_sweep

RESULTS = Path(__file__).parent / "results"


def loop(hm, clean, corrupted, sites, metric, units_per_site=None):
    """One forward per patch; returns the number of patches done."""
    _, cc = hm.run_with_cache(clean, sites=sites)
    n = 0
    with torch.no_grad():
        for s in sites:
            axes = hm.sites[s].axes
            if "pos" in axes:
                count = cc[s].shape[axes.index("pos")]
                units = range(count) if units_per_site is None else \
                    torch.linspace(0, count - 1, units_per_site).long().tolist()
                for u in units:
                    metric(hm.run_with_interventions(corrupted, {s: Patch(cc, positions=u)}))
                    n += 1
            else:
                for u in range(cc[s].shape[-1]):
                    metric(hm.run_with_interventions(corrupted, {s: Patch(cc, features=[u])}))
                    n += 1
    return n


def nnsight_loop(model, clean, corrupted, paths, units_per_site=None):
    try:
        import nnsight
        from nnsight import NNsight
    except ImportError:
        return None
    nm = NNsight(model)
    envoys = []
    for p in paths:
        e = nm
        for part in p.split("."):
            e = e[int(part)] if part.isdigit() else getattr(e, part)
        envoys.append(e)
    with torch.no_grad():
        with nm.trace(clean):
            clean_acts = nnsight.save([])  # nnsight >= 0.5: a saved container, filled inside the trace
            for e in envoys:
                clean_acts.append(e.output)
    n = 0
    with torch.no_grad():
        for e, act in zip(envoys, clean_acts):
            count = act.shape[1]
            units = range(count) if units_per_site is None else \
                torch.linspace(0, count - 1, units_per_site).long().tolist()
            for u in units:
                with nm.trace(corrupted):
                    e.output[:, u] = act[:, u]
                    nm.output.save()
                n += 1
    return n


def timed(fn):
    """(return value, seconds) of one call."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench(name, hm, clean, corrupted, sites, metric, reps, loop_units=None, with_nnsight=False):
    hm.trace(clean)
    n_total = sum(hm.sites[s].shape[hm.sites[s].axes.index("pos") - 1] if "pos" in hm.sites[s].axes
                  else hm.sites[s].shape[-1] for s in sites)
    methods = {
        "batched_prefix_reuse": lambda: patch_sweep(hm, clean, corrupted, sites, metric, progress=False) and n_total,
        "batched_no_reuse": lambda: patch_sweep(hm, clean, corrupted, sites, metric, reuse_prefix=False,
                                                progress=False) and n_total,
        "loop": lambda: loop(hm, clean, corrupted, sites, metric, loop_units),
        "attribution": lambda: attribution_patching(hm, clean, corrupted, sites, metric) and n_total,
    }
    if with_nnsight:
        methods["nnsight_loop"] = lambda: nnsight_loop(hm.model, clean, corrupted, sites, loop_units)
    runs = {k: [] for k in methods}
    for _ in range(reps):
        for k, fn in methods.items():
            n, t = timed(fn)
            runs[k].append(n / t)
    med = {k: statistics.median(v) for k, v in runs.items() if v}
    return {"model": name, "sites": len(sites), "patches_in_grid": n_total, "reps": reps,
            "patches_per_s": med, "speedup_vs_loop": {k: v / med["loop"] for k, v in med.items() if k != "loop"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-large", action="store_true", help="skip vit_tiny_patch16_224")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        import nnsight  # noqa: F401
        have_nnsight = True
    except ImportError:
        have_nnsight = False

    import rl.zoo
    import vision.zoo

    results = {"machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1},
               "sweeps": []}
    hm = vision.zoo.load("digits-vit")  # the vision adapter's canonical residual-stream sites
    X, y = vision.zoo.test_data("digits-vit")
    j = int((y != y[0]).nonzero()[0, 0])
    clean, corrupted = X[:1], X[j][None]
    sites = [f"blocks.{i}.resid_pre" for i in range(3)] + ["blocks.2.resid_post"]  # every layer of the stream
    results["sweeps"].append(bench("vision.zoo:digits-vit", hm, clean, corrupted, sites,
                                   logit_diff(int(y[0]), int(y[j])), args.reps, with_nnsight=False))
    hp = rl.zoo.load("cartpole-ppo")  # an rl Agent is a HookedModel
    obs = torch.tensor([[0.0, 0.1, 0.02, -0.1], [0.1, -0.3, -0.05, 0.2]])
    psites = [n for n in hp.sites.names if n.startswith(("policy.", "value.")) and hp.sites[n].axes]
    results["sweeps"].append(bench("rl.zoo:cartpole-ppo", hp, obs[:1], obs[1:], psites, logit_diff(0, 1),
                                   args.reps))
    if not args.skip_large:
        big = timm.create_model("vit_tiny_patch16_224").eval()
        hb = HookedModel(big)
        g = torch.Generator().manual_seed(0)
        c, k = torch.randn(1, 3, 224, 224, generator=g), torch.randn(1, 3, 224, 224, generator=g)
        results["sweeps"].append(bench("timm:vit_tiny_patch16_224", hb, c, k, [f"blocks.{i}" for i in range(12)],
                                       logit_diff(0, 1), 1, loop_units=16, with_nnsight=have_nnsight))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "patching.json").write_text(json.dumps(results, indent=1))
    for r in results["sweeps"]:
        print(r["model"], {k: round(v, 1) for k, v in r["speedup_vs_loop"].items()})


if __name__ == "__main__":
    main()
