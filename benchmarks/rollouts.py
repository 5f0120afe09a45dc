"""Benchmark: rollouts with vs without recording activations (``rl.collect``).

For each zoo agent, times ``rl.collect(agent, steps=STEPS, n_envs=N_ENVS)`` without sites and with the
agent's canonical sites recorded (in memory), alternating the two ``REPEATS`` times; reports the medians and
their ratio (target: recording costs at most 20% more, ratio <= 1.2). Writes
``benchmarks/results/rollouts.json``.

Run: ``python benchmarks/rollouts.py [--steps 2000] [--repeats 5]`` (one CPU thread).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import rl

AGENTS = {
    "cartpole-ppo": ["obs", "policy.1", "policy.3", "value.3", "logits", "value"],
    "doorkey-ppo": ["obs", "encoder.1", "encoder.4", "encoder.6", "encoder.out", "policy.1", "logits", "value"],
    "tmaze-recurrent": ["obs", "memory.h", "memory.c", "policy.1", "logits", "value"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rollouts.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for name, sites in AGENTS.items():
        agent = rl.zoo.load(name)
        rl.collect(agent, steps=args.n_envs * 4, n_envs=args.n_envs, sites=sites)  # warm-up and trace
        plain, recorded = [], []
        for r in range(args.repeats):
            for target, s in ((plain, []), (recorded, sites)):
                t0 = time.perf_counter()
                rl.collect(agent, steps=args.steps, n_envs=args.n_envs, sites=s, seed=r)
                target.append(time.perf_counter() - t0)
        mp, mr = statistics.median(plain), statistics.median(recorded)
        results[name] = {"sites": sites, "median_s_without": round(mp, 4), "median_s_with": round(mr, 4),
                         "ratio": round(mr / mp, 3), "steps_per_s_without": round(args.steps / mp, 1),
                         "steps_per_s_with": round(args.steps / mr, 1), "runs_without": plain,
                         "runs_with": recorded}
        sys.stdout.write(f"{name:16s} without {mp:.3f}s  with {mr:.3f}s  ratio {mr / mp:.3f}\n")
    out = {"benchmark": "rl.collect with vs without recording activations", "steps": args.steps,
           "n_envs": args.n_envs, "repeats": args.repeats, "target_ratio": 1.2,
           "max_ratio": max(r["ratio"] for r in results.values()), "agents": results,
           "machine": {"python": platform.python_version(), "torch": torch.__version__,
                       "processor": platform.processor() or platform.machine(), "threads": 1,
                       "note": "shared 2-core machine; other jobs ran concurrently"}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
