"""Metrics of a policy's output for patching and attribution (``rl.metrics``).

Each function returns a callable ``metric(output) -> Tensor[batch]`` (an ``interp_core.metrics.Metric``)
over the output of an :class:`rl.agents.Agent` (a :class:`~rl.agents.PolicyOutput` with ``logits
[batch, n_actions]`` and ``value [batch]``), a raw logits tensor, or a ``(logits, value)`` tuple.
Definitions (``z`` = action logits, ``π = softmax(z)``):

- ``action_log_prob(a)``: ``log π(a | s) = z_a - logsumexp(z)`` — the policy-gradient quantity (Williams
  1992); ``a`` an index, an action name, or a ``[batch]`` tensor of actions;
- ``chosen_action_log_prob(actions=None)``: ``log π`` of the action the agent takes (the argmax of this
  output when ``actions`` is not given; for patching, pass the clean run's actions);
- ``action_logit_diff(a, b)``: ``z_a - z_b`` — the logit difference of two actions (the IOI-style metric of
  Wang et al. 2022 applied to actions); invariant to the softmax shift;
- ``action_prob(a)``: ``π(a | s)``;
- ``value()``: the critic's ``V(s)`` (DQN: ``max_a Q(s, a)``; SAC / TD3: ``min_i Q_i(s, a)``);
- ``q_value(a)``: a DQN agent's ``Q(s, a)`` (its ``logits`` are the Q-values).

Continuous actions (an agent's :class:`~rl.agents.PolicyOutput` has ``kind`` ``"gaussian"`` (PPO / A2C:
``logits`` = the mean ``μ`` of raw actions, ``log_std`` = ``log σ``), ``"squashed_gaussian"`` (SAC / TQC:
``a = tanh(u)`` with ``u ~ N(μ, σ²)``) or ``"deterministic"`` (TD3 / DDPG: ``logits`` = the action in ``[-1, 1]``)):

- ``action_mean(i)``: ``μ_i``, the mean of action dimension ``i`` (TD3: the action itself);
- ``action_log_std(i)``: ``log σ_i``;
- ``gaussian_log_prob(action)``: ``log π(a | s)`` of a given action ``a`` ``[action_dim]`` or ``[batch,
  action_dim]``: ``Σ_i log N(a_i; μ_i, σ_i²)`` for a Gaussian; for a squashed Gaussian ``a`` is in ``[-1, 1]``
  (SB3's scaled actions) and ``log π(a) = Σ_i [log N(atanh a_i; μ_i, σ_i²) - log(1 - a_i² + 1e-6)]`` (the
  change of variables of Haarnoja et al. 2018, appendix C, with SB3's epsilon);
- ``chosen_action_log_prob()`` on a continuous output: ``log π`` of the deterministic action (the mean, or
  ``tanh`` of it).

The categorical metrics refuse continuous outputs (and the continuous ones categorical outputs) with an
error, rather than read a mean as a logit. Episode outputs of :class:`rl.sequence.EpisodeModel` (``[batch,
time, ...]``) are read at one step with ``at_step(metric, t)``.

Action names are resolved with ``names=`` (e.g. ``agent.action_names``) or, by default, MiniGrid's actions
(``left, right, forward, pickup, drop, toggle, done``; the T-maze's ``left``/``right`` are the same indices).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from interp_core.errors import InputError, InputIndexError, InputTypeError, SiteError
from interp_core.metrics import Metric

from .envs.gridworld import ACTIONS

MINIGRID_ACTIONS = ACTIONS  # MiniGrid's action names, as registered for the MiniGrid envs (rl.envs.gridworld)


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        z = output
    elif hasattr(output, "logits"):
        z = output.logits
    elif isinstance(output, dict):
        z = output["logits"]
    elif isinstance(output, (tuple, list)):
        z = output[0]
    else:
        raise InputTypeError(f"cannot find action logits in a {type(output).__name__}; pass a PolicyOutput, a "
                             f"logits tensor or a (logits, value) tuple")
    if z.dim() != 2:
        raise InputError(f"output: action logits of shape {tuple(z.shape)}; a policy metric reads [batch, "
                         f"n_actions]. For an episode's [batch, time, n_actions] (rl.sequence.EpisodeModel) pick a "
                         f"step with rl.metrics.at_step(metric, t)")
    return z


def _kind(output: Any) -> str:
    return getattr(output, "kind", "categorical") if not isinstance(output, torch.Tensor) else "categorical"


def _discrete(output: Any, what: str) -> torch.Tensor:
    kind = _kind(output)
    if kind not in ("categorical", "q"):
        raise InputError(f"{what}: the output is a {kind} policy's (continuous actions; logits are action means); "
                         f"use action_mean(i), gaussian_log_prob(action) or chosen_action_log_prob() instead")
    return _logits(output)


def _continuous(output: Any, what: str) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    kind = _kind(output)
    if kind not in ("gaussian", "squashed_gaussian", "deterministic"):
        raise InputError(f"{what}: needs a continuous-action policy's output (a PolicyOutput of kind gaussian, "
                         f"squashed_gaussian or deterministic), got kind {kind!r}; for discrete actions use "
                         f"action_log_prob / action_logit_diff")
    return _logits(output), getattr(output, "log_std", None), kind


def _index(action: Any, names: Sequence[str] | None) -> int | torch.Tensor:
    if isinstance(action, str):
        table = list(names) if names is not None else list(MINIGRID_ACTIONS)
        if action not in table:
            raise SiteError(f"unknown action {action!r}; known actions: {table} (pass names=agent.action_names)")
        return table.index(action)
    if isinstance(action, torch.Tensor) and action.dim() == 1:
        return action.long()
    return int(action)


def _pick(z: torch.Tensor, a: int | torch.Tensor) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        if a.shape[0] != z.shape[0]:
            raise InputError(f"action: {a.shape[0]} actions for a batch of {z.shape[0]}; give one action per "
                             f"example")
        return z.gather(1, a.to(z.device)[:, None])[:, 0]
    if not 0 <= a < z.shape[-1]:
        raise InputIndexError(f"action: {a} out of range for {z.shape[-1]} actions (0..{z.shape[-1] - 1})")
    return z[:, a]


def action_log_prob(action: Any, names: Sequence[str] | None = None) -> Metric:
    """``log π(action | s)`` per example."""
    a = _index(action, names)
    return Metric(lambda out: _pick(_discrete(out, "action_log_prob").log_softmax(-1), a), f"action_log_prob[{action}]")


def chosen_action_log_prob(actions: torch.Tensor | None = None) -> Metric:
    """``log π(a_t | s)`` of the chosen action: the argmax of this output, or the given ``[batch]`` actions.
    Continuous outputs: the deterministic action (the mean; SAC: ``tanh`` of it) or the given ``[batch,
    action_dim]`` actions, through :func:`gaussian_log_prob`."""
    def fn(out: Any) -> torch.Tensor:
        if _kind(out) in ("gaussian", "squashed_gaussian", "deterministic"):
            z, _, kind = _continuous(out, "chosen_action_log_prob")
            a = (torch.tanh(z) if kind == "squashed_gaussian" else z) if actions is None else actions
            return _gaussian_log_prob(out, a)
        lp = _discrete(out, "chosen_action_log_prob").log_softmax(-1)
        a = lp.argmax(-1) if actions is None else torch.as_tensor(actions).long()
        return _pick(lp, a)
    return Metric(fn, "chosen_action_log_prob")


def action_logit_diff(a: Any, b: Any, names: Sequence[str] | None = None) -> Metric:
    """``z_a - z_b`` per example."""
    ia, ib = _index(a, names), _index(b, names)
    def fn(out: Any) -> torch.Tensor:
        z = _discrete(out, "action_logit_diff")
        return _pick(z, ia) - _pick(z, ib)
    return Metric(fn, f"action_logit_diff[{a}-{b}]")


def action_prob(action: Any, names: Sequence[str] | None = None) -> Metric:
    """``π(action | s)`` per example."""
    a = _index(action, names)
    return Metric(lambda out: _pick(_discrete(out, "action_prob").softmax(-1), a), f"action_prob[{action}]")


def value() -> Metric:
    """The critic's value estimate ``V(s)`` per example."""
    def fn(out: Any) -> torch.Tensor:
        if hasattr(out, "value"):
            v = out.value
        elif isinstance(out, dict):
            v = out["value"]
        elif isinstance(out, (tuple, list)) and len(out) > 1:
            v = out[1]
        else:
            raise InputTypeError(f"no value in a {type(out).__name__}; value() needs a PolicyOutput or (logits, value)")
        return v.reshape(v.shape[0], -1)[:, 0]
    return Metric(fn, "value")


