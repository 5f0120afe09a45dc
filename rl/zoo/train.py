"""Train a zoo agent: ``python -m rl.zoo.train NAME --seed N [--out DIR]``.

Uses stable-baselines3 PPO (sb3-contrib RecurrentPPO for recurrent agents) on one CPU thread, seeded so the
same command gives the same weights. Specs with ``eval_every`` evaluate the target every that many steps
and stop at the first evaluation that meets it (the evaluations do not touch the training's random streams,
so the stop is as deterministic as the rest). Writes ``NAME@seedN.safetensors`` (the policy's ``state_dict`` only)
and ``NAME@seedN.json`` (the card: env, steps, seed, evaluation over 100 episodes, train time, command).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp_core.errors import InputError

from .specs import ZooSpec, get_spec, names

log = logging.getLogger(__name__)
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
EVAL_SEED = 1_000_000


def make_vec_env(spec: ZooSpec, n_envs: int, seed: int):
    """A ``DummyVecEnv`` of ``n_envs`` envs with ``Monitor`` (seeded by SB3), without the outer world recorder.

    Training never reads ``info["world"]``, and recording it (MiniGrid's visibility mask, BFS distances) took
    about half of each env step (profiled on the cue maze); the recorder does not touch observations, rewards,
    dynamics or random streams, so the weights are the same with or without it. Evaluations keep it.
    """
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from .. import envs
    from ..envs.base import WorldWrapper

    def factory():
        env = envs.make(spec.env_id, **spec.env_kwargs)
        return Monitor(env.env if isinstance(env, WorldWrapper) else env)

    return DummyVecEnv([factory] * n_envs)


def build_algo(spec: ZooSpec, seed: int, env=None):
    """The SB3 algorithm object for ``spec`` (env built when not given), seeded with ``seed``."""
    if env is None:
        env = make_vec_env(spec, spec.n_envs, seed)
    if spec.algo == "ppo":
        from stable_baselines3 import PPO as Algo
    elif spec.algo == "recurrent_ppo":
        from sb3_contrib import RecurrentPPO as Algo
    else:  # pragma: no cover - specs are fixed
        raise InputError(f"unknown algo {spec.algo!r}")
    return Algo(spec.policy, env, seed=seed, device="cpu", verbose=0, policy_kwargs=dict(spec.policy_kwargs),
                **spec.algo_kwargs)


def success_of(spec: ZooSpec, reward: float, terminated: bool, truncated: bool, info: dict[str, Any]) -> bool:
    """Whether an episode that just ended succeeded: T-maze: correct turn; CartPole: balanced until the time
    limit; MiniGrid: reached the goal (positive reward on termination)."""
    if "success" in info:
        return bool(info["success"])
    if spec.env_id.startswith("CartPole"):
        return bool(truncated and not terminated)
    return bool(terminated and reward > 0)


def evaluate_policy_episodes(spec: ZooSpec, act, n_episodes: int = 100, seed: int = EVAL_SEED) -> dict[str, float]:
    """Run ``n_episodes`` episodes (env seeded ``seed + i``) with ``act(obs, state, episode_start) ->
    (action, state)`` and return mean/std return, success rate and mean length."""
    from .. import envs

    env = envs.make(spec.env_id, **spec.env_kwargs)
    returns, successes, lengths = [], [], []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed + i)
        state, start, total, steps, done = None, True, 0.0, 0, False
        while not done:
            action, state = act(obs, state, start)
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            steps += 1
            start = False
            done = terminated or truncated
        returns.append(total)
        lengths.append(steps)
        successes.append(success_of(spec, float(reward), bool(terminated), bool(truncated), info))
    return {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
            "success_rate": float(np.mean(successes)), "mean_length": float(np.mean(lengths)),
            "n_episodes": n_episodes}


def sb3_actor(model):
    """``act`` for :func:`evaluate_policy_episodes` from an SB3 model (deterministic actions)."""
    def act(obs, state, start):
        action, state = model.predict(obs, state=state, episode_start=np.array([start]), deterministic=True)
        return int(action), state
    return act


def _stop_at_target(spec: ZooSpec, n_eval_episodes: int):
    """An SB3 callback that evaluates the target every ``spec.eval_every`` steps, before a rollout is
    collected (so the weights evaluated are the weights kept), and ends training when it is met."""
    from stable_baselines3.common.callbacks import BaseCallback

    class StopAtTarget(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next_eval, self.history, self.metrics, self.stopped_at = spec.eval_every, [], None, None

        def _on_rollout_start(self) -> None:
            if self.stopped_at is not None or self.num_timesteps < self.next_eval:
                return
            self.next_eval += spec.eval_every
            metrics = evaluate_policy_episodes(spec, sb3_actor(self.model), n_eval_episodes)
            metric, threshold = spec.target
            self.history.append([self.num_timesteps, metrics[metric]])
            log.info("%s at %d steps: %s %.3f", spec.name, self.num_timesteps, metric, metrics[metric])
            if metrics[metric] >= threshold:
                self.metrics, self.stopped_at = metrics, self.num_timesteps

        def _on_step(self) -> bool:
            return self.stopped_at is None

    return StopAtTarget()


def train(name: str, seed: int = 0, out: Path | None = None, total_timesteps: int | None = None,
          n_eval_episodes: int = 100) -> dict[str, Any]:
    """Train zoo agent ``name`` from ``seed``; write its checkpoint and card into ``out``; return the card."""
    from safetensors.torch import save_file

    spec = get_spec(name)
    torch.set_num_threads(1)
    steps = int(total_timesteps or spec.total_timesteps)
    t0 = time.perf_counter()
    model = build_algo(spec, seed)
    stopper = _stop_at_target(spec, n_eval_episodes) if spec.eval_every else None
    model.learn(total_timesteps=steps, callback=stopper)
    train_time = time.perf_counter() - t0
    if stopper is not None and stopper.stopped_at is not None:
        metrics, trained_steps = stopper.metrics, stopper.stopped_at
    else:
        metrics, trained_steps = evaluate_policy_episodes(spec, sb3_actor(model), n_eval_episodes), steps
    out = Path(out) if out is not None else CHECKPOINT_DIR
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}@seed{seed}"
    state = {k: v.detach().contiguous().clone() for k, v in model.policy.state_dict().items()}
    save_file(state, str(out / f"{stem}.safetensors"))
    import stable_baselines3
    card = {
        "name": name, "seed": seed, "env": spec.env_id, "env_kwargs": _jsonable(spec.env_kwargs),
        "algo": spec.algo, "policy": spec.policy, "policy_kwargs": _jsonable(spec.policy_kwargs),
        "algo_kwargs": _jsonable(spec.algo_kwargs), "n_envs": spec.n_envs, "steps": trained_steps,
        "evaluation": {**metrics, "deterministic": True, "env_seeds": f"{EVAL_SEED}+i"},
        "target": {"metric": spec.target[0], "threshold": spec.target[1],
                   "reached": bool(metrics[spec.target[0]] >= spec.target[1])},
        **({"max_steps": steps, "evaluations": stopper.history} if stopper is not None else {}),
        "train_time_s": round(train_time, 2), "threads": 1,
        "command": f"python -m rl.zoo.train {name} --seed {seed}" + (
            f" --steps {steps}" if total_timesteps else ""),
        "versions": {"torch": torch.__version__, "stable_baselines3": stable_baselines3.__version__},
    }
    (out / f"{stem}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, type):
        return f"{x.__module__}.{x.__qualname__}"
    return x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl.zoo.train", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=names())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the spec's training budget")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {CHECKPOINT_DIR})")
    parser.add_argument("--episodes", type=int, default=100, help="evaluation episodes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    card = train(args.name, args.seed, args.out, args.steps, args.episodes)
    sys.stdout.write(json.dumps({k: card[k] for k in ("name", "seed", "evaluation", "target", "train_time_s")},
                                indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
