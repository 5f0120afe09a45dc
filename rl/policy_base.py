"""The shared base of the policy step modules (:mod:`rl.agents`, :mod:`rl.sb3`): :class:`PolicyOutput`, the
recurrent ``State``, the identity helpers that make the canonical sites, and small helpers (thread count,
recurrent kernels, episode-start masking, observation axes).

Everything here is re-exported by :mod:`rl.agents`, the public module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from interp_core.sites import Site

State = tuple[torch.Tensor, ...]


class PolicyOutput(NamedTuple):
    """One policy step.

    Attributes:
        logits: ``[batch, n_actions]`` unnormalised action logits (discrete policies), Q-values (DQN), or for
            continuous actions ``[batch, action_dim]`` the Gaussian mean (PPO / A2C: raw actions; SAC: before
            the ``tanh``) or the deterministic actor's output in ``[-1, 1]`` (TD3 / DDPG).
        value: ``[batch]`` state-value estimates (zeros if the policy has no critic; DQN: ``max_a Q``;
            SAC / TD3: ``min_i Q_i(s, a)`` at the deterministic action).
        state: the recurrent state to pass to the next step (``None`` for feed-forward policies).
        log_std: ``[batch, action_dim]`` log standard deviation of a Gaussian policy, else ``None``.
        kind: how ``logits`` define actions: ``"categorical"``, ``"q"``, ``"gaussian"``,
            ``"squashed_gaussian"`` or ``"deterministic"`` (see :class:`_SB3Module`).
    """

    logits: torch.Tensor
    value: torch.Tensor
    state: State | None
    log_std: torch.Tensor | None = None
    kind: str = "categorical"


def _leaves(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """Leaf modules of ``module`` in registration order, with their module paths under ``prefix``."""
    out = []
    for path, m in module.named_modules(prefix=prefix):
        if path != prefix and len(list(m.children())) == 0:
            out.append((path, m))
    if not out and prefix:
        out.append((prefix, module))
    return out


@contextlib.contextmanager
def _plain_rnn_kernels() -> Iterator[None]:
    """Run recurrent layers without oneDNN for the block.

    oneDNN's LSTM kernel is about 200x slower than PyTorch's native one for the tiny single-step LSTMs of
    policies when torch uses more than one thread (measured here: 15 ms vs 0.08 ms per step, batch 1,
    hidden 32), which would dominate every rollout. The results are the same up to float rounding.
    """
    was = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(was)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (``None``: leave torch's setting), restored after."""
    was = torch.get_num_threads()
    if n is None or n == was:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(was)


def _mask_state(state: State, episode_start: torch.Tensor | None, batch_dim: int) -> State:
    if episode_start is None:
        return state
    keep = 1.0 - torch.as_tensor(episode_start, dtype=torch.float32).reshape(-1)
    out = []
    for s in state:
        shape = [1] * s.dim()
        shape[batch_dim] = -1
        out.append(s * keep.to(s.device, s.dtype).reshape(shape))
    return tuple(out)


def _default_obs_axes(shape: tuple[int, ...]) -> tuple[str, ...] | None:
    """Axis roles of an observation batch of per-example ``shape`` where the layout is clear (see
    :class:`PlainPolicyModule`'s ``obs_axes``)."""
    if len(shape) == 1:
        return ("batch", "feature")
    if len(shape) == 3:
        if shape[2] <= 4 < shape[0]:
            return ("batch", "pos", "pos", "feature")
        if shape[0] <= 4 < shape[2]:
            return ("batch", "feature", "pos", "pos")
    return None


def _is_helper(name: str) -> bool:
    """Whether a top-level child of a policy module is one of its identity helpers (canonical sites)."""
    head = name.split(".")[0]
    return head in ("obs_in", "memory_h", "memory_c") or head.endswith("_out")


