"""Tiny trained agents (``rl.zoo``): ``rl.zoo.load("doorkey-ppo@seed1")``.

=========================== ============================ ===================================== =================
name                        env                          architecture                          target (100 ep.)
=========================== ============================ ===================================== =================
``cartpole-ppo``            ``CartPole-v1``              MLP 64-64 (tanh), SB3 PPO             mean return >= 475
``doorkey-ppo``             ``MiniGrid-DoorKey-5x5-v0``  3-layer CNN + 64 (``MiniGridCNN``),   success >= 90%
                                                         SB3 PPO
``tmaze-recurrent``         ``TMaze-v0`` (corridor 3-6)  LSTM 32 + 32, sb3-contrib            success >= 95%
                                                         RecurrentPPO
``tmaze-noisy-recurrent``   ``TMaze-v0`` (corridor 3-6,  same as ``tmaze-recurrent``           success >= 95%
                            4 random distractor bits)
``memory-recurrent``        ``MiniGrid-MemoryS7-v0``     ``MiniGridCNN`` + LSTM 128 (actor and  success >= 90%
                                                         critic LSTMs), sb3-contrib
                                                         RecurrentPPO, stops at the target
``cuemaze-recurrent``       ``MiniGrid-CueMaze-v0``      ``MiniGridOneHotCNN`` + LSTM 64       success >= 95%
                            (corridor 1-2)               (shared), sb3-contrib RecurrentPPO,
                                                         stops at the target
``cuemaze-noisy-recurrent`` ``MiniGrid-CueMaze-v0``      same as ``cuemaze-recurrent``         success >= 95%
                            (corridor 2-4, side walls
                            recoloured at random every
                            step)
``doorkey-pixels-ppo``      ``MiniGrid-DoorKey-5x5-v0``  ``PixelCNN`` (3 conv) + 64 on RGB     success >= 90%
                            from RGB frames (28x28x3,    frames, SB3 PPO, stops at the target
                            ``pixels=4``)
=========================== ============================ ===================================== =================

The noisy T-maze is the better control setting: in the clean one the observation sequence after the cue is
deterministic, so even a random-init LSTM keeps the two cue conditions linearly separable; the distractor
bits wash the cue out of the random-init twin over the corridor while the trained agent keeps it.
``memory-recurrent`` trains until its 100 evaluation episodes reach the target (checked every 102,400 steps;
seeds 0, 1, 2 stopped at 409,600, 716,800 and 614,400 steps with 100% success); on MemoryS7 the cue is in
view from the split, and the agents mostly look back at it rather than remember it (see
``benchmarks/memory_s7.py``).

``cuemaze-recurrent`` is the agent that needs its memory: in ``MiniGrid-CueMaze-v0`` (:mod:`rl.envs.cuemaze`) the
cue is shown only on the start cell and no observation at the junction shows it (tested on the observations), so
its success above 50% is memory: with its LSTM state reset at every step, or untrained, it is at chance
(``tests/rl/test_memory_cuemaze.py``); its encoder sees one-hot object / colour / state codes
(``MiniGridOneHotCNN``: on raw codes a key and a ball of one colour differ by 1 in one input, and an agent on
2-4-cell corridors sat at chance for 61k steps). ``cuemaze-noisy-recurrent`` holds the cue over longer corridors
while the walls beside it change colour at random every step. ``doorkey-pixels-ppo`` solves DoorKey from RGB frames
of the partial view (``rl.envs.make("MiniGrid-DoorKey-5x5-v0", pixels=4)``) instead of MiniGrid's integer codes.

Each in seeds 0, 1, 2 (``NAME@seedN``; the bare name is seed 0), trained by
``python -m rl.zoo.train NAME --seed N`` (deterministic from the seed, one thread). Checkpoints are the
policy's ``state_dict`` as safetensors beside a JSON card (env, steps, seed, evaluation over 100 episodes,
train time, command): ``load(...).card``. The **random-init twin** of each architecture —
``load(NAME, random_init=True)`` or ``load("NAME-random@seedN")`` — has the same modules initialised by SB3
from the seed and never trained: the control for probes. For an agent that is not from the zoo (your own SB3
model, any algorithm, or a plain policy), :func:`rl.agents.random_twin` builds the twin from its class,
architecture and a seed; on a zoo agent it returns exactly ``load(NAME, random_init=True)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from interp_core.errors import InputError, StoreError

from .specs import ZooSpec, get_spec, names

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"

__all__ = ["load", "evaluate", "names", "parse_name", "build_policy", "get_spec", "ZooSpec", "available",
           "CHECKPOINT_DIR"]


def parse_name(full: str) -> tuple[str, int, bool]:
    """``"doorkey-ppo-random@seed2"`` -> ``("doorkey-ppo", 2, True)``."""
    m = re.fullmatch(r"(?P<base>[a-z0-9-]+?)(?P<random>-random)?(?:@seed(?P<seed>\d+))?", full)
    if m is None:
        raise InputError(f"bad zoo name {full!r}; use NAME, NAME@seedN, NAME-random or NAME-random@seedN with "
                         f"NAME in {names()}")
    return m["base"], int(m["seed"] or 0), bool(m["random"])


def available() -> list[str]:
    """Names of the shipped checkpoints (``NAME@seedN``)."""
    return sorted(p.stem for p in CHECKPOINT_DIR.glob("*.safetensors"))


def build_policy(spec: ZooSpec, seed: int = 0):
    """The SB3 policy of ``spec``, freshly initialised from ``seed`` (SB3's own init, e.g. orthogonal)."""
    import torch
    from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
    from stable_baselines3.common.vec_env import VecTransposeImage

    from .. import envs

    env = envs.make(spec.env_id, **spec.env_kwargs)
    obs_space = env.observation_space
    if is_image_space(obs_space) and not is_image_space_channels_first(obs_space):
        obs_space = VecTransposeImage.transpose_space(obs_space)
    if spec.algo == "recurrent_ppo":
        from sb3_contrib.common.recurrent.policies import RecurrentActorCriticCnnPolicy, RecurrentActorCriticPolicy

        cls = RecurrentActorCriticCnnPolicy if spec.policy == "CnnLstmPolicy" else RecurrentActorCriticPolicy
    else:
        from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy

        cls = ActorCriticCnnPolicy if spec.policy == "CnnPolicy" else ActorCriticPolicy
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        policy = cls(obs_space, env.action_space, lambda _: 0.0, **spec.policy_kwargs)
    return policy.eval()


def load(name: str, random_init: bool = False, seed: int | None = None, checkpoint_dir: str | Path | None = None):
    """Load a zoo agent as an :class:`rl.agents.Agent`.

    Args:
        name: ``NAME``, ``NAME@seedN``, ``NAME-random`` or ``NAME-random@seedN``.
        random_init: return the random-init twin (same architecture, never trained) instead.
        seed: overrides the name's seed.
        checkpoint_dir: where to look for checkpoints (default: the shipped ones).
    """
    from safetensors.torch import load_file

    from ..agents import Agent, SB3PolicyModule

    base, parsed_seed, is_random = parse_name(name)
    seed = parsed_seed if seed is None else int(seed)
    random_init = random_init or is_random
    spec = get_spec(base)
    policy = build_policy(spec, seed)
    card: dict[str, Any]
    if random_init:
        card = {"name": base, "seed": seed, "env": spec.env_id, "random_init": True,
                "note": "same architecture as the trained agent, initialised from the seed, never trained"}
    else:
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else CHECKPOINT_DIR
        stem = f"{base}@seed{seed}"
        weights = folder / f"{stem}.safetensors"
        if not weights.exists():
            have = sorted(p.stem for p in folder.glob("*.safetensors"))
            raise StoreError(f"checkpoint_dir: no checkpoint {weights.name} in {folder} (have {have}); train it "
                             f"with `python -m rl.zoo.train {base} --seed {seed}`")
        state = load_file(str(weights))
        missing, unexpected = policy.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise StoreError(f"checkpoint {weights} does not match the {base} architecture: missing "
                             f"{missing}, unexpected {unexpected}; retrain it with `python -m rl.zoo.train {base} "
                             f"--seed {seed}`")
        card_path = folder / f"{stem}.json"
        card = json.loads(card_path.read_text()) if card_path.exists() else {"name": base, "seed": seed}
        card["random_init"] = False
    label = f"{base}{'-random' if random_init else ''}@seed{seed}"
    return Agent(SB3PolicyModule(policy.eval()), env_id=spec.env_id, env_kwargs=spec.env_kwargs, name=label,
                 card=card)


def evaluate(agent: Any, n_episodes: int = 100, seed: int | None = None,
             progress: bool | None = None) -> dict[str, float]:
    """Evaluate an :class:`rl.agents.Agent` as the cards do: ``n_episodes`` episodes with deterministic
    actions, env ``i`` reset with seed ``seed + i`` (default: the cards' evaluation seed), the policy in eval
    mode. Returns mean / std return, success rate and mean episode length. ``progress``: a bar over episodes
    (``None``: only on a terminal)."""
    import numpy as np

    from interp_core.progress import progress_bar

    from .train import EVAL_SEED, evaluate_policy_episodes

    base, _, _ = parse_name(agent.name) if agent.name else (None, 0, False)
    spec = get_spec(base) if base in names() else ZooSpec(
        name=agent.name, env_id=agent.env_id, algo="", policy="", policy_kwargs={}, algo_kwargs={}, n_envs=1,
        total_timesteps=0, target=("success_rate", 0.0), env_kwargs=agent.env_kwargs)

    with progress_bar(total=n_episodes, desc=f"evaluate {agent.name}", unit="episode", leave=False,
                      progress=progress) as bar:
        def act(obs, state, start):
            if start:  # the first step of each episode
                bar.update(1)
            return agent.act(obs, state, np.array([start]))

        with agent.analysis():
            return evaluate_policy_episodes(spec, act, n_episodes, EVAL_SEED if seed is None else seed)
