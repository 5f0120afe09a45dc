"""Benchmark: rollouts with vs without recording activations (``rl.collect``).

For each zoo agent and for one and eight environments, times ``rl.collect(agent, steps=STEPS, n_envs=N)``
without sites and with the agent's canonical sites recorded (in memory), interleaved in shuffled order over
``REPS`` repetitions (``benchmarks/_timing.paired``); reports the median of the paired per-repetition ratios of
process CPU time (wall time beside it). Target: recording costs at most 20% more (ratio <= 1.2). The rollout
without sites is the same environment loop and policy forward with nothing recorded: the ratio is the cost of
recording alone. Writes ``benchmarks/results/rollouts.json``.

Run: ``python benchmarks/rollouts.py [--steps 1000] [--reps 7]`` (every thread pool pinned to one thread).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _timing import machine, paired, pin_threads, pools

pin_threads(1)

import rl  # noqa: E402

AGENTS = {
    "cartpole-ppo": ["obs", "policy.1", "policy.3", "value.3", "logits", "value"],
    "doorkey-ppo": ["obs", "encoder.1", "encoder.4", "encoder.6", "encoder.out", "policy.1", "logits", "value"],
    "tmaze-recurrent": ["obs", "memory.h", "memory.c", "policy.1", "logits", "value"],
}


def claims(out: dict) -> list[dict]:
    """The claims this benchmark checks (see ``python -m benchmarks``)."""
    return [{"claim": f"rl.collect recording {len(r['sites'])} sites vs not recording, {name} (CPU time)",
             "value": r["ratio_cpu"], "unit": "x", "target": "<= 1.2", "met": r["ratio_cpu"] <= 1.2,
             "command": "python benchmarks/rollouts.py"} for name, r in out["agents"].items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rollouts.json")
    args = parser.parse_args(argv)
    results = {}
    for name, sites in AGENTS.items():
        agent = rl.zoo.load(name)
        for n_envs in (1, 8):
            runners = {"without": lambda: rl.collect(agent, steps=args.steps, n_envs=n_envs, seed=0),
                       "with": lambda: rl.collect(agent, steps=args.steps, n_envs=n_envs, sites=sites, seed=0)}
            t = paired(runners, args.reps, baseline="without", warmup=1)
            v = t["variants"]["with"]
            key = f"{name}, {n_envs} env{'s' if n_envs > 1 else ''}"
            results[key] = {"sites": sites, "n_envs": n_envs, "ratio_cpu": v["ratio_cpu"],
                            "ratio_wall": v["ratio_wall"], **t}
            sys.stdout.write(f"{key:28s} ratio {v['ratio_cpu']:.3f} cpu, {v['ratio_wall']:.3f} wall\n")
    out = {"benchmark": "rl.collect with vs without recording activations", "steps": args.steps,
           "reps": args.reps, "agents": results, "machine": machine(), "pools": pools()}
    out["claims"] = claims(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