class _PolicyModuleBase(nn.Module):
    """Shared pieces: identity modules that make canonical sites, and the canonical site list.

    ``threads`` (default 1): intra-op threads used by a forward. Policy networks are tiny, so threads only
    add synchronisation; on a loaded 2-core machine a 2-thread forward of the DoorKey CNN took 4-8 ms
    against 0.6 ms on one thread (measured here). ``None`` leaves torch's setting alone.
    """

    recurrent: bool = False
    threads: int | None = 1
    action_kind: str = "categorical"

    @property
    def continuous(self) -> bool:
        """Whether actions are continuous (a Box action space)."""
        return self.action_kind in ("gaussian", "squashed_gaussian", "deterministic")

    def actions(self, out: PolicyOutput, deterministic: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``[batch]`` actions from a step's logits: the argmax, or sampled from ``softmax(logits)``."""
        if deterministic:
            return out.logits.argmax(-1)
        return torch.multinomial(torch.softmax(out.logits, -1), 1, generator=generator)[:, 0]

    def forward(self, obs: Any, state: State | None = None, episode_start: Any = None) -> PolicyOutput:
        return self.traced_call(self.step, obs, state, episode_start)

    def traced_call(self, fn: Any, obs: Any, state: State | None = None, episode_start: Any = None) -> Any:
        """``fn(prepared obs, state, episode_start)`` with this module's thread count: :meth:`forward` with
        ``fn=self.step``, the traced fast path of ``run_with_cache`` with ``fn`` = the graph built from
        :meth:`step` (the numpy-to-tensor preparation does not trace; see :mod:`interp_core.traced`)."""
        with _threads(self.threads):
            return fn(self.prepare(obs), state, episode_start)

    @property
    def traced_method(self) -> str | None:
        """The tensor-only method the traced fast path builds its graph from (``None`` for recurrent policies,
        whose state handling branches on its inputs: they take the hooks)."""
        return None if self.recurrent else "step"

    def step(self, x: torch.Tensor, state: State | None, episode_start: Any) -> PolicyOutput:
        """One step on an observation batch already :meth:`prepare`-d."""
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        # identity modules: their outputs are the canonical sites; patching them patches the computation
        self.obs_in = nn.Identity()
        self.features_out = nn.Identity()
        self.memory_h = nn.Identity()
        self.memory_c = nn.Identity()
        self.logits_out = nn.Identity()
        self.value_out = nn.Identity()
        self.log_std_out = nn.Identity()
        # (site name, module path, description, axes or None = inferred from the traced shape)
        self._canonical: list[tuple[str, str, str, tuple[str, ...] | None]] = []
        self.__dict__["_device_param"] = None  # a plain attribute, not a registered parameter

    def _mirror_training(self, policy: nn.Module) -> None:
        """Give this wrapper (and its identity helpers) the wrapped policy's train/eval flag, without
        touching the policy: the root flag then says truthfully whether the policy is in train mode."""
        self.training = policy.training
        for name, m in self._modules.items():
            if _is_helper(name):
                for mm in m.modules():
                    mm.training = policy.training

    def canonical_sites(self) -> list[Site]:
        return [Site(name=n, module_path=p, description=d, axes=a) for n, p, d, a in self._canonical]

    def _add(self, name: str, path: str, description: str, axes: tuple[str, ...] | None = None) -> None:
        self._canonical.append((name, path, description, axes))

    def input_axes(self) -> tuple[str, ...] | None:
        """Axis roles of an observation batch as the env emits it (the agent's input), batch included."""
        return None

    def _add_layers(self, stem: str, module: nn.Module | None, path: str, what: str) -> None:
        if module is None:
            return
        for i, (p, m) in enumerate(_leaves(module, path)):
            self._add(f"{stem}.{i}", p, f"{what} layer {i} ({type(m).__name__})")

    def _obs_tensor(self, obs: Any) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(obs) if not isinstance(obs, torch.Tensor) else obs)
        return t.to(self.device_)

    @property
    def device_(self) -> torch.device:
        """The policy's device, read from one parameter slot found once (``(owner module, name)``): the slot
        follows ``Module.to`` however the parameter is moved (in place or replaced, through this wrapper or
        the wrapped policy), without walking ``parameters()`` on every step (~40 us a step)."""
        slot = self.__dict__["_device_param"]
        if slot is None:
            path = next((n for n, _ in self.named_parameters()), None)
            if path is None:
                return torch.device("cpu")
            owner, _, key = path.rpartition(".")
            slot = (self.get_submodule(owner), key)
            self.__dict__["_device_param"] = slot
        p = slot[0]._parameters.get(slot[1])
        if p is None:  # the parameter was removed: find another one
            self.__dict__["_device_param"] = None
            return self.device_
        return p.device

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.__dict__["_device_param"] = None
        return super()._apply(fn, *args, **kwargs)


def _first_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
