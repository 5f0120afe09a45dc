"""Benchmark: activation collection and SAE training under ``torchrun`` at 1 and 2 processes (gloo, CPU).

Setting: a small conv net (3 -> 32 channels, three 3x3 conv layers with ReLU, 16 x 16 images), 1,024 random
images in batches of 64 (16 batches, 2 per shard); sites ``c1`` (unpooled, ``[N, 32, 16, 16]``, i.e.
262,144 feature rows of d = 32 for the SAE) and ``c3`` pooled. Every process runs one thread
(``pin_threads(1)``). Each world size is launched with the real engine,
``python -m torch.distributed.run --nproc-per-node W benchmarks/distributed.py --worker``, alternating
W = 1, 2, 1, 2, ... (``--reps`` each); inside, ``dist.barrier()`` brackets each phase and rank 0 times it:

- ``collect``: ``ActivationStore.collect`` into a fresh folder (forwards, shard writes, the merge);
- ``bare``: plain PyTorch at W = 1 (``model(x)`` under ``no_grad`` with forward hooks keeping the same
  activations, no disk): what the collection costs next to the forward alone;
- ``sae``: :func:`interp_core.distributed.fit_sae`, TopK (128 latents, k = 8), one epoch, batch 4,096.

Reported: examples per second (collection) and training rows per second (SAE) at W = 1 and 2, the wall-clock
scaling efficiency ``T_1 / (2 T_2)`` (medians), the CPU-work efficiency (process CPU seconds at W = 1 over the
sum over both ranks at W = 2: the distribution's own overhead, free of the machine's load) and the load
average. The machine has 2 cores shared with other users (load averages of 7-13 were seen): 2 processes compete
with that load, so the wall-clock efficiency here says more about the machine than about the code. What the
code duplicates per rank: in collection, iterating (not running) the other ranks' batches and the merge; in
SAE training, reading and shuffling the whole global batch on every rank and the optimizer step (as DDP
does), plus one all-reduce of the gradients per step. Results: ``benchmarks/results/distributed.json``.

Run: ``python benchmarks/distributed.py [--reps 2]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import machine, pin_threads, pools  # noqa: E402

pin_threads(1)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

N, SIZE, BATCH, PER_SHARD = 1024, 16, 64, 2
RESULTS = Path(__file__).resolve().parent / "results" / "distributed.json"
COMMAND = "python benchmarks/distributed.py"


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


def data() -> torch.Tensor:
    return torch.randn(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def worker(out: str, folder: str) -> None:
    import torch.distributed as dist

    from interp_core import ActivationStore, HookedModel
    from interp_core import distributed as D
    from interp_core.features import SparseAutoencoder

    dist.init_process_group("gloo")
    rank, world = D.current_rank()
    hm, x = HookedModel(model()), data()
    sites, pool = ["0", "4"], {"0": None, "4": "mean"}
    times: dict[str, float] = {}
    cpu0 = time.process_time()
    dist.barrier()
    t = time.perf_counter()
    store = ActivationStore.collect(hm, x, sites, Path(folder) / "store", pool=pool, batch_size=BATCH,
                                    batches_per_shard=PER_SHARD, progress=False)
    dist.barrier()
    times["collect"] = time.perf_counter() - t
    cpu = {"collect": time.process_time() - cpu0}
    if world == 1:
        kept: list[torch.Tensor] = []
        handles = [hm.model[0].register_forward_hook(lambda m, i, o: kept.append(o)),
                   hm.model[4].register_forward_hook(lambda m, i, o: kept.append(o.mean((2, 3))))]
        t = time.perf_counter()
        with torch.no_grad():
            for b in range(0, N, BATCH):
                hm.model(x[b:b + BATCH])
        times["bare"] = time.perf_counter() - t
        for h in handles:
            h.remove()
    sae = SparseAutoencoder(n_latents=128, variant="topk", k=8, epochs=1, batch_size=4096, seed=0, init_rows=4096)
    cpu0 = time.process_time()
    dist.barrier()
    t = time.perf_counter()
    D.fit_sae(store, {"0": sae}, progress=False)
    dist.barrier()
    times["sae"] = time.perf_counter() - t
    cpu["sae"] = time.process_time() - cpu0
    cpus = D._gather(cpu)
    if rank == 0:
        Path(out).write_text(json.dumps({"world": world, "times": times, "cpu_per_rank": cpus,
                                         "rows": store.num_rows("0"), "examples": store.num_examples}))
    dist.destroy_process_group()


def launch(world: int, folder: Path) -> dict:
    out = folder / f"w{world}.json"
    shutil.rmtree(folder / "store", ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}", __file__,
           "--worker", "--out", str(out), "--folder", str(folder)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--folder")
    args = ap.parse_args()
    if args.worker:
        worker(args.out, args.folder)
        return
    load_before = os.getloadavg()
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.reps):
            for world in (1, 2):
                runs[world].append(launch(world, Path(tmp)))
    med = {w: {k: statistics.median(r["times"][k] for r in runs[w]) for k in runs[w][0]["times"]} for w in (1, 2)}
    examples, rows = runs[1][0]["examples"], runs[1][0]["rows"]
    eff = {k: med[1][k] / (2 * med[2][k]) for k in ("collect", "sae")}
    # the work itself, free of the machine's load: process CPU at W=1 over the sum over both ranks at W=2
    cpu = {w: {k: statistics.median(sum(c[k] for c in r["cpu_per_rank"]) for r in runs[w]) for k in ("collect", "sae")}
           for w in (1, 2)}
    cpu_eff = {k: cpu[1][k] / cpu[2][k] for k in ("collect", "sae")}
    claims = [
        {"claim": "collection scaling efficiency T1 / (2 T2), 2 processes, 2 shared cores", "value": eff["collect"],
         "target": 0.7, "met": eff["collect"] >= 0.7, "unit": "", "command": COMMAND},
        {"claim": "SAE training (data parallel) scaling efficiency T1 / (2 T2)", "value": eff["sae"],
         "target": 0.7, "met": eff["sae"] >= 0.7, "unit": "", "command": COMMAND},
        {"claim": "collection CPU-work efficiency CPU_1 / (CPU of both ranks at W=2)", "value": cpu_eff["collect"],
         "target": 0.85, "met": cpu_eff["collect"] >= 0.85, "unit": "", "command": COMMAND},
        {"claim": "SAE training CPU-work efficiency CPU_1 / (CPU of both ranks at W=2)", "value": cpu_eff["sae"],
         "target": 0.85, "met": cpu_eff["sae"] >= 0.85, "unit": "", "command": COMMAND},
        {"claim": "collection at W=1 vs plain PyTorch forward with hooks (time ratio)",
         "value": med[1]["collect"] / med[1]["bare"], "target": 2.0,
         "met": med[1]["collect"] / med[1]["bare"] <= 2.0, "unit": "x", "command": COMMAND},
    ]
    result = {"setting": {"examples": examples, "image": SIZE, "batch": BATCH, "batches_per_shard": PER_SHARD,
                          "sae_rows": rows, "threads_per_process": 1},
              "throughput": {f"w{w}": {"collect_examples_per_s": examples / med[w]["collect"],
                                       "sae_rows_per_s": rows / med[w]["sae"]} for w in (1, 2)},
              "median_s": {f"w{w}": med[w] for w in (1, 2)}, "efficiency": eff, "cpu_s_all_ranks": cpu,
              "cpu_efficiency": cpu_eff, "runs": runs,
              "load_average_before": load_before, "machine": machine(), "pools": pools(), "claims": claims}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps({"throughput": result["throughput"], "efficiency": eff, "cpu_efficiency": cpu_eff,
                      "load": load_before,
                      "median_s": result["median_s"]}, indent=1))


if __name__ == "__main__":
    main()
