"""The circuit graph of a recurrent policy unrolled over time (:class:`RecurrentGraph`; see :mod:`.graph`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..errors import InputError, InputTypeError
from ..hooked import HookedModel
from .graph import CircuitGraph, Node, Source, Writes

__all__ = ["RecurrentGraph"]


class RecurrentGraph(CircuitGraph):
    """The graph of a recurrent policy unrolled over ``steps`` time steps.

    The model is a step function ``module(obs, state, episode_start) -> output`` whose output carries the
    action logits first (``output[0]``) and the next recurrent state as ``output.state`` (a tensor or a
    tuple of tensors, batch on axis 1 for 3-d ones as in stable-baselines3, else axis 0), with
    ``module.initial_state(batch)`` and a ``memory.h`` site (the hidden state the heads read): the ``rl``
    agents. Inputs are observation sequences ``[batch, steps, *obs]``, run from the initial state.

    Nodes: ``obs[t]`` (the observation at step ``t``), ``memory.h[t]`` (the recurrent state after step
    ``t``) and ``logits`` (the action logits at the last step). Edges: ``obs[t] -> memory.h[t]``,
    ``memory.h[t-1] -> memory.h[t]`` (the whole carried state) and ``memory.h[T-1] -> logits`` (the hidden
    state the heads read at the last step, patched at the ``memory.h`` site). A cue-to-turn circuit is the
    path ``obs[0] -> memory.h[0] -> ... -> memory.h[T-1] -> logits``.
    """

    kind = "recurrent"

    def __init__(self, hm: HookedModel, steps: int):
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise InputError(f"steps: a positive number of time steps, got {steps!r}")
        module = hm.model
        if not callable(getattr(module, "initial_state", None)) or "memory.h" not in hm.sites:
            raise InputTypeError(f"model: a {type(module).__name__} is not a recurrent policy (it needs "
                                 f"initial_state(batch) and a 'memory.h' site, as rl agents have)")
        self.steps = steps
        nodes = []
        for t in range(steps):
            nodes.append(Node(f"obs[{t}]", "obs", t, "input", t))
            nodes.append(Node(f"memory.h[{t}]", "memory.h", t + 1, "component", t))
        nodes.append(Node("logits", "logits", steps + 1, "output"))
        edges = [(f"obs[{t}]", f"memory.h[{t}]") for t in range(steps)]
        edges += [(f"memory.h[{t - 1}]", f"memory.h[{t}]") for t in range(1, steps)]
        edges.append((f"memory.h[{steps - 1}]", "logits"))
        super().__init__(hm, nodes, edges)

    @staticmethod
    def _batch_axis(t: torch.Tensor) -> int:
        return 1 if t.dim() == 3 else 0

    def _pack(self, state: Any) -> torch.Tensor:
        parts = state if isinstance(state, (tuple, list)) else (state,)
        return torch.cat([p.movedim(self._batch_axis(p), 0).reshape(p.shape[self._batch_axis(p)], -1)
                          for p in parts], 1)

    def _unpack(self, flat: torch.Tensor, like: Any) -> Any:
        parts = like if isinstance(like, (tuple, list)) else (like,)
        out, lo = [], 0
        for p in parts:
            ax = self._batch_axis(p)
            moved = p.movedim(ax, 0)
            n = moved[0].numel()
            out.append(flat[:, lo:lo + n].reshape(flat.shape[0], *moved.shape[1:]).movedim(0, ax))
            lo += n
        return tuple(out) if isinstance(like, (tuple, list)) else out[0]

    def _patch(self, value: torch.Tensor, key: str, edge: tuple[str, str], sources: list[Source]) -> torch.Tensor:
        e = self.edge_index[edge]
        for src in sources:
            c = src.coef[:, e]
            if not bool(c.any()):
                continue
            value = value + c.to(value.dtype).reshape(-1, *([1] * (value.dim() - 1))) * (src.writes[key] - value)
        return value

    def _forward(self, inputs: Any, sources: list[Source], leaves: bool,
                 call: Callable[[Any], Any] | None) -> tuple[Any, Writes, dict[str, torch.Tensor]]:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or inputs.shape[1] != self.steps:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise InputError(f"inputs: observation sequences [batch, {self.steps}, *obs] expected for a graph of "
                             f"{self.steps} steps, got {got}")
        module = self.hm.model
        B = inputs.shape[0]
        writes: Writes = {}
        grads: dict[str, torch.Tensor] = {}

        def leaf(key: str, like: torch.Tensor) -> torch.Tensor:
            grads[key] = torch.zeros_like(like, requires_grad=True)
            return like + grads[key]

        state = module.initial_state(B)
        out = None
        for t in range(self.steps):
            obs = inputs[:, t]
            writes[f"obs.{t}"] = obs
            obs_in = self._patch(obs, f"obs.{t}", (f"obs[{t}]", f"memory.h[{t}]"), sources)
            if leaves and obs_in.is_floating_point():
                obs_in = leaf(f"obs.{t}", obs_in)
            state_in = state
            if t > 0:
                flat = self._pack(state)
                flat = self._patch(flat, f"memory.{t - 1}", (f"memory.h[{t - 1}]", f"memory.h[{t}]"), sources)
                if leaves:
                    flat = leaf(f"memory.{t}", flat)
                state_in = self._unpack(flat, state)
            if t < self.steps - 1:
                out = module(obs_in, state_in, None)
            else:
                def at_h(h: torch.Tensor) -> torch.Tensor:
                    writes["h.last"] = h
                    new = self._patch(h, "h.last", (f"memory.h[{t}]", "logits"), sources)
                    return leaf("h.last", new) if leaves else new
                with self.hm.hooks({"memory.h": at_h}):
                    out = module(obs_in, state_in, None)
            state = out.state
            writes[f"memory.{t}"] = self._pack(state)
        return out, writes, grads

    def edge_dot(self, diff: Writes, grads: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = torch.zeros(self.n_edges, dtype=torch.float64)
        for t in range(self.steps):
            if f"obs.{t}" in grads:
                out[self.edge_index[(f"obs[{t}]", f"memory.h[{t}]")]] = float(
                    (diff[f"obs.{t}"].to(grads[f"obs.{t}"].dtype) * grads[f"obs.{t}"]).sum())
            if t > 0:
                out[self.edge_index[(f"memory.h[{t - 1}]", f"memory.h[{t}]")]] = float(
                    (diff[f"memory.{t - 1}"] * grads[f"memory.{t}"]).sum())
        last = self.edge_index[(f"memory.h[{self.steps - 1}]", "logits")]
        out[last] = float((diff["h.last"] * grads["h.last"]).sum())
        return out
