"""Metrics: functions of a model's output, one number per example.

Every metric is a callable ``metric(output) -> Tensor[batch]`` with a ``name``. ``output`` is the model's
output: a logits tensor ``[batch, classes]``, or a tuple/dict whose logits come first / under ``"logits"``
(policies returning ``(logits, value)``). Definitions:

- ``logit(c)``: ``z_c``; ``logit_diff(a, b)``: ``z_a - z_b`` (Wang et al. 2022, IOI);
- ``prob(c)``: ``softmax(z)_c``; ``log_prob(c)``: ``log softmax(z)_c`` (for a policy: the action
  log-probability, ``action_log_prob``);
- ``kl_from(reference)``: ``KL(softmax(z_ref) || softmax(z))`` per example, 0 when unchanged;
- ``value(key=1)``: the value head, picked out of a tuple/dict output.

A class index may be an int (same for all examples) or a ``[batch]`` tensor (per example, e.g. labels).
Patching normalises any metric as ``(m - m_corrupted) / (m_clean - m_corrupted)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .errors import InputError, InputTypeError, InterpError


class Metric:
    """A named metric ``output -> Tensor[batch]``."""

    def __init__(self, fn: Callable[[Any], torch.Tensor], name: str):
        self.fn = fn
        self.name = name

    def __call__(self, output: Any) -> torch.Tensor:
        try:
            m = self.fn(output)
        except (IndexError, RuntimeError, TypeError, ValueError, KeyError) as e:
            if isinstance(e, InterpError):
                raise
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise InputError(f"metric {self.name!r} failed on the model's output ({shape}): {e}; check that the "
                             f"metric's classes or keys exist in this output") from None
        if not isinstance(m, torch.Tensor) or m.dim() != 1:
            shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise InputError(f"metric {self.name!r} returned {shape}; a metric returns one number per example, "
                             f"a tensor of shape [batch]")
        return m

    def __repr__(self) -> str:
        return f"Metric({self.name})"


def as_metric(metric: Callable[[Any], torch.Tensor] | Metric | int | torch.Tensor | None = None, *,
              target: int | torch.Tensor | None = None, argument: str = "metric") -> Metric:
    """The one rule by which a target or metric becomes a :class:`Metric`.

    A ``Metric`` passes through; a callable ``output -> Tensor[batch]`` is wrapped (its output shape is then
    checked on every call); a class index — an ``int`` or a ``[batch]`` integer tensor, given as ``metric`` or
    as ``target`` — becomes :func:`logit` of that class.
    """
    if metric is None and target is None:
        raise InputError(f"{argument}: none given; pass a metric (e.g. interp_core.metrics.logit_diff(3, 8)) or "
                         f"a target class index")
    if metric is not None and target is not None:
        raise InputError(f"{argument}: both a metric and target={target!r} were given; give one")
    m = metric if metric is not None else target
    if isinstance(m, Metric):
        return m
    if isinstance(m, bool) or (isinstance(m, torch.Tensor) and m.is_floating_point()):
        raise InputTypeError(f"{argument}: a class index must be an int or an integer tensor, got {m!r}")
    if isinstance(m, (int, torch.Tensor)):
        return logit(m)
    if not callable(m):
        raise InputTypeError(f"{argument}: a metric is a callable output -> Tensor[batch] or a class index, got "
                             f"{type(m).__name__}")
    return Metric(m, getattr(m, "__name__", "metric"))


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output (a tensor, the first element of a tuple, or ``output["logits"]``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["logits"]
    if isinstance(output, (tuple, list)):
        return output[0]
    if hasattr(output, "logits"):
        return output.logits
    raise InputTypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def _pick(z: torch.Tensor, c: int | torch.Tensor) -> torch.Tensor:
    if isinstance(c, torch.Tensor) and c.dim() == 1:
        if c.shape[0] != z.shape[0]:
            raise InputError(f"per-example classes have {c.shape[0]} entries for a batch of {z.shape[0]}")
        return z.gather(1, c.to(z.device).long()[:, None])[:, 0]
    return z[:, int(c)]


def logit(c: int | torch.Tensor) -> Metric:
    return Metric(lambda out: _pick(logits_of(out), c), f"logit[{c}]")


def logit_diff(a: int | torch.Tensor, b: int | torch.Tensor) -> Metric:
    return Metric(lambda out: _pick(logits_of(out), a) - _pick(logits_of(out), b), f"logit_diff[{a}-{b}]")


def prob(c: int | torch.Tensor) -> Metric:
    return Metric(lambda out: _pick(logits_of(out).softmax(-1), c), f"prob[{c}]")


def log_prob(c: int | torch.Tensor) -> Metric:
    return Metric(lambda out: _pick(logits_of(out).log_softmax(-1), c), f"log_prob[{c}]")


action_log_prob = log_prob


def kl_from(reference: torch.Tensor) -> Metric:
    ref = reference.detach().log_softmax(-1)

    def fn(out: Any) -> torch.Tensor:
        z = logits_of(out).log_softmax(-1)
        r = ref.to(z.device)
        if r.shape[0] == 1 and z.shape[0] != 1:
            r = r.expand_as(z)
        return F.kl_div(z, r, log_target=True, reduction="none").sum(-1)

    return Metric(fn, "kl_from_reference")


def value(key: int | str = 1) -> Metric:
    def fn(out: Any) -> torch.Tensor:
        v = out[key]
        return v.reshape(v.shape[0], -1)[:, 0]

    return Metric(fn, f"value[{key}]")
