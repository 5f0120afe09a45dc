"""Shared timing discipline for the benchmarks: pinned thread pools, interleaved variants, paired ratios.

``pin_threads(n)`` must run before numpy / scipy / scikit-learn load their BLAS (environment variables) and
also limits the pools already loaded (``threadpoolctl``); ``pools()`` reports every pool for the results.
``paired(runners, reps)`` runs every variant once per repetition in a shuffled order (after a warm-up) and
returns, per variant, the wall and process-CPU times of each repetition and the median of the per-repetition
ratios to the ``baseline`` variant: the machine is shared, so a ratio taken inside one repetition is far more
stable than a ratio of medians taken minutes apart.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def pin_threads(n: int = 1) -> None:
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    torch.set_num_interop_threads(n) if not getattr(pin_threads, "_interop_set", False) else None
    pin_threads._interop_set = True  # type: ignore[attr-defined]
    threadpool_limits(n)


def pools() -> dict[str, Any]:
    import torch
    from threadpoolctl import threadpool_info

    return {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
            "blas": [{"api": p.get("internal_api"), "threads": p.get("num_threads"), "lib": p.get("filepath", "")
                      .rsplit("/", 1)[-1]} for p in threadpool_info()],
            "env": {v: os.environ.get(v) for v in THREAD_VARS}}


def machine() -> dict[str, Any]:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def paired(runners: dict[str, Callable[[], Any]], reps: int, baseline: str = "bare", inner: int = 1,
           warmup: int = 2, seed: int = 0) -> dict[str, Any]:
    """Interleaved repetitions; each repetition times ``inner`` calls of every variant (wall and CPU)."""
    rng = random.Random(seed)
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(reps):
        order = list(runners)
        rng.shuffle(order)
        for k in order:
            fn = runners[k]
            w, c = time.perf_counter(), time.process_time()
            for _ in range(inner):
                fn()
            cpu[k].append((time.process_time() - c) / inner)
            wall[k].append((time.perf_counter() - w) / inner)
    out: dict[str, Any] = {"reps": reps, "inner": inner, "variants": {}}
    for k in runners:
        ratios_cpu = [a / b for a, b in zip(cpu[k], cpu[baseline]) if b > 0]
        ratios_wall = [a / b for a, b in zip(wall[k], wall[baseline]) if b > 0]
        out["variants"][k] = {"median_wall_s": statistics.median(wall[k]), "median_cpu_s": statistics.median(cpu[k]),
                              "ratio_cpu": statistics.median(ratios_cpu), "ratio_wall": statistics.median(ratios_wall),
                              "wall_s": wall[k], "cpu_s": cpu[k]}
    return out
