"""The RL half of ``interp demo``'s SAE section: a TopK SAE on the T-maze agent's recurrent state ``memory.h``.

``tmaze-noisy-recurrent`` (an LSTM policy) sees the cue once, then walks a corridor of random length. Rows are
the agent's own ``memory.h`` at every step of its own episodes (:func:`rl.collect`: the recurrent state is
carried, never reset per observation). A TopK SAE (:func:`interp_core.features.fit_saes`) is trained on them and:

- evaluated (:func:`interp_core.features.evaluate_sae`: FVU, L0, dead latents) on held-out episodes;
- read against the world: each latent's firing rate on corridor steps (cue no longer visible) given cue left
  and cue right; ``cue selectivity = |P(fires | left) - P(fires | right)|``;
- spliced into the agent in closed loop (every step's ``memory.h`` replaced by the SAE's reconstruction,
  :func:`interp_core.features.evaluate.splice`), against ``memory.h`` zero-ablated;
- checked causally: the cue latents (firing rates differing by more than 0.1 between the cues) are
  zero-ablated inside the agent (latent edit with the SAE's error kept, as
  :func:`interp_core.features.with_latents` does), against ablating the other live latents.

Success is the share of episodes whose final reward is positive (the turn the cue asked for).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

AGENT = "tmaze-noisy-recurrent"
SITE = "memory.h"


def _success(ro: Any) -> float:
    ends = np.asarray(ro.terminated) | np.asarray(ro.truncated)
    return float((np.asarray(ro.rewards)[ends] > 0).mean())


def _latent_ablation(sae: Any, latents: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``act -> decode(f with latents zeroed) + (act - decode(f))``: the latents removed, the SAE's error kept."""

    def fn(act: torch.Tensor) -> torch.Tensor:
        rows = act.reshape(-1, act.shape[-1])
        f = sae.encode(rows)
        err = rows - sae.decode(f)
        f[:, latents] = 0
        return (sae.decode(f) + err).reshape(act.shape).to(act.dtype)

    return fn


def sae_stage(report: Any, quick: bool = False) -> None:
    """Train, read, splice and ablate a TopK SAE on ``memory.h``; adds one section to ``report``."""
    import matplotlib.pyplot as plt

    import rl
    from interp_core.features import SparseAutoencoder, evaluate_sae, fit_saes
    from interp_core.features.evaluate import splice
    from interp_core.interventions import Ablate, Replace

    from .demo import corridor

    train_eps, test_eps, eval_eps = (80, 40, 40) if quick else (200, 100, 100)
    agent = rl.zoo.load(AGENT)
    train = rl.collect(agent, episodes=train_eps, sites=[SITE], seed=0, progress=False)
    test = rl.collect(agent, episodes=test_eps, sites=[SITE], seed=1, progress=False)
    sae = SparseAutoencoder(32, variant="topk", k=2, epochs=20, batch_size=128, seed=0)
    fit_saes(train.activations, {SITE: sae}, progress=False)
    ev = evaluate_sae(sae, test.activations, SITE)

    rows = corridor(test)
    fired = (sae.encode(test.features(SITE).float()) > 0)[torch.as_tensor(np.asarray(rows))].float()
    cue = np.asarray(test.world["cue"])[np.asarray(rows)]
    p_left = fired[torch.as_tensor(cue == 0)].mean(0)
    p_right = fired[torch.as_tensor(cue == 1)].mean(0)
    selectivity = (p_left - p_right).abs()
    order = [int(i) for i in selectivity.argsort(descending=True)]
    # the cue is spread over several latents (k = 2 per step), so every latent whose firing differs between the
    # cues by more than 0.1 counts; the control removes the remaining live latents
    cue_latents = [i for i in order if float(selectivity[i]) > 0.1]
    control = [i for i in order if float(ev.firing_frequency[i]) > 0 and i not in cue_latents]

    def success(interventions: dict | None) -> float:
        return _success(rl.collect(agent, episodes=eval_eps, seed=5, interventions=interventions, progress=False))

    runs = {"agent as trained": success(None),
            "SAE spliced in": success({SITE: Replace(splice(sae))}),
            "memory.h zero-ablated": success({SITE: Ablate("zero")}),
            f"{len(cue_latents)} cue latents ablated": success({SITE: Replace(_latent_ablation(sae, cue_latents))}),
            f"{len(control)} other live latents ablated": success({SITE: Replace(_latent_ablation(sae, control))})}

    shown = order[:6]
    fig, ax = plt.subplots(figsize=(6.2, 3.2))
    pos = np.arange(len(shown))
    ax.bar(pos - 0.2, p_left[shown].numpy(), 0.4, label="cue left")
    ax.bar(pos + 0.2, p_right[shown].numpy(), 0.4, label="cue right")
    ax.set_xticks(pos, [f"latent {i}" for i in shown], fontsize=8)
    ax.set_ylabel("share of corridor steps it fires")
    ax.set_title("the most cue-selective SAE latents of memory.h (cue not in view)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    report.add("RL: a sparse autoencoder on the T-maze agent's memory (memory.h)", text=(
        f"A TopK SAE (32 latents, k = 2) on {len(train)} steps of the agent's own episodes (its LSTM state carried "
        f"as it acted). On {test_eps} held-out episodes it leaves {ev.fvu:.1%} of memory.h's variance "
        f"unexplained with {ev.l0:.1f} active latents per step; {ev.dead_fraction:.0%} of latents never fire. "
        f"On corridor steps, where the cue is no longer in view, the most selective latents fire for one cue and "
        f"almost never for the other (figure); {len(cue_latents)} latents fire at rates that differ by more than "
        f"0.1 between the cues. In closed loop ({eval_eps} episodes each), the agent "
        f"succeeds in {runs['agent as trained']:.0%} of episodes; with the SAE's reconstruction spliced into "
        f"memory.h at every step in {runs['SAE spliced in']:.0%}; with memory.h zero-ablated in "
        f"{runs['memory.h zero-ablated']:.0%} (chance: 50%). Zero-ablating only those {len(cue_latents)} cue "
        f"latents (the SAE's error kept) gives {runs[f'{len(cue_latents)} cue latents ablated']:.0%}; the other "
        f"{len(control)} live latents, {runs[f'{len(control)} other live latents ablated']:.0%}."),
        figure=fig, caption="Firing rate of each latent on corridor steps, split by the cue the episode began "
                            "with; latents are ordered by cue selectivity.",
        table=[{"run": k, "success rate": v} for k, v in runs.items()],
        numbers={"fvu": ev.fvu, "l0": ev.l0, "dead_fraction": ev.dead_fraction, "cue_latents": cue_latents,
                 "control_latents": control, "selectivity": selectivity.tolist(), "success": runs})


def stages(quick: bool = False) -> list[tuple[str, Callable[[Any], None]]]:
    """The RL SAE stage as ``(name, fn(report))``."""
    return [("T-maze memory SAE", lambda report: sae_stage(report, quick))]
