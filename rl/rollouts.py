"""Rollouts with world-state labels and activations (``rl.collect``).

``rl.collect(agent, env, steps=..., sites=[...], seed=...)`` runs the agent in ``n_envs`` copies of an env
(batched: one forward per step for all copies; recurrent state carried per copy and reset at episode starts)
and returns a :class:`Rollout`. Rows are time steps; row ``i`` holds the observation the agent saw, the world
state at that moment (``info["world"]`` of the reset/step that produced the observation), the visibility
flags, the action taken, the reward and done flags that action produced, and the activations of the
requested sites during that forward.

Any gymnasium env works: a registered id (:mod:`rl.envs`) records its world variables; another id or env
instance records none (activations, actions and rewards only) unless ``world=lambda env: {...}`` computes some
(:class:`rl.envs.FunctionWorld`). The agent runs in eval mode (``agent.analysis()``), its flags restored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp_core import ActivationCache, ActivationStore
from interp_core.errors import InputError, InputTypeError, SiteError
from interp_core.progress import progress_bar

from .envs import FunctionWorld, Variable, world_wrapper

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    """Time steps of one or more episodes, with world labels and activations.

    All arrays have one row per time step (``N`` rows), in collection order (steps of the ``n_envs`` copies
    interleaved; use ``episode`` and ``step`` to regroup).

    Attributes:
        obs: ``[N, *obs_shape]`` observations as the env emitted them.
        actions: ``[N]`` actions taken (``[N, action_dim]`` for continuous-action agents, in the env's bounds).
        rewards: ``[N]`` rewards received for them; ``terminated`` / ``truncated``: ``[N]`` done flags.
        episode: ``[N]`` episode ids (unique across env copies); ``step``: ``[N]`` time step within it;
            ``env_index``: ``[N]`` which env copy.
        world: ``{variable: [N]}`` true values; ``visible``: ``{variable: [N] bool}`` visibility flags.
        variables: the :class:`~rl.envs.Variable` specs (types for probes).
        logits: ``[N, n_actions]`` (continuous agents: the action means ``[N, action_dim]``, see
            :class:`rl.agents.PolicyOutput`); values: ``[N]`` (the policy outputs at each step).
        activations: an :class:`~interp_core.ActivationCache` (``[N, ...]`` per site) or an
            :class:`~interp_core.ActivationStore` when collected into one; ``None`` without sites.
        episode_complete: ``[N]`` whether the row's episode ended within the rollout.
        config: how it was collected (agent, env, seed, ...).
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episode: np.ndarray
    step: np.ndarray
    env_index: np.ndarray
    world: dict[str, np.ndarray]
    visible: dict[str, np.ndarray]
    variables: tuple[Variable, ...]
    logits: np.ndarray
    values: np.ndarray
    activations: ActivationCache | ActivationStore | None
    episode_complete: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def __repr__(self) -> str:
        sites = list(self.activations.site_names) if self.activations is not None else []
        return (f"Rollout({len(self)} steps, {self.num_episodes} episodes, variables={list(self.world)}, "
                f"sites={sites})")

    @property
    def num_episodes(self) -> int:
        return int(np.unique(self.episode).size)

    @property
    def episode_ids(self) -> np.ndarray:
        return np.unique(self.episode)

    def variable(self, name: str) -> Variable:
        for v in self.variables:
            if v.name == name:
                return v
        raise SiteError(f"unknown world variable {name!r}; recorded: {[v.name for v in self.variables]}")

    def features(self, site: str, pool: Any = None) -> torch.Tensor:
        """``[N, d]`` activation rows of ``site`` (one per time step; pooled over positions if asked,
        positions flattened into ``d`` otherwise, so rows stay aligned with time steps)."""
        if self.activations is None:
            raise InputError("this rollout recorded no activations; collect(..., sites=[...])")
        if pool is not None:
            return self.activations.features(site, pool=pool)
        t = self.activations[site] if isinstance(self.activations, ActivationCache) else self.activations[site]
        return t.reshape(t.shape[0], -1)

    def future_index(self, k: int) -> np.ndarray:
        """``[N]`` row index of the same episode ``k`` steps later, ``-1`` where the episode (as recorded)
        has no such step."""
        key = {(int(e), int(s)): i for i, (e, s) in enumerate(zip(self.episode, self.step))}
        return np.array([key.get((int(e), int(s) + k), -1) for e, s in zip(self.episode, self.step)])

    def future(self, name: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The variable ``name`` ``k`` steps ahead in the same episode: ``(values [N], valid [N] bool)``."""
        idx = self.future_index(k)
        vals = self.world[name]
        out = np.where(idx >= 0, vals[np.maximum(idx, 0)], vals)
        return out, idx >= 0

    def remembered(self, name: str) -> np.ndarray:
        """``[N]`` bool: rows where variable ``name`` was visible at an earlier step of the same episode and is
        not visible now — the rows on which decoding it needs memory (e.g. ``when=lambda ro:
        ro.remembered("cue")`` in :func:`rl.worldmodel.probe`)."""
        visible = np.asarray(self.visible[name], dtype=bool)
        seen = np.zeros(len(self), dtype=bool)
        for e in self.episode_ids:
            idx = np.flatnonzero(self.episode == e)
            idx = idx[np.argsort(self.step[idx], kind="stable")]
            seen[idx] = np.maximum.accumulate(visible[idx])
        return seen & ~visible

    def episode_returns(self) -> dict[int, float]:
        """Total reward per episode id (complete episodes only)."""
        done = self.episode_complete
        return {int(e): float(self.rewards[(self.episode == e) & done].sum())
                for e in np.unique(self.episode[done])}

    def subset(self, mask: np.ndarray) -> "Rollout":
        """The rows where ``mask`` holds (activations included when held in memory)."""
        idx = np.flatnonzero(mask)
        acts = self.activations
        if isinstance(acts, ActivationCache):
            acts = acts.batch_index(torch.as_tensor(idx))
        elif acts is not None:
            acts = ActivationCache({n: acts[n][torch.as_tensor(idx)] for n in acts.site_names},
                                   {n: acts.axes(n) for n in acts.site_names})
        return Rollout(self.obs[idx], self.actions[idx], self.rewards[idx], self.terminated[idx],
                       self.truncated[idx], self.episode[idx], self.step[idx], self.env_index[idx],
                       {k: v[idx] for k, v in self.world.items()}, {k: v[idx] for k, v in self.visible.items()},
                       self.variables, self.logits[idx], self.values[idx], acts, self.episode_complete[idx],
                       dict(self.config))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: configuration, sizes, returns, visibility rates."""
        rets = list(self.episode_returns().values())
        return {"config": self.config, "steps": len(self), "episodes": self.num_episodes,
                "complete_episodes": len(rets), "mean_return": float(np.mean(rets)) if rets else None,
                "visible_rate": {k: float(v.mean()) for k, v in self.visible.items()},
                "sites": list(self.activations.site_names) if self.activations is not None else []}

    def save(self, path: str | Path) -> Path:
        """Write the arrays (``.npz``, activations in memory included) and the summary (``.json``)."""
        path = Path(path)
        arrays = {"obs": self.obs, "actions": self.actions, "rewards": self.rewards,
                  "terminated": self.terminated, "truncated": self.truncated, "episode": self.episode,
                  "step": self.step, "env_index": self.env_index, "logits": self.logits, "values": self.values,
                  "episode_complete": self.episode_complete}
        arrays.update({f"world/{k}": v for k, v in self.world.items()})
        arrays.update({f"visible/{k}": v for k, v in self.visible.items()})
        if isinstance(self.activations, ActivationCache):
            arrays.update({f"act/{k}": self.activations[k].numpy() for k in self.activations})
        np.savez_compressed(path.with_suffix(".npz"), **arrays)
        path.with_suffix(".json").write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return path.with_suffix(".npz")


def _stack_state(states: Sequence[tuple[torch.Tensor, ...]], batch_dim: int) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat([s[j] for s in states], dim=batch_dim) for j in range(len(states[0])))


def collect(agent: Any, env: Any = None, steps: int | None = None, sites: Sequence[str] | str = (),
            seed: int = 0, n_envs: int = 1, episodes: int | None = None, deterministic: bool = True,
            pool: Any = None, store: str | Path | None = None, interventions: Mapping[str, Any] | None = None,
            env_kwargs: Mapping[str, Any] | None = None, reset_options: Mapping[str, Any] | None = None,
            store_chunk: int = 256, world: Callable[[Any], Any] | None = None,
            progress: bool | None = None) -> Rollout:
    """Run ``agent`` and record a :class:`Rollout`.

    Args:
        agent: an :class:`rl.agents.Agent` (e.g. ``rl.zoo.load("doorkey-ppo")``), or anything
            :func:`interp_core.boundary.as_hooked` makes one of (an SB3 algorithm or policy).
        env: an env id (a registered one records world variables, :func:`rl.envs.make`; any other gymnasium id
            is built with ``gym.make`` and records none), an env instance (any gymnasium env; then ``n_envs``
            must be 1), or ``None`` for the agent's own env.
        steps: number of time steps to record (over all env copies), or
        episodes: number of complete episodes to record (unfinished ones are dropped).
        sites: sites whose activations are recorded (``[]`` records none).
        seed: seeds the env resets (episode ``k`` of each copy gets a seed drawn from it) and, when
            ``deterministic=False``, the action sampling.
        n_envs: env copies stepped in lockstep with one batched forward.
        deterministic: argmax actions (SB3's deterministic ``predict``) or sampled ones.
        pool: pooling of the recorded activations, as in ``HookedModel.run_with_cache``.
        store: a folder: write activations into an :class:`~interp_core.ActivationStore` there (replayed in
            batches of ``store_chunk`` steps after the rollout, from the recorded inputs and states, which
            gives the same activations) instead of keeping them in memory. Under ``torchrun`` every rank
            writes its own rollouts into the one store (rank 0's rows first); give each rank its own seed,
            e.g. ``seed=base + interp_core.distributed.current_rank()[0]``.
        interventions: ``{site: intervention}`` active during the whole rollout (closed-loop edits).
        env_kwargs: keyword arguments for the env constructor; reset_options: passed to every ``reset``.
        world: ``world(env) -> {name: value}`` (or ``(values, visible)``), world variables of your own,
            recorded after every reset and step beside the env's own (:class:`rl.envs.FunctionWorld`).
        progress: a progress bar over steps (or episodes); ``None``: only on a terminal.
    """
    from .agents import Agent

    agent = _as_agent(agent, Agent)
    if (steps is None) == (episodes is None):
        raise InputError("steps / episodes: give exactly one of steps= (time steps) or episodes= (complete "
                         "episodes)")
    for name, value in (("steps", steps), ("episodes", episodes)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise InputError(f"{name}: a positive integer, got {value!r}")
    sites = [sites] if isinstance(sites, str) else list(sites)
    for s in sites:
        agent.sites[s]  # raises a helpful KeyError for unknown names
    envs_ = _make_envs(agent, env, n_envs, env_kwargs)
    if world is not None:
        envs_ = [FunctionWorld(e, world) for e in envs_]
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    recurrent = agent.recurrent
    continuous = bool(getattr(agent.model, "continuous", False))
    batch_dim = 1 if type(agent.model).__name__ == "SB3PolicyModule" else 0
    # Activations are recorded by replaying the logged inputs (and recurrent states) in batches after the
    # rollout, into a store or into memory: hooks firing at every step cost more than a small policy's forward.
    # Only with interventions (which may act at given steps) are they recorded by hooks during the rollout.
    record_now = bool(sites) and store is None and bool(interventions)
    keep_inputs = bool(sites) and not record_now

    rows: dict[str, list] = {k: [] for k in ("obs", "actions", "rewards", "terminated", "truncated", "episode",
                                              "step", "env_index", "logits", "values")}
    inputs_log: list[tuple] = []

    obs_list, infos = [], []
    for e in envs_:
        o, info = e.reset(seed=int(rng.integers(2**31 - 1)), options=dict(reset_options or {}) or None)
        obs_list.append(o)
        infos.append(info)
    # the variables are known once every env has been reset (a world function's kinds come from its first values)
    wrappers = [world_wrapper(e) for e in envs_]
    variables: tuple[Variable, ...] = tuple(wrappers[0].variables) if wrappers[0] is not None else ()
    world_rows: dict[str, list] = {v.name: [] for v in variables}
    vis_rows: dict[str, list] = {v.name: [] for v in variables}
    next_episode = len(envs_)
    ep_ids = list(range(len(envs_)))
    ep_steps = [0] * len(envs_)
    starts = np.ones(len(envs_), dtype=np.float32)
    state = agent.initial_state(len(envs_))
    completed: set[int] = set()
    total = 0
    # Recording uses one set of hooks for the whole rollout (HookedModel.hooks): registering hooks per step,
    # as a run_with_cache call per step would, costs more than the tiny policies' forward itself.
    recorded: dict[str, list[torch.Tensor]] = {s: [] for s in sites} if record_now else {}
    rec_axes: dict[str, Any] = {}
    ctx = agent.intervene(interventions) if interventions else _null()
    rec_ctx = agent.hooks({s: _recorder(agent.sites[s], pool, recorded[s], rec_axes) for s in sites}) \
        if record_now else _null()
    bar = progress_bar(total=steps if steps is not None else episodes, unit="step" if steps is not None else "episode",
                       desc="rl.collect", progress=progress, leave=False)
    with bar, agent.analysis(), ctx, rec_ctx, torch.no_grad():
        while True:
            if steps is not None and total >= steps:
                break
            if episodes is not None and len(completed) >= episodes:
                break
            obs_batch = np.stack(obs_list)
            inputs = (obs_batch, state, starts.copy())
            out = agent.model(*inputs)
            if keep_inputs:
                inputs_log.append((obs_batch, state, starts.copy()))
            logits = out.logits
            actions = agent.model.actions(out, deterministic=deterministic, generator=gen).cpu().numpy()
            state = out.state
            new_obs, new_infos = [], []
            done_before = len(completed)
            for i, e in enumerate(envs_):
                a = actions[i].copy() if continuous else int(actions[i])
                o2, r, term, trunc, info2 = e.step(a)
                rows["obs"].append(obs_list[i])
                rows["actions"].append(a)
                rows["rewards"].append(float(r))
                rows["terminated"].append(bool(term))
                rows["truncated"].append(bool(trunc))
                rows["episode"].append(ep_ids[i])
                rows["step"].append(ep_steps[i])
                rows["env_index"].append(i)
                if variables:
                    w, vis = infos[i]["world"], infos[i]["world_visible"]
                    for v in variables:
                        world_rows[v.name].append(w[v.name])
                        vis_rows[v.name].append(vis[v.name])
                if term or trunc:
                    completed.add(ep_ids[i])
                    o2, info2 = e.reset(seed=int(rng.integers(2**31 - 1)),
                                        options=dict(reset_options or {}) or None)
                    ep_ids[i] = next_episode
                    next_episode += 1
                    ep_steps[i] = 0
                    starts[i] = 1.0
                else:
                    ep_steps[i] += 1
                    starts[i] = 0.0
                new_obs.append(o2)
                new_infos.append(info2)
            rows["logits"].append(logits.cpu().numpy())
            rows["values"].append(out.value.cpu().numpy())
            obs_list, infos = new_obs, new_infos
            total += len(envs_)
            if steps is not None:
                bar.update(min(len(envs_), steps - bar.n))
            else:
                bar.update(min(len(completed) - done_before, episodes - bar.n))

    n = len(rows["actions"])
    episode = np.asarray(rows["episode"], dtype=np.int64)
    complete = np.isin(episode, np.fromiter(completed, dtype=np.int64, count=len(completed)))
    keep = complete if episodes is not None else np.ones(n, dtype=bool)
    acts: ActivationCache | ActivationStore | None = None
    if record_now:
        acts = ActivationCache({k: torch.cat(v) for k, v in recorded.items()}, rec_axes,
                               {k: agent.sites[k] for k in sites})
    elif keep_inputs and store is None:
        with agent.analysis():
            acts = ActivationCache.cat([agent.run_with_cache(b, sites=sites, pool=pool)[1]
                                        for b in _replay(inputs_log, np.ones(n, dtype=bool), store_chunk,
                                                         recurrent, batch_dim)])
    elif keep_inputs:
        with agent.analysis():
            acts = ActivationStore.collect(agent, _replay(inputs_log, keep, store_chunk, recurrent, batch_dim),
                                           sites, path=store, pool=pool, batches_per_shard=8, resume=False,
                                           progress=progress, partition="ranks")  # each rank its own rollouts
    env_label = env if isinstance(env, str) else (getattr(agent, "env_id", None) if env is None else repr(env))
    config = {"agent": getattr(agent, "name", None), "env": env_label, "seed": seed, "n_envs": len(envs_),
              "steps": steps, "episodes": episodes, "deterministic": deterministic, "sites": sites, "pool": pool,
              "interventions": {k: repr(v) for k, v in (interventions or {}).items()},
              "world": None if world is None else getattr(world, "__name__", repr(world))}
    ro = Rollout(
        obs=np.stack(rows["obs"]) if n else np.zeros((0,)), actions=np.asarray(rows["actions"]),
        rewards=np.asarray(rows["rewards"], dtype=np.float32), terminated=np.asarray(rows["terminated"]),
        truncated=np.asarray(rows["truncated"]), episode=episode, step=np.asarray(rows["step"]),
        env_index=np.asarray(rows["env_index"]),
        world={k: np.asarray(v) for k, v in world_rows.items()},
        visible={k: np.asarray(v, dtype=bool) for k, v in vis_rows.items()}, variables=tuple(variables),
        logits=np.concatenate(rows["logits"]) if n else np.zeros((0,)),
        values=np.concatenate(rows["values"]) if n else np.zeros((0,)),
        activations=acts, episode_complete=complete, config=config)
    if episodes is not None:
        stored = ro.activations if keep_inputs and store is not None else None
        ro = ro.subset(keep) if stored is None else _subset_keep_store(ro, keep, stored)
    return ro


def _as_agent(agent: Any, agent_cls: type) -> Any:
    """``agent`` as an :class:`rl.agents.Agent`, through the boundary (an SB3 algorithm or policy is claimed
    by ``rl.agents.claim``)."""
    if isinstance(agent, agent_cls):
        return agent
    from interp_core.boundary import as_hooked

    hooked = as_hooked(agent, argument="agent")
    if not isinstance(hooked, agent_cls):
        raise InputTypeError(f"agent: expected an rl Agent (rl.zoo.load(...), rl.agents.wrap(policy)), an SB3 "
                             f"algorithm or an SB3 policy, got {type(agent).__name__}")
    return hooked


def _subset_keep_store(ro: Rollout, keep: np.ndarray, stored: ActivationStore) -> Rollout:
    ro.activations = None
    out = ro.subset(keep)
    out.activations = stored  # already holds only the kept rows
    return out


def _replay(log_: list[tuple], keep: np.ndarray, chunk: int, recurrent: bool, batch_dim: int):
    """Batches of the recorded ``(obs, state, start)`` inputs of the kept rows, ``chunk`` rows per forward
    (states are masked at episode starts here, so no start flags are passed)."""
    from .agents import _mask_state

    obs = np.concatenate([p[0] for p in log_])
    idx = np.flatnonzero(keep)
    if recurrent:
        states = _stack_state([_mask_state(p[1], torch.as_tensor(p[2]), batch_dim) for p in log_], batch_dim)
    for i in range(0, idx.size, chunk):
        part = torch.as_tensor(idx[i:i + chunk])
        st = tuple(s.index_select(batch_dim, part) for s in states) if recurrent else None
        yield (obs[part.numpy()], st, None)


def _recorder(site: Any, how: Any, sink: list, axes_out: dict):
    """A hook function that appends the site's activation (pooled if asked) to ``sink``."""
    from interp_core.axes import pool as pool_tensor
    from interp_core.sites import infer_axes

    how = how.get(site.name) if isinstance(how, Mapping) else how

    def fn(act: torch.Tensor) -> None:
        axes = site.axes or infer_axes(act.shape)
        if how is None:
            sink.append(act.detach().clone())
            axes_out[site.name] = axes
        else:
            pooled, paxes = pool_tensor(act.detach(), axes, how, site.pos_names)
            sink.append(pooled.clone())
            axes_out[site.name] = paxes
        return None
    return fn


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _make_envs(agent: Any, env: Any, n_envs: int, env_kwargs: Mapping[str, Any] | None) -> list:
    from . import envs as envs_mod

    if not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
        raise InputError(f"n_envs: must be an integer >= 1, got {n_envs!r}")
    if env is None or isinstance(env, str):
        env_id = env if isinstance(env, str) else getattr(agent, "env_id", None)
        if env_id is None:
            raise InputError("env: the agent has no env id; pass env= (an id or a gymnasium env instance)")
        kwargs = dict(getattr(agent, "env_kwargs", {}) if env is None or env == agent.env_id else {})
        kwargs.update(env_kwargs or {})
        return [envs_mod.make_any(env_id, **kwargs) for _ in range(n_envs)]
    if not (hasattr(env, "reset") and hasattr(env, "step")):
        raise InputTypeError(f"env: expected an env id or a gymnasium env, got {type(env).__name__}")
    if n_envs != 1:
        raise InputError("n_envs: n_envs > 1 needs an env id (so copies can be built), not an env instance")
    if env_kwargs:
        raise InputError("env_kwargs: only used to build an env from an id; an env instance is used as it is")
    return [env]


def replay(agent: Any, rollout: Rollout, sites: Sequence[str] | str, pool: Any = None,
           progress: bool | None = None) -> ActivationCache:
    """Activations of ``agent`` at ``sites`` on a recorded rollout's observations, aligned with its rows.

    The agent sees the same observation sequence as the one that acted (episode by episode, its own
    recurrent state carried from zero at each episode start), whatever its actions would have been: the
    control for a random-init twin or another seed. Episodes are processed in parallel, one batched forward
    per time step, in eval mode. ``progress``: a bar over time steps (``None``: only on a terminal).
    """
    from .agents import Agent

    agent = _as_agent(agent, Agent)
    sites = [sites] if isinstance(sites, str) else list(sites)
    order = np.lexsort((rollout.step, rollout.episode))
    eps, first = np.unique(rollout.episode[order], return_index=True)
    bounds = list(first) + [len(order)]
    rows_of = [order[bounds[i]:bounds[i + 1]] for i in range(len(eps))]
    max_len = max((len(r) for r in rows_of), default=0)
    batch_dim = 1 if type(agent.model).__name__ == "SB3PolicyModule" else 0
    state = agent.initial_state(len(rows_of))
    out_rows: dict[str, list] = {s: [] for s in sites}
    row_ids: list[np.ndarray] = []
    axes: dict[str, Any] = {}
    with agent.analysis(), torch.no_grad():
        for t in progress_bar(range(max_len), desc="rl.replay", unit="step", leave=False,
                              progress=progress):
            alive = np.array([len(r) > t for r in rows_of])
            rows = np.array([r[t] for r in rows_of if len(r) > t])
            idx = torch.as_tensor(np.flatnonzero(alive))
            st = None if state is None else tuple(s.index_select(batch_dim, idx) for s in state)
            out, cache = agent.run_with_cache((rollout.obs[rows], st, None), sites=sites, pool=pool)
            for s in sites:
                out_rows[s].append(cache[s])
                axes[s] = cache.axes(s)
            row_ids.append(rows)
            if state is not None:
                state = tuple(s.clone() for s in state)
                for full, new in zip(state, out.state):
                    full.index_copy_(batch_dim, idx, new)
    perm = np.concatenate(row_ids) if row_ids else np.zeros(0, dtype=np.int64)
    inv = torch.as_tensor(np.argsort(perm))
    data = {s: torch.cat(v)[inv] for s, v in out_rows.items()}
    return ActivationCache(data, axes, {s: agent.sites[s] for s in sites})
