"""An agent's episode as one sequence with a time axis (``rl.sequence``).

A recurrent agent (:class:`rl.agents.Agent`) runs one step per forward, so its sites hold one time step.
:class:`EpisodeModel` unrolls it over whole observation sequences instead::

    model = rl.sequence.EpisodeModel(agent, length=T)
    out = model(obs)                       # obs [batch, T, *obs_shape] -> EpisodeOutput, logits [batch, T, A]
    out, cache = HookedModel(model).run_with_cache(obs, sites=["memory.h"])   # cache["memory.h"]: [batch, T, d]
    result = patch_sweep(model, clean=episodes_a, corrupted=episodes_b, sites=["memory.h"],
                         metric=rl.metrics.at_step(rl.metrics.action_logit_diff(0, 1), -1))

Every canonical site of the agent (``obs``, ``encoder.*``, ``memory.h``, ``memory.c``, ``policy.*``,
``logits``, ``value``, ...) becomes a site of the episode with a time axis in front of the step's own axes:
``(batch, pos, *step_axes)``, where this first ``pos`` axis is the time step (the core's axis roles are batch,
pos, head, feature; DESIGN.md). So ``patch_sweep(..., per="pos")`` (the default for such a site) patches
``memory.h`` at one step ``t`` from the other episode, and what it changes flows into every later step, exactly
as a hand-written step-by-step loop that swaps in the other episode's ``h_t`` (tested). Input attributions
(``interp_core.attribution``) on ``obs [batch, T, ...]`` give one map per step; probes on ``cache[site]``
read the state step by step (``cache[site][:, t]``; :func:`probe_by_step` fits and scores one probe per step).

**How a time site works.** A hook at a time site (an intervention, a cache recorder) is run once per step,
on a ``[batch, T, ...]`` tensor that holds the site's activations of the steps so far (later steps zero);
the step's own slice ``[:, t]`` of its result is what flows on. The last call sees the whole episode, so a
cache holds every step. This is exact for interventions that act on each step separately — ``Patch``,
``Ablate("zero" | "mean")``, ``Steer``, ``ProjectOut``, ``Replace`` with a position-wise function, and all
of patch_sweep's unit patches — and deterministic (a resampling ablation would draw again at each step).
Cost: a hooked time site does ``O(T)`` work per step, so ``O(T^2)`` per forward; patching all ``T``
steps stacked in one forward still beat the one-run-per-step loop at T = 6 to 50
(``benchmarks/sequence.py``).
Gradients *with respect to* a time site's activation cannot be had this way (the cached tensor is not the
one the later steps used): a time-site hook in a differentiable forward (``run_with_cache(grad=True)``,
attribution patching, an intervention without ``torch.no_grad()``) raises an error; the per-step sites
``agent.memory_h#t`` (the agent's modules, one site per call) serve gradients at one step, and gradients
with respect to the observations flow through the whole unroll.

Every submodule of the agent is also a site by module path under ``agent.`` with one site per step
(``agent.memory_h#3`` is ``memory.h`` at step 3, ``[batch, d]``), as the core names modules that run
several times per forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from interp_core.errors import InputError, InputTypeError
from interp_core.results import Result
from interp_core.sites import Site

from .agents import Agent, PolicyOutput, State, _plain_rnn_kernels, _threads, wrap

__all__ = ["EpisodeModel", "EpisodeOutput", "EpisodeAdapter", "episodes", "probe_by_step", "StepProbeResult"]


class EpisodeOutput(NamedTuple):
    """An unrolled episode.

    Attributes:
        logits: ``[batch, T, n_actions]`` (continuous agents: the action means, see
            :class:`~rl.agents.PolicyOutput`).
        value: ``[batch, T]`` value estimates.
        state: the recurrent state after the last step (``None`` for feed-forward agents).
        log_std: ``[batch, T, action_dim]`` for Gaussian policies, else ``None``.
        kind: the agent's action kind (``"categorical"``, ``"gaussian"``, ...).
    """

    logits: torch.Tensor
    value: torch.Tensor
    state: State | None
    log_std: torch.Tensor | None = None
    kind: str = "categorical"

    def step(self, t: int) -> PolicyOutput:
        """Step ``t`` (negative counts from the end) as a :class:`~rl.agents.PolicyOutput` (state ``None``)."""
        T = self.logits.shape[1]
        if not -T <= int(t) < T:
            raise InputError(f"t: step {t} out of range for episodes of {T} steps (0..{T - 1}, or -1 for the last)")
        return PolicyOutput(self.logits[:, t], self.value[:, t], None,
                            None if self.log_std is None else self.log_std[:, t], self.kind)


class EpisodeModel(nn.Module):
    """A (recurrent) agent unrolled over observation sequences: ``forward(obs, first=None) ->``
    :class:`EpisodeOutput`.

    Args:
        agent: an :class:`rl.agents.Agent` (or anything :func:`rl.agents.wrap` takes: an SB3 algorithm or
            policy). Its modules are used as they are, never copied or changed.
        length: the number of steps ``T`` the sequences have (optional; used for the trace's example input and
            checked on every call when given).

    Forward:
        obs: ``[batch, T, *obs_shape]`` observations as the env emits them (a tensor or numpy array).
        first: optional ``[batch, T]`` episode-start flags: where set, the state is reset to zeros before that
            step (SB3's rule). The state starts at zeros at step 0 whatever the flags.
        state: optional initial recurrent state (:meth:`~rl.agents.Agent.initial_state` layout).

    The agent's canonical sites, with a time axis, are the sites of this model (module docstring);
    ``as_hooked(model)`` / ``HookedModel(model)`` give them through the ``rl`` adapter. The core's methods take
    ``obs`` alone (each sequence one episode from its start) or an ``(obs, first)`` tuple (positional
    arguments), e.g. ``patch_sweep(model, clean=(obs_a, first_a), corrupted=(obs_b, first_b), ...)``.
    """

    def __init__(self, agent: Any, length: int | None = None):
        super().__init__()
        if not isinstance(agent, Agent):
            if isinstance(agent, EpisodeModel):
                raise InputTypeError("agent: already an EpisodeModel; pass the agent it unrolls")
            agent = wrap(agent)
        if length is not None and (not isinstance(length, (int, np.integer)) or length < 1):
            raise InputError(f"length: a positive number of steps, got {length!r}")
        self.agent = agent.model
        self.__dict__["_hooked_agent"] = agent  # a HookedModel, not a module: kept out of the module tree
        self.length = None if length is None else int(length)
        self.training = agent.model.training
        self._t = 0
        self._T = 0

    @property
    def hooked(self) -> Any:
        """This model as a :class:`~interp_core.HookedModel` with the time-axis sites (:class:`EpisodeAdapter`),
        made once and kept, so its trace serves every later call (``as_hooked(model)`` returns it)."""
        hm = self.__dict__.get("_hooked")
        if hm is None:
            from interp_core import HookedModel

            hm = HookedModel(self, adapter=EpisodeAdapter())
            hm.priority = EpisodeAdapter.priority
            self.__dict__["_hooked"] = hm
        return hm

    @property
    def hooked_agent(self) -> Agent:
        """The :class:`~rl.agents.Agent` this model unrolls."""
        return self.__dict__["_hooked_agent"]

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.agent.env_observation_shape())

    def _check(self, obs: Any, first: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = obs if isinstance(obs, torch.Tensor) else torch.as_tensor(np.asarray(obs))
        shape = self.obs_shape
        if t.dim() != len(shape) + 2 or tuple(t.shape[2:]) != shape:
            raise InputError(f"obs: episodes of shape {tuple(t.shape)}; expected [batch, T, "
                             f"{', '.join(map(str, shape))}] (observation sequences as the env emits them)")
        if t.shape[1] < 1:
            raise InputError("obs: episodes of 0 steps; give at least one step")
        if self.length is not None and t.shape[1] != self.length:
            raise InputError(f"obs: episodes of {t.shape[1]} steps, but this EpisodeModel has length={self.length}; "
                             f"cut or pad them, or build EpisodeModel(agent, length={t.shape[1]})")
        f = None
        if first is not None:
            f = first if isinstance(first, torch.Tensor) else torch.as_tensor(np.asarray(first))
            if tuple(f.shape) != tuple(t.shape[:2]):
                raise InputError(f"first: flags of shape {tuple(f.shape)}; expected [batch, T] = {tuple(t.shape[:2])}")
        return t, f

    def forward(self, obs: Any, first: Any = None, state: State | None = None) -> EpisodeOutput:
        x, f = self._check(obs, first)
        T = x.shape[1]
        module = self.agent
        self._T = T
        logits, values, log_stds = [], [], []
        out = None
        with _threads(module.threads), _plain_rnn_kernels():
            for t in range(T):
                self._t = t
                out = module(x[:, t], state, None if f is None else f[:, t])
                state = out.state
                logits.append(out.logits)
                values.append(out.value)
                if out.log_std is not None:
                    log_stds.append(out.log_std)
        assert out is not None
        return EpisodeOutput(torch.stack(logits, 1), torch.stack(values, 1), state,
                             torch.stack(log_stds, 1) if log_stds else None, out.kind)


def _time_attach(step_path: str, name: str):
    """``attach(root, fn)`` of a time site: a hook on the step module's ``step_path`` that runs ``fn`` once per
    step on the ``[batch, T, ...]`` tensor of the steps so far and passes on the step's slice (module doc)."""

    def attach(root: nn.Module, fn: Any) -> Any:
        if not isinstance(root, EpisodeModel):
            raise InputTypeError(f"time site {name!r} belongs to an rl.sequence.EpisodeModel, not a "
                                 f"{type(root).__name__}")
        module = root.get_submodule(step_path)
        history: dict[str, torch.Tensor] = {}

        def hook(mod: nn.Module, args: tuple, output: Any) -> Any:
            if not isinstance(output, torch.Tensor):
                raise InputTypeError(f"time site {name!r}: the step's activation is a {type(output).__name__}")
            t, T = root._t, root._T
            act = output
            buf = history.get("buf")
            if t == 0 or buf is None or buf.shape[0] != act.shape[0] or buf.shape[2:] != act.shape[1:]:
                buf = act.detach().new_zeros((act.shape[0], T, *act.shape[1:]))
            buf[:, t] = act.detach()
            history["buf"] = buf
            view = buf.clone()
            differentiable = torch.is_grad_enabled() and act.requires_grad
            if differentiable:
                # the step's own slice stays on the autograd path to later steps (gradients to the inputs)
                view = torch.cat([view[:, :t], act.unsqueeze(1), view[:, t + 1:]], 1)
            new = fn(view)
            if new is None:
                return None
            if new.shape != view.shape:
                raise InputError(f"time site {name!r}: a hook returned shape {tuple(new.shape)} for an activation "
                                 f"of shape {tuple(view.shape)}")
            if torch.is_grad_enabled() and (differentiable or new.requires_grad):
                raise InputError(
                    f"time site {name!r}: its hooks run step by step, so gradients with respect to the "
                    f"[batch, T, ...] activation (run_with_cache(grad=True), attribution patching) or through an "
                    f"intervention on it cannot be computed. Run interventions and caches under torch.no_grad() "
                    f"(patch_sweep and run_with_cache do), use the per-step site 'agent.<module>#t' (e.g. "
                    f"'agent.memory_h#{t}') for gradients at one step, or attribute to the observations")
            return new[:, t].contiguous()

        return module.register_forward_hook(hook)

    return attach


class EpisodeAdapter:
    """The ``interp_core`` adapter of an :class:`EpisodeModel`: the agent's canonical sites with a time axis
    (virtual sites, see the module docstring), then every submodule by module path (one site per step)."""

    name = "rl-episode"
    priority = 20

    def sites(self, model: nn.Module) -> list[Site]:
        if not isinstance(model, EpisodeModel):
            raise InputTypeError(f"model: the rl-episode adapter describes rl.sequence.EpisodeModel, got "
                                 f"{type(model).__name__}")
        agent = model.hooked_agent
        if not getattr(agent, "_traced", False):
            agent.trace(agent.adapter.example_input(agent.model))
        out = []
        for s in agent.model.canonical_sites():
            step = agent.sites[s.name] if s.name in agent.sites else s
            if step.axes is None or step.kind != "output":
                continue
            out.append(Site(name=s.name, module_path="", kind="virtual", axes=("batch", "pos", *step.axes[1:]),
                            attach=_time_attach(f"agent.{s.module_path}", s.name),
                            description=f"{s.description}, at every time step (pos = time)"))
        taken = {s.name for s in out}
        out += [Site(name=path, module_path=path, description=type(m).__name__)
                for path, m in model.named_modules() if path and path not in taken]
        return out

    def default_sites(self, model: nn.Module) -> list[str]:
        return [s.name for s in self.sites(model) if s.kind == "virtual"]

    def example_input(self, model: nn.Module) -> Any:
        T = model.length or 2
        return torch.zeros(2, T, *model.obs_shape, device=model.agent.device_)


def episodes(rollout: Any, length: int, start: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Observation sequences ``[E, length, *obs_shape]`` from a :class:`rl.rollouts.Rollout`: steps
    ``start .. start + length - 1`` of every recorded episode that has them, with the episode ids ``[E]``
    (so world labels can be looked up by ``(episode, step)``)."""
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise InputError(f"length: a positive number of steps, got {length!r}")
    seqs, ids = [], []
    for e in rollout.episode_ids:
        rows = np.flatnonzero(rollout.episode == e)
        rows = rows[np.argsort(rollout.step[rows], kind="stable")]
        steps = rollout.step[rows]
        want = np.arange(start, start + length)
        if not np.isin(want, steps).all():
            continue
        pick = rows[np.searchsorted(steps, want)]
        seqs.append(rollout.obs[pick])
        ids.append(int(e))
    if not seqs:
        raise InputError(f"rollout: no episode has steps {start}..{start + length - 1}; collect longer episodes or "
                         f"ask for fewer steps")
    return torch.as_tensor(np.stack(seqs)), np.asarray(ids)


@dataclass
class StepProbeResult(Result):
    """Linear probes fitted step by step on a time site (:func:`probe_by_step`).

    Attributes:
        site: the probed time site.
        scores: ``[T]`` held-out score of the probe at each step (accuracy for classifiers, R² for regression).
        chance: the majority-class rate of the held-out labels (classifiers) or 0 (regression).
        n_train, n_test: episodes used to fit and to score.
        config: kind, l2, test_size, seed.
    """

    site: str
    scores: torch.Tensor
    chance: float
    n_train: int
    n_test: int
    config: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        return [{"step": t, "score": float(s)} for t, s in enumerate(self.scores)]

    def plot(self, ax: Any = None, title: str | None = None) -> Any:
        """Held-out score against the time step, chance as a dashed line."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3))
        ax.plot(range(len(self.scores)), self.scores.tolist(), "o-", label=f"probe on {self.site}")
        ax.axhline(self.chance, ls="--", c="gray", label="chance")
        ax.set_xlabel("time step")
        ax.set_ylabel("held-out score")
        ax.set_title(title or f"{self.site}: decodability by step")
        ax.legend()
        return ax.figure


def probe_by_step(model: Any, obs: Any, labels: Any, site: str = "memory.h", kind: str = "logistic",
                  l2: float = 1.0, test_size: float = 0.5, seed: int = 0) -> StepProbeResult:
    """Fit one linear probe per time step on ``site`` of episodes ``obs`` and score it on held-out episodes.

    Args:
        model: an :class:`EpisodeModel` (or an agent, unrolled over the sequences' length).
        obs: ``[E, T, *obs_shape]`` episodes.
        labels: ``[E]`` one label per episode (e.g. the T-maze cue) or ``[E, T]`` one per step.
        site: a time site of the model (``memory.h``, ``obs``, ``encoder.out`` ...).
        kind: :class:`~interp_core.probes.LinearProbe` kind (``"logistic"`` scores accuracy, ``"ridge"`` R²).
        test_size: fraction of episodes held out (split by episode, seeded).

    The activations are read under ``torch.no_grad()`` in eval mode; step ``t``'s rows are
    ``cache[site][:, t]`` flattened.
    """
    from interp_core.probes import LinearProbe

    if not isinstance(model, EpisodeModel):
        model = EpisodeModel(model)
    x = obs if isinstance(obs, torch.Tensor) else torch.as_tensor(np.asarray(obs))
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    E = x.shape[0]
    if y.shape[0] != E or y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] != x.shape[1]):
        raise InputError(f"labels: shape {y.shape}; expected [E] = [{E}] (one per episode) or [E, T] = "
                         f"[{E}, {x.shape[1]}] (one per step)")
    if not 0 < test_size < 1:
        raise InputError(f"test_size: a fraction in (0, 1), got {test_size}")
    n_test = max(1, int(round(E * test_size)))
    if E - n_test < 2:
        raise InputError(f"obs: {E} episodes leave too few to fit a probe; give at least 4")
    perm = np.random.default_rng(seed).permutation(E)
    te, tr = perm[:n_test], perm[n_test:]
    hm = model.hooked
    with hm.analysis(), torch.no_grad():
        _, cache = hm.run_with_cache(x, sites=[site])
    acts = cache[site]
    scores, chances = [], []
    classify = kind in ("logistic", "ridge_classifier")
    for t in range(acts.shape[1]):
        feats = acts[:, t].reshape(E, -1).float()
        yt = y if y.ndim == 1 else y[:, t]
        if classify and np.unique(yt[tr]).size < 2:
            scores.append(float("nan"))
        else:
            probe = LinearProbe(kind=kind, l2=l2, constant_features="ignore").fit(feats[tr], yt[tr])
            scores.append(float(probe.score(feats[te], yt[te])))
        if classify:
            _, counts = np.unique(yt[te], return_counts=True)
            chances.append(counts.max() / counts.sum())
    return StepProbeResult(site, torch.tensor(scores), float(np.mean(chances)) if chances else 0.0, len(tr), len(te),
                           {"kind": kind, "l2": l2, "test_size": test_size, "seed": seed, "episodes": E,
                            "steps": int(acts.shape[1])})
