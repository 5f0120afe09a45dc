"""Study: the ``memory-recurrent`` agents' memory on MiniGrid-MemoryS7, probed and causally checked.

For each of the three zoo seeds: how the agent decides (the share of episodes whose last turn at the split
is taken with the cue in view, i.e. it looks back at the cue from the split, for episodes that start beside
the cue and for the others); probes of the cue at ``memory.h`` (and the encoder) on the steps where the cue
was seen earlier but is out of view, before the split, beside the random-init twin, the observation probe
and the control task; then ``causal_check`` edits ``memory.h`` along the probe's cue direction from column 2
on (strength 1: to the other cue's mean projection; 4: three class separations beyond it), against a random
direction of the same norm. Writes ``benchmarks/results/memory_s7.json``.

Run: ``python benchmarks/memory_s7.py [--episodes 200]`` (one CPU thread, about a minute).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

import rl

SEEDS = (0, 1, 2)


def before_split(ro):
    """Rows where the cue is remembered (seen earlier, out of view now) and the agent is not yet at the split."""
    return ro.remembered("cue") & (ro.world["agent_x"] <= 4)


def look_back(ro) -> dict[str, float]:
    """Share of complete episodes whose last turn at the split (column 5) is taken with the cue in view, for
    episodes that start beside the cue (column 1, cue in view at the start) and for the others."""
    out: dict[str, list[bool]] = {"start_beside_cue": [], "start_elsewhere": []}
    for e in ro.episode_ids:
        rows = np.flatnonzero(ro.episode == e)
        rows = rows[np.argsort(ro.step[rows])]
        turns = [i for i in rows if ro.world["agent_x"][i] == 5 and ro.actions[i] in (0, 1)]
        if turns:
            key = "start_beside_cue" if ro.world["agent_x"][rows[0]] == 1 else "start_elsewhere"
            out[key].append(bool(ro.visible["cue"][turns[-1]]))
    return {k: float(np.mean(v)) for k, v in out.items() if v} | {f"n_{k}": len(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory_s7.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    agents = [rl.zoo.load(f"memory-recurrent@seed{s}") for s in SEEDS]
    behaviour, probes, causal = {}, {}, {}
    for agent in agents:
        behaviour[agent.name] = look_back(rl.collect(agent, episodes=args.episodes, seed=7))
        res = rl.worldmodel.probe(agent, variables=["cue"], sites=["encoder.out", "memory.h"],
                                  episodes=args.episodes, when=before_split)
        probes[agent.name] = res.rows
        print(agent.name, behaviour[agent.name])
        print(res.table())
    for strength in (1.0, 4.0):
        check = rl.worldmodel.causal_check(agents, "memory.h", "cue", strength=strength, episodes=50, seeds=(0, 1),
                                           probe_episodes=args.episodes, probe_when=lambda ro: ro.remembered("cue"),
                                           when=lambda w: w["agent_x"] >= 2)
        causal[f"strength {strength:g}"] = {"baseline_success_rate": check.baseline_success_rate,
                                            **{k: check.summary[k] for k in ("probe", "random")}}
        print(f"strength {strength:g}", {k: round(check.summary[k]["outcome_flip_rate"]["mean"], 3)
                                         for k in ("probe", "random")})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"behaviour": behaviour, "probes": probes, "causal": causal}, indent=1,
                                   default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