def q_value(action: Any, names: Sequence[str] | None = None) -> Metric:
    """A Q-network's ``Q(s, action)`` per example (DQN / QR-DQN agents, whose ``logits`` are Q-values)."""
    a = _index(action, names)

    def fn(out: Any) -> torch.Tensor:
        if _kind(out) != "q":
            raise InputError(f"q_value: needs a Q-network's output (PolicyOutput of kind 'q', a DQN agent), got kind "
                             f"{_kind(out)!r}")
        return _pick(_logits(out), a)
    return Metric(fn, f"q_value[{action}]")


def _dim(z: torch.Tensor, i: int, what: str) -> int:
    if not -z.shape[-1] <= int(i) < z.shape[-1]:
        raise InputIndexError(f"{what}: action dimension {i} out of range for {z.shape[-1]} dimensions")
    return int(i)


def action_mean(i: int = 0) -> Metric:
    """``μ_i(s)``: the mean of action dimension ``i`` of a continuous policy (SAC: before the ``tanh``; TD3 /
    DDPG: the deterministic action in ``[-1, 1]``) per example."""
    def fn(out: Any) -> torch.Tensor:
        z, _, _ = _continuous(out, "action_mean")
        return z[:, _dim(z, i, "i")]
    return Metric(fn, f"action_mean[{i}]")


