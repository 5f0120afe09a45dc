"""Benchmark: time-axis patching (``rl.sequence.EpisodeModel`` + ``patch_sweep``) against step-by-step loops.

The question: patching ``memory.h`` of the T-maze agent at every step ``t`` of ``B`` episodes from episodes with
the other cue, with the final turn's logit difference as the metric. Three ways that give the same numbers
(checked here to 1e-5 before timing):

- ``hand_loop`` (baseline): SB3's own modules stepped by hand, one unrolled run per patched step;
- ``agent_loop``: the per-step :class:`rl.agents.Agent` stepped by hand, ``memory.h`` replaced at step ``t``
  with ``agent.intervene`` (what a user wrote before the time axis existed);
- ``time_axis``: ``patch_sweep(EpisodeModel(agent), clean=, corrupted=, sites=["memory.h"])`` — all ``T`` patches
  stacked along the batch (one unrolled forward), plus its clean / corrupted base runs and no-op checks.

One torch thread (``benchmarks/_timing.py``), the variants interleaved in shuffled order per repetition, the
median of the per-repetition ratios to the baseline, process CPU beside wall time. Writes
``benchmarks/results/sequence.json``.

Run: ``python benchmarks/sequence.py [--reps 15] [--episodes 32] [--corridors 4 16]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _timing import machine, paired, pin_threads, pools  # noqa: E402

pin_threads(1)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import rl  # noqa: E402
from interp_core.interventions import Replace  # noqa: E402
from interp_core.patching import patch_sweep  # noqa: E402
from rl import metrics  # noqa: E402
from rl.sequence import EpisodeModel  # noqa: E402


def tmaze_batch(cue: int, corridor: int, n: int) -> torch.Tensor:
    o = np.zeros((corridor + 2, 4), np.float32)
    o[0, cue] = 1
    o[1:corridor + 1, 2] = 1
    o[corridor + 1, 3] = 1
    return torch.as_tensor(np.repeat(o[None], n, 0))


def logit_diff(z: torch.Tensor) -> float:
    return float((z[:, 0] - z[:, 1]).mean())


def hand_loop(policy, clean: torch.Tensor, corrupted: torch.Tensor) -> list[float]:
    """One unrolled run of ``corrupted`` per step ``t`` with ``h_t`` swapped in from ``clean`` (SB3 modules)."""
    B, T = corrupted.shape[:2]
    n = policy.lstm_actor.hidden_size

    def run(obs, patch_t=None, h_src=None):
        h, c = torch.zeros(1, B, n), torch.zeros(1, B, n)
        hs = []
        for t in range(T):
            _, (h, c) = policy.lstm_actor(policy.features_extractor(obs[:, t]).unsqueeze(0), (h, c))
            if t == patch_t:
                h = h_src[t].unsqueeze(0)
            hs.append(h[0])
        return policy.action_net(policy.mlp_extractor.forward_actor(h[0])), hs

    with torch.no_grad():
        _, h_clean = run(clean)
        return [logit_diff(run(corrupted, t, h_clean)[0]) for t in range(T)]


def agent_loop(agent, clean: torch.Tensor, corrupted: torch.Tensor) -> list[float]:
    """The step-by-step Agent with ``memory.h`` replaced at step ``t`` through ``agent.intervene``."""
    B, T = corrupted.shape[:2]
    with torch.no_grad(), agent.analysis():
        state, h_clean = None, []
        for t in range(T):
            out, cache = agent.run_with_cache((clean[:, t], state, None), sites=["memory.h"])
            state = out.state
            h_clean.append(cache["memory.h"])
        values = []
        for tp in range(T):
            state = None
            for t in range(T):
                if t == tp:
                    with agent.intervene({"memory.h": Replace(lambda a, s, src=h_clean[t]: src)}):
                        out = agent(corrupted[:, t], state, None)
                else:
                    out = agent(corrupted[:, t], state, None)
                state = out.state
            values.append(logit_diff(out.logits))
        return values


def time_axis(model: EpisodeModel, clean: torch.Tensor, corrupted: torch.Tensor, metric) -> list[float]:
    res = patch_sweep(model, clean=clean, corrupted=corrupted, sites=["memory.h"], metric=metric, progress=False)
    return res.metric_values["memory.h"].tolist()


def claims(out: dict) -> list[dict]:
    """The claims this benchmark checks (see ``python -m benchmarks``): every step of ``memory.h`` patched in one
    time-axis sweep against the plain-PyTorch step-by-step loop (one unroll per patched step), CPU time."""
    res = []
    for name, case in out["cases"].items():
        r = case["variants"]["time_axis"]["ratio_cpu"]
        res.append({"claim": f"time-axis patch sweep of memory.h vs plain step loop, {name}, "
                             f"{case['episodes']} episodes", "value": r, "unit": "x", "target": "<= 1.2",
                    "met": r <= 1.2, "command": "python benchmarks/sequence.py"})
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--corridors", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sequence.json")
    args = parser.parse_args(argv)
    agent = rl.zoo.load("tmaze-recurrent")
    policy = agent.model.net
    metric = metrics.at_step(metrics.action_logit_diff(0, 1), -1)
    cases = {}
    for corridor in args.corridors:
        T = corridor + 2
        clean, corrupted = tmaze_batch(0, corridor, args.episodes), tmaze_batch(1, corridor, args.episodes)
        model = EpisodeModel(agent, length=T)
        ref = hand_loop(policy, clean, corrupted)
        for name, got in (("agent_loop", agent_loop(agent, clean, corrupted)),
                          ("time_axis", time_axis(model, clean, corrupted, metric))):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=name)
        runners = {"hand_loop": lambda: hand_loop(policy, clean, corrupted),
                   "agent_loop": lambda: agent_loop(agent, clean, corrupted),
                   "time_axis": lambda: time_axis(model, clean, corrupted, metric)}
        timing = paired(runners, reps=args.reps, baseline="hand_loop")
        cases[f"T={T}"] = {"steps": T, "episodes": args.episodes, "patches": T, **timing}
        v = timing["variants"]
        sys.stdout.write(f"T={T:3d} B={args.episodes}: " + "  ".join(
            f"{k} {v[k]['median_wall_s'] * 1e3:.1f} ms (x{v[k]['ratio_wall']:.2f} wall, x{v[k]['ratio_cpu']:.2f} cpu)"
            for k in runners) + "\n")
    out = {"benchmark": "time-axis patching of memory.h (EpisodeModel + patch_sweep) vs step-by-step loops",
           "agent": agent.name, "site": "memory.h", "metric": metric.name, "baseline": "hand_loop",
           "equal_to_hand_loop_atol": 1e-5, "cases": cases, "machine": machine(), "pools": pools()}
    out["claims"] = claims(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
