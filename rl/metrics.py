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
- ``value()``: the critic's ``V(s)``.

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
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, dict):
        return output["logits"]
    if isinstance(output, (tuple, list)):
        return output[0]
    raise InputTypeError(f"cannot find action logits in a {type(output).__name__}; pass a PolicyOutput, a logits "
                    "tensor or a (logits, value) tuple")


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
    return Metric(lambda out: _pick(_logits(out).log_softmax(-1), a), f"action_log_prob[{action}]")


def chosen_action_log_prob(actions: torch.Tensor | None = None) -> Metric:
    """``log π(a_t | s)`` of the chosen action: the argmax of this output, or the given ``[batch]`` actions."""
    def fn(out: Any) -> torch.Tensor:
        lp = _logits(out).log_softmax(-1)
        a = lp.argmax(-1) if actions is None else torch.as_tensor(actions).long()
        return _pick(lp, a)
    return Metric(fn, "chosen_action_log_prob")


def action_logit_diff(a: Any, b: Any, names: Sequence[str] | None = None) -> Metric:
    """``z_a - z_b`` per example."""
    ia, ib = _index(a, names), _index(b, names)
    return Metric(lambda out: _pick(_logits(out), ia) - _pick(_logits(out), ib), f"action_logit_diff[{a}-{b}]")


def action_prob(action: Any, names: Sequence[str] | None = None) -> Metric:
    """``π(action | s)`` per example."""
    a = _index(action, names)
    return Metric(lambda out: _pick(_logits(out).softmax(-1), a), f"action_prob[{action}]")


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