def action_log_std(i: int = 0) -> Metric:
    """``log σ_i(s)``: the log standard deviation of action dimension ``i`` of a Gaussian policy."""
    def fn(out: Any) -> torch.Tensor:
        z, log_std, kind = _continuous(out, "action_log_std")
        if log_std is None:
            raise InputError(f"action_log_std: this {kind} policy has no log_std (TD3 / DDPG are deterministic; "
                             f"gSDE noise depends on the state)")
        return log_std[:, _dim(z, i, "i")]
    return Metric(fn, f"action_log_std[{i}]")


def _gaussian_log_prob(out: Any, action: Any) -> torch.Tensor:
    mean, log_std, kind = _continuous(out, "gaussian_log_prob")
    if log_std is None:
        raise InputError(f"gaussian_log_prob: this {kind} policy has no Gaussian (TD3 / DDPG are deterministic; "
                         f"gSDE noise depends on the state)")
    a = torch.as_tensor(action, dtype=mean.dtype, device=mean.device)
    if a.dim() == 1:
        a = a.expand(mean.shape[0], -1) if a.shape[0] == mean.shape[1] else a[:, None]
    if a.shape != mean.shape:
        raise InputError(f"action: shape {tuple(a.shape)} does not fit the policy's actions [batch, action_dim] = "
                         f"{tuple(mean.shape)}; give [action_dim] or [batch, action_dim]")
    if kind == "squashed_gaussian":
        eps = torch.finfo(a.dtype).eps
        if (a.abs() > 1).any():
            raise InputError("action: a squashed-Gaussian policy's actions are in [-1, 1] (SB3's scaled actions); "
                             "rescale env actions with policy.scale_action first")
        u = torch.atanh(a.clamp(-1 + eps, 1 - eps))
        lp = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1)
        return lp - torch.log(1 - a ** 2 + 1e-6).sum(-1)
    return torch.distributions.Normal(mean, log_std.exp()).log_prob(a).sum(-1)


def gaussian_log_prob(action: Any) -> Metric:
    """``log π(action | s)`` per example for a Gaussian (PPO / A2C) or squashed-Gaussian (SAC / TQC) policy,
    ``action`` ``[action_dim]`` or ``[batch, action_dim]`` (see the module docstring for the definition)."""
    return Metric(lambda out: _gaussian_log_prob(out, action), "gaussian_log_prob")


def at_step(metric: Any, t: int = -1) -> Metric:
    """``metric`` read at time step ``t`` of an episode output (:class:`rl.sequence.EpisodeOutput`, whose
    ``logits`` are ``[batch, time, ...]``): the step's :class:`~rl.agents.PolicyOutput` goes to ``metric``.
    ``t=-1`` is the last step (e.g. the T-maze's turn at the junction)."""
    from interp_core.metrics import as_metric

    inner = as_metric(metric)

    def fn(out: Any) -> torch.Tensor:
        step = getattr(out, "step", None)
        if not callable(step):
            raise InputTypeError(f"at_step: needs an episode output (rl.sequence.EpisodeOutput), got "
                                 f"{type(out).__name__}; use the metric directly on a single step's output")
        return inner(step(t))
    return Metric(fn, f"{inner.name}@t={t}")
