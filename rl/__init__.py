"""rl: the interp-suite adapter for reinforcement-learning agents.

Probe what an RL agent knows about its world, and check it causally:

- :mod:`rl.envs` — gymnasium envs that record the true world state in ``info["world"]`` (typed variables)
  and whether the current observation shows each one (``info["world_visible"]``): CartPole, MiniGrid
  (Empty, DoorKey 5x5 / 8x8) and a T-maze memory task;
- :mod:`rl.agents` — policies (stable-baselines3 MLP / CNN / recurrent, or a plain ``nn.Module``) as
  :class:`~interp_core.HookedModel` agents with the canonical sites ``obs``, ``encoder.*``, ``memory.h``,
  ``policy.*``, ``value.*``, ``logits``, ``value``;
- :mod:`rl.zoo` — tiny trained agents in 3 seeds with random-init twins: ``rl.zoo.load("doorkey-ppo@seed1")``;
- :func:`rl.collect` (:mod:`rl.rollouts`) — rollouts with world labels and activations;
- :mod:`rl.worldmodel` — world-model probes with controls (random-init twin, observation baseline, control
  task) and a visibility-aware verdict, future-state probes, and the causal check of a probe direction;
- :mod:`rl.metrics` — functions of a policy's output for patching and attribution (action log-prob,
  action-logit difference, value);
- :mod:`rl.sequence` — an agent unrolled over whole episodes (a ``time`` axis) for probes, patching and
  interchange interventions across time steps.

>>> import rl
>>> agent = rl.zoo.load("tmaze-recurrent")
>>> result = rl.worldmodel.probe(agent, variables=["cue"], sites=["memory.h"], episodes=200)
>>> result.table()

Submodules load lazily, so ``import rl`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["envs", "agents", "zoo", "rollouts", "worldmodel", "metrics", "sequence", "collect"]


def __getattr__(name: str) -> Any:
    if name == "collect":
        from .rollouts import collect

        return collect
    if name in ("envs", "agents", "zoo", "rollouts", "worldmodel", "metrics", "sequence"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'rl' has no attribute {name!r}")
