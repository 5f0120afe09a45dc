"""Overhead of caching activations, and store write throughput.

On timm ``vit_tiny_patch16_224`` and torchvision ``resnet18`` (random init, batch 8, 224x224, CPU, one
thread), times a bare forward and a forward that caches every block output (``HookedModel.run_with_cache``),
interleaved run by run, and reports the ratio of medians (target <= 1.05). With the ``bench`` extra
(nnsight) installed, the same ratio for nnsight's trace with ``.save()`` and for captum's ``LayerActivation``
over the same layers, side by side in the same run.

Store: ``ActivationStore.collect`` over 48 batches of 8 images (all 12 ViT block outputs, unpooled, 700 MB
to disk in 12 shards of 4 batches) against the bare forwards over the same batches (target ratio <= 1.3).
Shards are written by a background thread while the model computes the next ones, so the cost that remains
is mostly the last shard, written after the last forward: the run is long enough for that tail to be a
small part, as in real use (on 12 batches in 3 shards the ratio was 1.27, one shard per batch 1.07).

Run: ``python benchmarks/overhead.py [--reps 15]``; writes ``benchmarks/results/overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
import torchvision
from captum.attr import LayerActivation

from interp_core import ActivationStore, HookedModel

RESULTS = Path(__file__).parent / "results"


def _nnsight_runner(model, paths):
    try:
        import nnsight
        from nnsight import NNsight
    except ImportError:
        return None
    nm = NNsight(model)
    envoys = [nm.get(p) if hasattr(nm, "get") else _envoy(nm, p) for p in paths]

    def run(x):
        with nm.trace(x):
            acts = nnsight.save([])
            for e in envoys:
                acts.append(e.output)
        return acts

    return run


def _envoy(root, path):
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def bench_model(name, model, paths, x, reps):
    hm = HookedModel(model, example_input=x[:1])
    layers = [model.get_submodule(p) for p in paths]
    la = LayerActivation(model, layers)
    runners = {
        "bare": lambda: model(x),
        "interp_suite": lambda: hm.run_with_cache(x, sites=paths),
        "captum_LayerActivation": lambda: la.attribute(x),
    }
    nn_run = _nnsight_runner(model, paths)
    if nn_run is not None:
        runners["nnsight"] = lambda: nn_run(x)
    times = {k: [] for k in runners}
    with torch.no_grad():
        for fn in runners.values():  # warm-up
            fn()
        for _ in range(reps):
            order = list(runners)
            random.shuffle(order)
            for k in order:
                t = time.perf_counter()
                runners[k]()
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "sites": len(paths), "batch": x.shape[0], "median_s": med,
            "ratio_to_bare": {k: med[k] / med["bare"] for k in med if k != "bare"}}


def bench_store(model, paths, batches, reps):
    hm = HookedModel(model, example_input=batches[0][:1])
    bare, store = [], []
    with torch.no_grad():
        for _ in range(reps):
            t = time.perf_counter()
            for b in batches:
                model(b)
            bare.append(time.perf_counter() - t)
            with tempfile.TemporaryDirectory() as d:
                t = time.perf_counter()
                ActivationStore.collect(hm, batches, paths, path=d, batches_per_shard=4, progress=False)
                store.append(time.perf_counter() - t)
    mb = sum(b.shape[0] for b in batches) * sum(math.prod(hm.sites[p].shape) for p in paths) * 4 / 1e6
    return {"batches": len(batches), "sites": len(paths), "megabytes_written": round(mb, 1),
            "median_s": {"bare": statistics.median(bare), "store": statistics.median(store)},
            "ratio_to_bare": statistics.median(store) / statistics.median(bare)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--store-reps", type=int, default=3)
    ap.add_argument("--store-batches", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    x = torch.randn(8, 3, 224, 224)
    vit = timm.create_model("vit_tiny_patch16_224").eval()
    resnet = torchvision.models.resnet18().eval()
    vit_paths = [f"blocks.{i}" for i in range(12)]
    resnet_paths = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    results = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1,
                    "processor": platform.processor() or platform.machine()},
        "forward_with_cache": [bench_model("timm:vit_tiny_patch16_224", vit, vit_paths, x, args.reps),
                               bench_model("torchvision:resnet18", resnet, resnet_paths, x, args.reps)],
        "store_write": bench_store(vit, vit_paths, [torch.randn(8, 3, 224, 224) for _ in range(args.store_batches)],
                                   args.store_reps),
        "targets": {"cache_ratio": 1.05, "store_ratio": 1.3},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(results, indent=1))
    for r in results["forward_with_cache"]:
        print(r["model"], {k: round(v, 3) for k, v in r["ratio_to_bare"].items()})
    print("store", round(results["store_write"]["ratio_to_bare"], 3))


if __name__ == "__main__":
    main()
