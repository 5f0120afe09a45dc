"""Policies as hooked models with the canonical policy sites (``rl.agents``).

An RL policy becomes an :class:`Agent`: a :class:`~interp_core.HookedModel` around a small ``nn.Module``
(:class:`SB3PolicyModule`, :class:`SB3QModule`, :class:`SB3ActorCriticQModule` or :class:`PlainPolicyModule`)
whose forward is one policy step::

    output = agent(obs, state, episode_start)        # PolicyOutput(logits, value, state)
    output, cache = agent.run_with_cache((obs, state, episode_start), sites=["memory.h", "logits"])
    action, state = agent.act(obs, state)            # one env step's action (as SB3's deterministic predict)

- ``obs``: ``[batch, *obs_shape]`` in the env's own layout (MiniGrid images ``[batch, 7, 7, 3]`` are moved
  to channels-first inside), a tensor or a NumPy array; a single unbatched observation is accepted too.
- ``state``: the recurrent state (a tuple of tensors, see :meth:`Agent.initial_state`) or ``None`` (zeros;
  feed-forward policies ignore it).
- ``episode_start``: ``[batch]`` flags; where set, the state is reset to zeros before the step (SB3's rule).

Canonical sites (DESIGN.md), each ``(batch, ...)``:

================ ================================================================================
``obs``          the observation in the env's own layout, after SB3's preprocessing (float, /255
                 for normalised images): ``[batch, pos, pos, feature]`` for MiniGrid's channels-last
                 images (feature = the object / colour / state codes), ``[batch, feature]`` for
                 vectors; it is moved to the network's channels-first layout after this site.
                 Plain policies: the output of their ``preprocess`` if they have one (axes from its
                 shape), else the observation with the ``obs_axes`` given to :func:`wrap`
``encoder.i``    the i-th layer (leaf module, in order) of the features extractor (conv layers
                 ``[batch, feature, pos, pos]``, others ``[batch, feature]``)
``encoder.out``  the features extractor's output ``[batch, feature]``
``memory.h``     recurrent policies: the hidden state after this step ``[batch, feature]`` (top
                 layer). It is both the input of the heads and the state carried to the next step,
                 so patching it changes this step's action *and* everything after
``memory.c``     LSTM policies: the cell state after this step (top layer), also carried forward
``policy.i``     the i-th layer of the actor head's hidden MLP (plain policies: of ``actor``);
                 ``value.i`` the critic's
``logits``       action logits ``[batch, n_actions]`` (unnormalised; ``log_softmax`` gives SB3's
                 ``distribution.distribution.logits``); DQN: the Q-values; continuous actions: the
                 Gaussian mean ``[batch, action_dim]`` (SAC: before the ``tanh``) or TD3's action
``log_std``      Gaussian policies (PPO / A2C on a Box, SAC, TQC): the log standard deviation
``q_values``     DQN / QR-DQN: ``Q(s, ·)`` (= ``logits``); ``quantiles`` QR-DQN's quantiles
``action``       SAC / TD3 / DDPG / TQC: the deterministic action in ``[-1, 1]`` the critics take
``critic.qi``    SAC / TD3 / DDPG / TQC: critic ``i``'s ``Q_i(s, action)``; ``critic.i.j`` its layers
``value``        the state-value estimate ``[batch, 1]`` (DQN: ``max_a Q``; SAC / TD3: ``min_i Q_i``)
================ ================================================================================

**Algorithms** (:func:`wrap`): stable-baselines3 PPO, A2C, DQN, SAC, TD3, DDPG and sb3-contrib
RecurrentPPO, TRPO, QR-DQN, TQC, MaskablePPO (without masks), with Discrete or 1-d Box actions; each site
equals SB3's own output (``policy.q_net(obs)``, ``actor.get_action_dist_params``, ``critic(obs, a)``, the
distribution's mean, ``predict`` actions; tested). :func:`random_twin` builds the random-init twin of any
of them (and of plain policies). :mod:`rl.sequence` unrolls an agent over whole episodes (a time axis).

Every submodule's output is also a site by module path (``net.features_extractor.cnn.0``), as with the
generic adapter. :attr:`Agent.input_axes` gives the axes of the agent's input (an env observation batch),
for methods that label input attributions.

**Through the boundary**: the ``interp_suite.adapters`` entry point :func:`claim` makes
``interp_core.boundary.as_hooked(ppo)`` (an SB3 algorithm or policy) an :class:`Agent`, and
``HookedModel(model.policy)`` a hooked SB3 policy with the same canonical names on its own modules
(:class:`PolicyAdapter`). :meth:`Agent.act`, :func:`rl.collect` and :func:`rl.zoo.evaluate` run the policy
in eval mode (``agent.analysis()``), every module's flag restored afterwards.

**Plain ``nn.Module`` policies** follow a small protocol (:class:`PlainPolicyModule`): attributes
``encoder`` (obs ``[batch, ...]`` float -> features ``[batch, F]``), optional ``memory`` (an
``nn.GRUCell``, ``nn.LSTMCell``, or one-layer ``nn.GRU`` / ``nn.LSTM``), ``actor`` (features or ``h`` ->
logits ``[batch, n_actions]``), optional ``critic`` (-> value ``[batch, 1]``), and optionally
``preprocess(obs_tensor) -> tensor``. The wrapper runs ``encoder -> memory -> actor / critic`` itself, so the
same canonical sites exist for MLP, CNN and GRU policies written by hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from interp_core import HookedModel
from interp_core.errors import InputError, InputTypeError, SiteError
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


class _SB3Module(_PolicyModuleBase):
    """What every stable-baselines3 policy shares: the observation layout (SB3 transposes channels-last
    images), SB3's preprocessing, and the action space (discrete or continuous).

    Action kinds (:attr:`action_kind`): ``"categorical"`` (``logits`` are action logits), ``"gaussian"``
    (``logits`` are the mean of a diagonal Gaussian over raw actions, clipped to the space's bounds in the
    env, as SB3's ``predict`` does), ``"squashed_gaussian"`` (SAC / TQC: ``logits`` are the mean *before* the
    ``tanh``; actions are ``tanh`` of it rescaled from ``[-1, 1]`` to the bounds), ``"deterministic"`` (TD3 /
    DDPG: ``logits`` are the actor's output in ``[-1, 1]``, rescaled to the bounds) and ``"q"`` (DQN / QR-DQN:
    ``logits`` are the Q-values; the greedy action is their argmax).
    """

    action_kind: str = "categorical"

    def _init_sb3(self, policy: nn.Module) -> None:
        from gymnasium import spaces

        self.net = policy
        self._mirror_training(policy)
        space = policy.action_space
        if isinstance(space, spaces.Discrete):
            self.n_actions = int(space.n)
        elif isinstance(space, spaces.Box) and len(space.shape) == 1:
            self.n_actions = int(space.shape[0])  # the action dimension: one mean per coordinate
            self._low = torch.as_tensor(space.low, dtype=torch.float32)
            self._high = torch.as_tensor(space.high, dtype=torch.float32)
        else:
            raise InputTypeError(f"model: {type(policy).__name__} acts in {space}; rl.agents supports Discrete and "
                                 f"1-d Box action spaces (MultiDiscrete / MultiBinary / Dict are not supported)")
        self._pshape = tuple(policy.observation_space.shape)
        self._eshape = self._env_shape()
        # SB3 transposed a channels-last image space (VecTransposeImage): the env emits [h, w, c]
        self._transposed = len(self._pshape) == 3 and self._pshape != self._eshape

    # ------------------------------------------------------------------ observation layout
    def observation_shape(self) -> tuple[int, ...]:
        """The observation shape the policy's network takes (channels first for images)."""
        return self._pshape

    def _env_shape(self) -> tuple[int, ...]:
        from stable_baselines3.common.preprocessing import is_image_space

        shape = self._pshape
        if len(shape) == 3 and is_image_space(self.net.observation_space, check_channels=False,
                                              normalized_image=not self.net.normalize_images) and shape[0] <= 4:
            return (shape[1], shape[2], shape[0])
        return shape

    def env_observation_shape(self) -> tuple[int, ...]:
        """The observation shape as the env emits it (channels-last for images SB3 transposed)."""
        return self._eshape

    def input_axes(self) -> tuple[str, ...] | None:
        from gymnasium import spaces
        from stable_baselines3.common.preprocessing import is_image_space

        space = self.net.observation_space
        if not isinstance(space, spaces.Box):
            return None
        if len(self._eshape) == 1:
            return ("batch", "feature")
        if len(self._eshape) == 3:
            if self._transposed:
                return ("batch", "pos", "pos", "feature")
            if is_image_space(space, check_channels=False, normalized_image=not self.net.normalize_images):
                return ("batch", "feature", "pos", "pos")
        return None

    def prepare(self, obs: Any) -> torch.Tensor:
        """``obs`` in the env's or the policy's layout, batched or not -> ``[batch, *env_obs_shape]`` float,
        after SB3's ``preprocess_obs`` (elementwise for boxes, so the layout does not matter to it): the
        tensor of the ``obs`` site. :meth:`to_network` turns it into the network's layout."""
        from stable_baselines3.common.preprocessing import preprocess_obs

        t = self._obs_tensor(obs)
        pshape, eshape = self._pshape, self._eshape
        if tuple(t.shape) in (pshape, eshape):
            t = t.unsqueeze(0)
        if tuple(t.shape[1:]) == eshape:
            pass
        elif tuple(t.shape[1:]) == pshape:
            t = t.permute(0, 2, 3, 1)  # the policy's [c, h, w] -> the env's [h, w, c]
        else:
            raise InputError(f"obs: observation of shape {tuple(t.shape)} fits neither the policy's "
                             f"[batch, {', '.join(map(str, pshape))}] nor the env's "
                             f"[batch, {', '.join(map(str, eshape))}]; give observations as the env emits them")
        return preprocess_obs(t, self.net.observation_space, normalize_images=self.net.normalize_images).float()

    def to_network(self, x: torch.Tensor) -> torch.Tensor:
        """The ``obs`` site's tensor in the network's layout (``[batch, c, h, w]`` for transposed images)."""
        return x.permute(0, 3, 1, 2) if self._transposed else x

    def initial_state(self, batch: int = 1) -> State | None:
        return None

    # ------------------------------------------------------------------ actions
    def _unscale(self, scaled: torch.Tensor) -> torch.Tensor:
        """``[-1, 1]`` -> the Box's bounds (SB3's ``unscale_action``)."""
        low, high = self._low.to(scaled.device), self._high.to(scaled.device)
        return low + 0.5 * (scaled + 1.0) * (high - low)

    def actions(self, out: PolicyOutput, deterministic: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Env actions for a step's output: ``[batch]`` indices (discrete) or ``[batch, action_dim]`` values in
        the Box's bounds (continuous), as SB3's ``predict`` gives them. Stochastic continuous actions draw
        ``mean + std * N(0, 1)`` with ``generator``."""
        z = out.logits
        kind = self.action_kind
        if kind in ("categorical", "q"):
            if deterministic or kind == "q":
                return z.argmax(-1)
            return torch.multinomial(torch.softmax(z, -1), 1, generator=generator)[:, 0]
        if kind == "deterministic":
            return self._unscale(z)
        if not deterministic:
            if out.log_std is None:
                raise InputError("deterministic=False: this policy's noise is state-dependent (gSDE), which "
                                 "rl.agents does not sample; use deterministic=True")
            noise = torch.randn(z.shape, generator=generator, device="cpu").to(z.device, z.dtype)
            z = z + out.log_std.exp() * noise
        if kind == "squashed_gaussian" or getattr(self.net, "squash_output", False):
            return self._unscale(torch.tanh(z))
        return torch.maximum(torch.minimum(z, self._high.to(z.device)), self._low.to(z.device))


class SB3PolicyModule(_SB3Module):
    """One step of a stable-baselines3 ``ActorCriticPolicy`` (PPO, A2C, sb3-contrib TRPO; ``CnnPolicy``
    too), an sb3-contrib ``RecurrentActorCriticPolicy`` (RecurrentPPO) or ``MaskableActorCriticPolicy``
    (MaskablePPO, run without masks), as ``forward(obs, state=None, episode_start=None) -> PolicyOutput``.
    It reuses the policy's own submodules (``self.net``), never copying or changing them.

    Discrete actions: ``logits`` are the action logits. Box actions (a diagonal Gaussian, e.g. PPO on
    Pendulum): ``logits`` are the Gaussian's mean ``[batch, action_dim]`` (SB3's ``action_net`` output,
    ``distribution.distribution.mean``) and ``log_std`` its log standard deviation, the policy's
    state-independent ``log_std`` parameter broadcast to ``[batch, action_dim]`` (absent with gSDE, whose
    noise depends on the state).

    Recurrent state: ``(h, c)`` each ``[n_layers, batch, hidden]`` for the actor LSTM, followed by
    ``(h_vf, c_vf)`` when the critic has its own LSTM (``enable_critic_lstm=True``).
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        from stable_baselines3.common.distributions import DiagGaussianDistribution
        from stable_baselines3.common.policies import ActorCriticPolicy

        needed = ("mlp_extractor", "action_net", "value_net")
        if not isinstance(policy, ActorCriticPolicy) and not all(hasattr(policy, a) for a in needed):
            raise InputTypeError(f"SB3PolicyModule wraps a stable-baselines3 ActorCriticPolicy, got "
                                 f"{type(policy).__name__}; use rl.agents.wrap(model) for any SB3 algorithm")
        self._init_sb3(policy)
        self.action_kind = "categorical" if not hasattr(self, "_low") else "gaussian"
        self.gaussian_log_std = self.action_kind == "gaussian" and isinstance(
            getattr(policy, "action_dist", None), DiagGaussianDistribution)
        self.recurrent = hasattr(policy, "lstm_actor")
        self._add("obs", "obs_in", "observation as the env emits it (channels last for images), after SB3's "
                  "preprocessing (float; /255 for normalised images)", self.input_axes())
        self._add_layers("encoder", policy.pi_features_extractor, "net.pi_features_extractor"
                         if not policy.share_features_extractor else "net.features_extractor", "features extractor")
        self._add("encoder.out", "features_out", "features extractor output", ("batch", "feature"))
        if self.recurrent:
            self._add("memory.h", "memory_h", "LSTM hidden state after this step (top layer)", ("batch", "feature"))
            self._add("memory.c", "memory_c", "LSTM cell state after this step (top layer)", ("batch", "feature"))
        self._add_layers("policy", policy.mlp_extractor.policy_net, "net.mlp_extractor.policy_net", "actor head")
        self._add_layers("value", policy.mlp_extractor.value_net, "net.mlp_extractor.value_net", "critic head")
        self._add("logits", "logits_out", "action logits" if self.action_kind == "categorical" else
                  "mean of the Gaussian action distribution (raw actions)", ("batch", "feature"))
        if self.gaussian_log_std:
            self._add("log_std", "log_std_out", "log standard deviation of the Gaussian action distribution",
                      ("batch", "feature"))
        self._add("value", "value_out", "state value", ("batch", "feature"))
        self._mirror_training(policy)

    # ------------------------------------------------------------------ state
    def initial_state(self, batch: int = 1) -> State | None:
        if not self.recurrent:
            return None
        lstm = self.net.lstm_actor
        z = torch.zeros(lstm.num_layers, batch, lstm.hidden_size, device=self.device_)
        state: list[torch.Tensor] = [z, z.clone()]
        if self.net.lstm_critic is not None:
            lc = self.net.lstm_critic
            zc = torch.zeros(lc.num_layers, batch, lc.hidden_size, device=self.device_)
            state += [zc, zc.clone()]
        return tuple(state)

    # ------------------------------------------------------------------ forward
    def forward(self, obs: Any, state: State | None = None, episode_start: Any = None) -> PolicyOutput:
        with _threads(self.threads):
            return self._forward(obs, state, episode_start)

    def _forward(self, obs: Any, state: State | None, episode_start: Any) -> PolicyOutput:
        p = self.net
        x = self.to_network(self.obs_in(self.prepare(obs)))
        batch = x.shape[0]
        if p.share_features_extractor:
            pi_feat = vf_feat = self.features_out(p.features_extractor(x))
        else:
            pi_feat = self.features_out(p.pi_features_extractor(x))
            vf_feat = p.vf_features_extractor(x)
        new_state: State | None = None
        if self.recurrent:
            if state is None:
                state = self.initial_state(batch)
            if state[0].shape[1] != batch:
                raise InputError(f"recurrent state has batch {state[0].shape[1]} but the observation batch is "
                                 f"{batch}; use agent.initial_state({batch})")
            state = _mask_state(state, episode_start, batch_dim=1)
            with _plain_rnn_kernels():
                out, (h, c) = p.lstm_actor(pi_feat.unsqueeze(0), (state[0], state[1]))
            h_top = self.memory_h(out[0])
            c_top = self.memory_c(c[-1])
            h = torch.cat([h[:-1], h_top.unsqueeze(0)], 0)
            c = torch.cat([c[:-1], c_top.unsqueeze(0)], 0)
            latent_pi = h_top
            new = [h, c]
            if p.lstm_critic is not None:
                with _plain_rnn_kernels():
                    out_vf, (hv, cv) = p.lstm_critic(vf_feat.unsqueeze(0), (state[2], state[3]))
                latent_vf = out_vf[0]
                new += [hv, cv]
            elif p.shared_lstm:
                latent_vf = h_top
            else:
                latent_vf = p.critic(vf_feat)
            new_state = tuple(new)
        else:
            latent_pi, latent_vf = pi_feat, vf_feat
        latent_pi = p.mlp_extractor.forward_actor(latent_pi)
        latent_vf = p.mlp_extractor.forward_critic(latent_vf)
        logits = self.logits_out(p.action_net(latent_pi))
        log_std = self.log_std_out(p.log_std.expand(batch, -1)) if self.gaussian_log_std else None
        value = self.value_out(p.value_net(latent_vf))
        return PolicyOutput(logits, value[:, 0], new_state, log_std, self.action_kind)


class SB3QModule(_SB3Module):
    """One step of a stable-baselines3 ``DQNPolicy`` (DQN) or an sb3-contrib ``QRDQNPolicy`` (QR-DQN):
    ``forward(obs, state=None, episode_start=None) -> PolicyOutput`` with ``logits`` = the Q-values
    ``Q(s, ·)`` ``[batch, n_actions]`` (SB3's ``policy.q_net(obs)``; QR-DQN: the mean over quantiles of
    ``policy.quantile_net(obs)``) and ``value`` = ``max_a Q(s, a)``, the greedy action's value.

    Sites: ``obs``, ``encoder.i`` / ``encoder.out`` (the Q-network's features extractor), ``policy.i`` (the
    Q-network's layers), ``q_values`` (= ``logits``), ``quantiles`` (QR-DQN: ``[batch, n_quantiles,
    n_actions]``), ``logits``, ``value``. The target network is not run.
    """

    action_kind = "q"

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.quantile = hasattr(policy, "quantile_net")
        qnet = policy.quantile_net if self.quantile else getattr(policy, "q_net", None)
        if qnet is None or not hasattr(qnet, "features_extractor"):
            raise InputTypeError(f"SB3QModule wraps a stable-baselines3 DQNPolicy or an sb3-contrib QRDQNPolicy, got "
                                 f"{type(policy).__name__}")
        self._init_sb3(policy)
        if hasattr(self, "_low"):
            raise InputTypeError(f"model: a Q-network needs a Discrete action space, got {policy.action_space}")
        self.q_values_out = nn.Identity()
        self.quantiles_out = nn.Identity()
        head = "quantile_net" if self.quantile else "q_net"
        self._head = getattr(qnet, head)
        self._add("obs", "obs_in", "observation as the env emits it, after SB3's preprocessing", self.input_axes())
        self._add_layers("encoder", qnet.features_extractor, f"net.{head}.features_extractor", "features extractor")
        self._add("encoder.out", "features_out", "features extractor output", ("batch", "feature"))
        self._add_layers("policy", self._head, f"net.{head}.{head}", "Q-network")
        if self.quantile:
            self._add("quantiles", "quantiles_out", "return quantiles per action [batch, quantile, action]",
                      ("batch", "pos", "feature"))
        self._add("q_values", "q_values_out", "Q-values Q(s, a) of every action", ("batch", "feature"))
        self._add("logits", "logits_out", "Q-values (the greedy action is their argmax)", ("batch", "feature"))
        self._add("value", "value_out", "max_a Q(s, a)", ("batch", "feature"))
        self._mirror_training(policy)

    def forward(self, obs: Any, state: State | None = None, episode_start: Any = None) -> PolicyOutput:
        with _threads(self.threads):
            p = self.net
            qnet = p.quantile_net if self.quantile else p.q_net
            x = self.to_network(self.obs_in(self.prepare(obs)))
            feat = self.features_out(qnet.features_extractor(x))
            raw = self._head(feat)
            if self.quantile:
                quantiles = self.quantiles_out(raw.view(-1, qnet.n_quantiles, self.n_actions))
                q = quantiles.mean(dim=1)
            else:
                q = raw
            q = self.logits_out(self.q_values_out(q))
            value = self.value_out(q.max(dim=-1, keepdim=True).values)
            return PolicyOutput(q, value[:, 0], None, None, self.action_kind)


class SB3ActorCriticQModule(_SB3Module):
    """One step of an off-policy continuous-control policy — stable-baselines3 ``SACPolicy`` (SAC),
    ``TD3Policy`` (TD3, DDPG) or sb3-contrib ``TQCPolicy`` (TQC) — as ``forward(obs, state=None,
    episode_start=None) -> PolicyOutput``.

    - SAC / TQC (``action_kind="squashed_gaussian"``): ``logits`` = the actor's Gaussian mean before the
      ``tanh`` (``actor.mu``), ``log_std`` = its log standard deviation clamped to SB3's ``[-20, 2]``
      (``actor.get_action_dist_params``); the deterministic action in ``[-1, 1]`` is ``tanh(mean)``.
    - TD3 / DDPG (``"deterministic"``): ``logits`` = the actor's output ``actor(obs)`` in ``[-1, 1]``.

    Critics are evaluated at the deterministic action ``a`` (scaled to ``[-1, 1]``, as SB3's critics take
    it): ``critic.q{i}`` = ``Q_i(s, a)`` ``[batch, 1]`` (TQC: ``[batch, n_quantiles]``), the outputs of
    ``policy.critic(obs, a)``; ``value`` = ``min_i`` of the critics' (quantile-mean) estimates, the
    clipped double-Q value (Fujimoto et al. 2018). ``action`` is ``a``. The target networks are not run.
    Other sites: ``obs``, ``encoder.i`` / ``encoder.out`` (the actor's features extractor), ``policy.i`` (the
    actor's hidden layers), ``critic.i.j`` (layer ``j`` of critic ``i``).
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        actor, critic = getattr(policy, "actor", None), getattr(policy, "critic", None)
        if actor is None or critic is None or not hasattr(critic, "q_networks"):
            raise InputTypeError(f"SB3ActorCriticQModule wraps SB3 SAC / TD3 / DDPG or sb3-contrib TQC policies, got "
                                 f"{type(policy).__name__}")
        self._init_sb3(policy)
        if not hasattr(self, "_low"):
            raise InputTypeError(f"model: {type(policy).__name__} needs a Box action space, got {policy.action_space}")
        self.squashed = hasattr(actor, "latent_pi")
        self.action_kind = "squashed_gaussian" if self.squashed else "deterministic"
        self.use_sde = bool(getattr(actor, "use_sde", False))
        self.log_std_out = nn.Identity()
        self.action_out = nn.Identity()
        n = len(critic.q_networks)
        self.critic_out = nn.ModuleList([nn.Identity() for _ in range(n)])
        self._shared = critic.features_extractor is actor.features_extractor
        self._add("obs", "obs_in", "observation as the env emits it, after SB3's preprocessing", self.input_axes())
        self._add_layers("encoder", actor.features_extractor, "net.actor.features_extractor", "features extractor")
        self._add("encoder.out", "features_out", "actor features extractor output", ("batch", "feature"))
        if self.squashed:
            self._add_layers("policy", actor.latent_pi, "net.actor.latent_pi", "actor")
            self._add("logits", "logits_out", "Gaussian mean before the tanh (actor.mu)", ("batch", "feature"))
            if not self.use_sde:
                self._add("log_std", "log_std_out", "log standard deviation of the actor's Gaussian",
                          ("batch", "feature"))
        else:
            mu_layers = _leaves(actor.mu, "net.actor.mu")
            for i, (path, m) in enumerate(mu_layers[:-1]):
                self._add(f"policy.{i}", path, f"actor layer {i} ({type(m).__name__})")
            self._add("logits", "logits_out", "actor output in [-1, 1] (actor(obs))", ("batch", "feature"))
        self._add("action", "action_out", "deterministic action in [-1, 1] (the critics' input)", ("batch", "feature"))
        for i in range(n):
            self._add_layers(f"critic.{i}", critic.q_networks[i], f"net.critic.qf{i}", f"critic {i}")
            self._add(f"critic.q{i}", f"critic_out.{i}", f"critic {i}'s estimate Q_{i}(s, a)", ("batch", "feature"))
        self._add("value", "value_out", "min over critics of Q_i(s, a)", ("batch", "feature"))
        self._mirror_training(policy)

    def forward(self, obs: Any, state: State | None = None, episode_start: Any = None) -> PolicyOutput:
        with _threads(self.threads):
            return self._forward(obs)

    def _forward(self, obs: Any) -> PolicyOutput:
        from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN

        actor, critic = self.net.actor, self.net.critic
        x = self.to_network(self.obs_in(self.prepare(obs)))
        feat = self.features_out(actor.features_extractor(x))
        log_std = None
        if self.squashed:
            latent = actor.latent_pi(feat)
            mean = self.logits_out(actor.mu(latent))
            if not self.use_sde:
                log_std = self.log_std_out(torch.clamp(actor.log_std(latent), LOG_STD_MIN, LOG_STD_MAX))
            action = self.action_out(torch.tanh(mean))
        else:
            mean = self.logits_out(actor.mu(feat))
            action = self.action_out(mean)
        cfeat = feat if self._shared else critic.features_extractor(x)
        q_in = torch.cat([cfeat, action], dim=1)
        qs = [self.critic_out[i](q(q_in)) for i, q in enumerate(critic.q_networks)]
        value = self.value_out(torch.stack([q.mean(dim=1) for q in qs], 1).min(dim=1, keepdim=True).values)
        return PolicyOutput(mean, value[:, 0], None, log_std, self.action_kind)


class PlainPolicyModule(_PolicyModuleBase):
    """One step of a hand-written policy following the protocol in the module docstring.

    Args:
        policy: an ``nn.Module`` with ``encoder``, ``actor``, and optionally ``memory``, ``critic``,
            ``preprocess``.
        obs_shape: the per-example observation shape (for the trace and single-observation calls).
        obs_axes: axis roles of an observation batch as the env emits it, batch included, e.g.
            ``("batch", "pos", "pos", "feature")`` for channels-last images. Default: ``("batch", "feature")``
            for vectors; for 3-d shapes, channels last when the last size is at most 4 and the first is larger
            (``(7, 7, 3)``), channels first in the opposite case, unknown otherwise. They are the ``obs``
            site's axes when the policy has no ``preprocess`` (which may change the layout).
    """

    def __init__(self, policy: nn.Module, obs_shape: Sequence[int], obs_axes: Sequence[str] | None = None):
        super().__init__()
        missing = [a for a in ("encoder", "actor") if not isinstance(getattr(policy, a, None), nn.Module)]
        if missing:
            raise InputTypeError(f"a plain policy needs nn.Module attributes 'encoder' and 'actor' (optional "
                            f"'memory', 'critic'); {type(policy).__name__} lacks {missing}. See rl.agents' "
                            "module docstring for the protocol, or wrap an SB3 policy instead")
        self.net = policy
        self._mirror_training(policy)
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self._obs_axes = _default_obs_axes(self.obs_shape) if obs_axes is None else tuple(obs_axes)
        if self._obs_axes is not None and (len(self._obs_axes) != len(self.obs_shape) + 1
                                           or self._obs_axes.count("batch") != 1
                                           or not set(self._obs_axes) <= {"batch", "pos", "head", "feature"}):
            raise InputError(f"obs_axes: {self._obs_axes} must give one role (batch, pos, head, feature) per "
                             f"dimension of a batch [batch, {', '.join(map(str, self.obs_shape))}], one of them "
                             f"'batch'")
        memory = getattr(policy, "memory", None)
        if memory is not None and not isinstance(memory, (nn.GRUCell, nn.LSTMCell, nn.GRU, nn.LSTM)):
            raise InputTypeError(f"policy.memory must be nn.GRUCell, nn.LSTMCell, nn.GRU or nn.LSTM, got "
                            f"{type(memory).__name__}")
        if isinstance(memory, (nn.GRU, nn.LSTM)) and memory.num_layers != 1:
            raise InputTypeError(f"policy.memory as nn.GRU / nn.LSTM must have one layer, got {memory.num_layers}")
        self.memory = memory
        self.recurrent = memory is not None
        self.is_lstm = isinstance(memory, (nn.LSTMCell, nn.LSTM))
        preprocessed = callable(getattr(policy, "preprocess", None))
        self._add("obs", "obs_in", "observation after the policy's preprocess" if preprocessed else
                  "observation as the env emits it", None if preprocessed else self._obs_axes)
        self._add_layers("encoder", policy.encoder, "net.encoder", "encoder")
        self._add("encoder.out", "features_out", "encoder output", ("batch", "feature"))
        if self.recurrent:
            self._add("memory.h", "memory_h", "recurrent hidden state after this step", ("batch", "feature"))
            if self.is_lstm:
                self._add("memory.c", "memory_c", "LSTM cell state after this step", ("batch", "feature"))
        self._add_layers("policy", policy.actor, "net.actor", "actor head")
        if getattr(policy, "critic", None) is not None:
            self._add_layers("value", policy.critic, "net.critic", "critic head")
        self._add("logits", "logits_out", "action logits", ("batch", "feature"))
        self._add("value", "value_out", "state value", ("batch", "feature"))

    def env_observation_shape(self) -> tuple[int, ...]:
        return self.obs_shape

    def input_axes(self) -> tuple[str, ...] | None:
        return self._obs_axes

    def prepare(self, obs: Any) -> torch.Tensor:
        t = self._obs_tensor(obs).float()
        if tuple(t.shape) == self.obs_shape:
            t = t.unsqueeze(0)
        if tuple(t.shape[1:]) != self.obs_shape:
            raise InputError(f"observation of shape {tuple(t.shape)} does not fit [batch, "
                             f"{', '.join(map(str, self.obs_shape))}]")
        pre = getattr(self.net, "preprocess", None)
        return pre(t) if callable(pre) else t

    def initial_state(self, batch: int = 1) -> State | None:
        if not self.recurrent:
            return None
        z = torch.zeros(batch, self.memory.hidden_size, device=self.device_)
        return (z, z.clone()) if self.is_lstm else (z,)

    def _memory_step(self, feat: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor | None]:
        m = self.memory
        if isinstance(m, nn.GRUCell):
            return m(feat, state[0]), None
        if isinstance(m, nn.LSTMCell):
            return m(feat, (state[0], state[1]))
        seq = feat.unsqueeze(1) if m.batch_first else feat.unsqueeze(0)
        if isinstance(m, nn.GRU):
            _, hn = m(seq, state[0].unsqueeze(0))
            return hn[0], None
        _, (hn, cn) = m(seq, (state[0].unsqueeze(0), state[1].unsqueeze(0)))
        return hn[0], cn[0]

    def forward(self, obs: Any, state: State | None = None, episode_start: Any = None) -> PolicyOutput:
        with _threads(self.threads):
            return self._forward(obs, state, episode_start)

    def _forward(self, obs: Any, state: State | None, episode_start: Any) -> PolicyOutput:
        x = self.obs_in(self.prepare(obs))
        feat = self.features_out(self.net.encoder(x))
        batch = feat.shape[0]
        new_state: State | None = None
        latent = feat
        if self.recurrent:
            state = self.initial_state(batch) if state is None else state
            state = _mask_state(state, episode_start, batch_dim=0)
            with _plain_rnn_kernels():
                h, c = self._memory_step(feat, state)
            h = self.memory_h(h)
            if c is not None:
                c = self.memory_c(c)
            new_state = (h, c) if c is not None else (h,)
            latent = h
        logits = self.logits_out(self.net.actor(latent))
        critic = getattr(self.net, "critic", None)
        value = critic(latent) if critic is not None else torch.zeros(batch, 1, device=logits.device)
        value = self.value_out(value.reshape(batch, 1))
        return PolicyOutput(logits, value[:, 0], new_state)


class PolicyAdapter:
    """The ``interp_core`` adapter for policy modules: canonical sites first, then every submodule's
    output by module path (the identity helper modules are hidden behind their canonical names).

    It also describes a raw stable-baselines3 ``ActorCriticPolicy`` (``HookedModel(model.policy)``), whose
    forward is SB3's own ``forward(obs) -> (actions, values, log_prob)`` on observations in the policy's layout
    (channels first): ``obs`` is then the input of the features extractor, ``encoder.*`` / ``encoder.out``
    its layers and output, ``policy.*`` / ``value.*`` the heads' layers, ``logits`` the ``action_net`` output
    and ``value`` the ``value_net`` output. ``memory.*`` exists only on an :class:`Agent`
    (:func:`wrap`), which steps recurrent policies one observation at a time.
    """

    name = "rl-policy"
    _helpers = ("obs_in", "features_out", "memory_h", "memory_c", "logits_out", "value_out")

    def sites(self, model: nn.Module) -> list[Site]:
        if not isinstance(model, _PolicyModuleBase):
            return _sb3_raw_sites(model)
        canonical = model.canonical_sites()
        taken = {s.name for s in canonical}
        generic = [Site(name=path, module_path=path, description=type(m).__name__)
                   for path, m in model.named_modules()
                   if path and not _is_helper(path) and path not in taken and path != "net"]
        return canonical + generic

    def default_sites(self, model: nn.Module) -> list[str]:
        if not isinstance(model, _PolicyModuleBase):
            return [s.name for s in _sb3_raw_sites(model, canonical_only=True)]
        return [s.name for s in model.canonical_sites()]

    def input_axes(self, model: nn.Module, x: torch.Tensor) -> tuple[str, ...] | None:
        """Axis roles of an input batch ``x`` of ``model`` (read by input attributions): the env layout's
        (:attr:`Agent.input_axes`) for observations as the env emits them, channels first for an SB3 image
        policy's own layout; ``None`` (unknown here) otherwise."""
        if not isinstance(model, _PolicyModuleBase) or not isinstance(x, torch.Tensor):
            return None
        shape = tuple(x.shape[1:])
        if shape == tuple(model.env_observation_shape()):
            return model.input_axes()
        if isinstance(model, SB3PolicyModule) and model._transposed and shape == model.observation_shape():
            return ("batch", "feature", "pos", "pos")
        return None

    def example_input(self, model: nn.Module) -> Any:
        if not isinstance(model, _PolicyModuleBase):
            if hasattr(model, "lstm_actor"):
                return None  # SB3's recurrent forward needs states: traced on the first real input
            return torch.zeros(2, *model.observation_space.shape, device=_first_device(model))
        obs = torch.zeros(2, *model.env_observation_shape(), device=model.device_)
        return (obs, model.initial_state(2), None)


def _first_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _sb3_raw_sites(policy: nn.Module, canonical_only: bool = False) -> list[Site]:
    """Canonical sites of a raw SB3 ``ActorCriticPolicy`` on its own module paths (see :class:`PolicyAdapter`)."""
    from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy

    if not isinstance(policy, ActorCriticPolicy):
        if isinstance(policy, BasePolicy):  # DQN / SAC / TD3 policies: every submodule by module path
            return [Site(name=path, module_path=path, description=type(m).__name__)
                    for path, m in policy.named_modules() if path]
        raise InputTypeError(f"model: the rl-policy adapter describes rl.agents policy modules and stable-baselines3 "
                             f"policies, got {type(policy).__name__}")
    fe = "features_extractor" if policy.share_features_extractor else "pi_features_extractor"
    out = [Site(name="obs", module_path=fe, kind="input", description="preprocessed observation (policy layout)")]
    out += [Site(name=f"encoder.{i}", module_path=p, description=f"features extractor layer {i} ({type(m).__name__})")
            for i, (p, m) in enumerate(_leaves(policy.get_submodule(fe), fe))]
    out.append(Site(name="encoder.out", module_path=fe, axes=("batch", "feature"),
                    description="features extractor output"))
    for stem, path, what in (("policy", "mlp_extractor.policy_net", "actor head"),
                             ("value", "mlp_extractor.value_net", "critic head")):
        out += [Site(name=f"{stem}.{i}", module_path=p, description=f"{what} layer {i} ({type(m).__name__})")
                for i, (p, m) in enumerate(_leaves(policy.get_submodule(path), path))]
    out.append(Site(name="logits", module_path="action_net", axes=("batch", "feature"), description="action logits"))
    out.append(Site(name="value", module_path="value_net", axes=("batch", "feature"), description="state value"))
    if canonical_only:
        return out
    taken = {s.name for s in out}
    out += [Site(name=path, module_path=path, description=type(m).__name__)
            for path, m in policy.named_modules() if path and path not in taken]
    return out


class Agent(HookedModel):
    """A policy as a :class:`~interp_core.HookedModel` plus what acting in an env needs.

    ``agent(obs, state, episode_start)`` is one policy step (:class:`PolicyOutput`); every core method
    (``run_with_cache``, ``intervene``, patching, probes) works on it with the canonical policy sites.

    Args:
        module: an :class:`SB3PolicyModule` or :class:`PlainPolicyModule`.
        env_id: the env id for :func:`rl.envs.make` (``None`` if unknown).
        env_kwargs: its keyword arguments.
        name: a label (the zoo name).
        card: the zoo card (training and evaluation facts), if any.
        action_names: names of the discrete actions (for metrics such as ``action_logit_diff("toggle",
            "left")``).
    """

    def __init__(self, module: _PolicyModuleBase, env_id: str | None = None, env_kwargs: dict | None = None,
                 name: str | None = None, card: dict | None = None, action_names: Sequence[str] | None = None):
        super().__init__(module, PolicyAdapter())
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.name = name or type(getattr(module, "net", module)).__name__
        self.card = card
        self.action_names = list(action_names) if action_names is not None else default_action_names(env_id)

    def __repr__(self) -> str:
        return (f"Agent({self.name!r}, env={self.env_id!r}, recurrent={self.recurrent}, "
                f"{len(self.sites)} sites)")

    @property
    def recurrent(self) -> bool:
        return bool(self.model.recurrent)

    @property
    def input_axes(self) -> tuple[str, ...] | None:
        """Axis roles of an observation batch as the env emits it, the agent's input, batch included:
        ``("batch", "pos", "pos", "feature")`` for MiniGrid's ``[N, 7, 7, 3]`` images, ``("batch", "feature")``
        for vectors; ``None`` when unknown. Input attributions label their maps with these."""
        return self.model.input_axes()

    @property
    def n_actions(self) -> int:
        if hasattr(self.model, "n_actions"):
            return int(self.model.n_actions)
        with self.analysis(), torch.no_grad():
            return int(self.model(*self.adapter.example_input(self.model)).logits.shape[-1])

    def initial_state(self, batch: int = 1) -> State | None:
        """Zero recurrent state for ``batch`` envs (``None`` for feed-forward policies)."""
        return self.model.initial_state(batch)

    def make_env(self, **overrides: Any):
        """A fresh env of the agent's env id: world-recording when the id is registered (:func:`rl.envs.make`),
        else gymnasium's own env (no world variables)."""
        if self.env_id is None:
            raise InputError("this agent has no env_id; pass Agent(..., env_id=...) or build the env yourself")
        from .envs import make_any

        return make_any(self.env_id, **{**self.env_kwargs, **overrides})

    def action_index(self, action: int | str) -> int:
        """The index of an action given by index or by name (``"toggle"``)."""
        if isinstance(action, str):
            if action not in self.action_names:
                raise SiteError(f"unknown action {action!r}; this agent's actions are {self.action_names}")
            return self.action_names.index(action)
        return int(action)

    @torch.no_grad()
    def act(self, obs: Any, state: State | None = None, episode_start: Any = None, deterministic: bool = True,
            generator: torch.Generator | None = None) -> tuple[Any, State | None]:
        """Choose actions for ``obs`` (one observation or a batch): ``(action, new_state)``.

        Discrete policies: ``deterministic`` takes the argmax of the logits (SB3's
        ``predict(deterministic=True)``); otherwise actions are sampled from ``softmax(logits)`` with
        ``generator``. DQN: the argmax of the Q-values (exploration is the algorithm's, not the policy's).
        Continuous policies give ``[batch, action_dim]`` actions in the action space's bounds, as SB3's
        ``predict`` does: the Gaussian mean clipped to the bounds (PPO / A2C), ``tanh`` of the mean rescaled to
        the bounds (SAC / TQC), the actor's output rescaled (TD3 / DDPG); with ``deterministic=False`` the
        Gaussian is sampled (``mean + std * N(0, 1)``, ``generator``) before clipping / squashing.

        Interventions active on the agent (``with agent.intervene(...)``) apply. A single observation gives an
        ``int`` (discrete) or a ``[action_dim]`` array (continuous). The policy runs in eval mode
        (``self.analysis()``), every module's train/eval flag restored afterwards.
        """
        single = tuple(np.shape(obs)) == tuple(self.model.env_observation_shape())
        if single and episode_start is not None:
            episode_start = np.atleast_1d(episode_start)
        with self.analysis():
            out = self.model(obs, state, episode_start)
        actions = self.model.actions(out, deterministic=deterministic, generator=generator).cpu().numpy()
        if single:
            return (actions[0] if self.continuous else int(actions[0])), out.state
        return actions, out.state

    @property
    def action_kind(self) -> str:
        """``"categorical"``, ``"q"``, ``"gaussian"``, ``"squashed_gaussian"`` or ``"deterministic"``
        (see :class:`PolicyOutput`)."""
        return self.model.action_kind

    @property
    def continuous(self) -> bool:
        """Whether the agent's actions are continuous (``[batch, action_dim]``)."""
        return bool(self.model.continuous)

    def random_twin(self, seed: int | None = None) -> "Agent":
        """The random-init twin of this agent (same class and architecture, initialised from ``seed``, never
        trained): see :func:`random_twin`."""
        return random_twin(self, seed=seed)


def default_action_names(env_id: str | None) -> list[str] | None:
    """Action names of ``env_id`` from its registered :class:`rl.envs.EnvSpec` (``None`` if unknown)."""
    from .envs import action_names

    return action_names(env_id)


def _algorithm_env_id(algo: Any) -> str | None:
    """The gymnasium id of an SB3 algorithm's training env, when it has one (``None`` otherwise)."""
    get_env = getattr(algo, "get_env", None)
    env = get_env() if callable(get_env) else None
    if env is None:
        return None
    try:
        spec = env.get_attr("spec", indices=[0])[0]
    except Exception:  # a VecEnv without the attribute, or a remote one that fails: the id is optional
        return None
    return getattr(spec, "id", None)


def _sb3_module(policy: nn.Module) -> _SB3Module:
    """The step module for a stable-baselines3 (or sb3-contrib) policy object, by what it is."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    if isinstance(policy, ActorCriticPolicy) or all(hasattr(policy, a) for a in ("mlp_extractor", "action_net",
                                                                               "value_net")):
        return SB3PolicyModule(policy)
    if hasattr(policy, "q_net") or hasattr(policy, "quantile_net"):
        return SB3QModule(policy)
    if hasattr(policy, "actor") and hasattr(getattr(policy, "critic", None), "q_networks"):
        return SB3ActorCriticQModule(policy)
    raise InputTypeError(f"policy: {type(policy).__name__} is a stable-baselines3 policy rl.agents does not know; "
                         f"supported: ActorCriticPolicy (PPO, A2C, TRPO, RecurrentPPO, MaskablePPO), DQNPolicy, "
                         f"QRDQNPolicy, SACPolicy, TD3Policy (TD3, DDPG), TQCPolicy")


def wrap(policy: Any, env_id: str | None = None, obs_shape: Sequence[int] | None = None, **kwargs: Any) -> Agent:
    """Make an :class:`Agent` from any stable-baselines3 / sb3-contrib algorithm (``PPO``, ``A2C``, ``DQN``,
    ``SAC``, ``TD3``, ``DDPG``, ``RecurrentPPO``, ``TRPO``, ``QRDQN``, ``TQC``, ``MaskablePPO``) or its
    ``.policy``, or a plain ``nn.Module`` following the protocol (then ``obs_shape`` is required;
    ``obs_axes=`` may say its layout). ``kwargs`` go to :class:`Agent`. An algorithm's own env id is used when
    ``env_id`` is not given.
    """
    from stable_baselines3.common.policies import BasePolicy

    obs_axes = kwargs.pop("obs_axes", None)
    if isinstance(getattr(policy, "policy", None), BasePolicy):
        env_id = env_id if env_id is not None else _algorithm_env_id(policy)
        policy = policy.policy
    if isinstance(policy, BasePolicy):
        return Agent(_sb3_module(policy), env_id=env_id, **kwargs)
    if isinstance(policy, nn.Module):
        if obs_shape is None:
            raise InputError("obs_shape: wrapping a plain nn.Module policy needs obs_shape= (the per-example "
                             "observation shape)")
        return Agent(PlainPolicyModule(policy, obs_shape, obs_axes=obs_axes), env_id=env_id, **kwargs)
    raise InputTypeError(f"policy: cannot wrap a {type(policy).__name__}: expected a stable-baselines3 algorithm or "
                         "policy, or an nn.Module following rl.agents' plain-policy protocol")


# ---------------------------------------------------------------------------------------------- twins
def _constructor_kwargs(policy: nn.Module) -> dict[str, Any]:
    """Arguments that rebuild an SB3 policy's architecture: SB3's own ``_get_constructor_parameters`` (what
    ``policy.save`` stores), completed from the object for arguments it leaves out (sb3-contrib's LSTM sizes,
    ``share_features_extractor``, ``n_critics`` ...)."""
    import inspect

    kwargs = dict(policy._get_constructor_parameters())
    params = inspect.signature(type(policy).__init__).parameters
    lstm = getattr(policy, "lstm_actor", None)
    recovered = {"lstm_hidden_size": getattr(lstm, "hidden_size", None), "n_lstm_layers": getattr(lstm, "num_layers",
                                                                                                   None)}
    for name in params:
        if name in ("self", "args", "kwargs") or name in kwargs:
            continue
        if recovered.get(name) is not None:
            kwargs[name] = recovered[name]
        elif name in vars(policy) or hasattr(type(policy), name):
            kwargs[name] = getattr(policy, name)
    return {k: v for k, v in kwargs.items() if k in params}


def _reinit_plain(net: nn.Module, seed: int) -> nn.Module:
    import copy

    twin = copy.deepcopy(net)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in twin.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return twin


def random_twin(agent: Any, seed: int | None = None) -> Agent:
    """The random-init twin of ``agent``: the same policy class and architecture, initialised from ``seed``
    and never trained — the control for probes (what the architecture gives for free).

    - zoo agents: ``rl.zoo.load(NAME, seed=seed, random_init=True)`` (the same weights this function builds);
    - any stable-baselines3 agent: ``type(policy)(**constructor arguments)`` under ``torch.manual_seed(seed)``,
      i.e. SB3's own initialisation (orthogonal for actor-critic policies), on the agent's device, in eval mode;
    - plain ``nn.Module`` policies: a copy whose every module is re-initialised by its ``reset_parameters``
      (PyTorch's default initialisation, which may differ from a custom scheme the author used).

    ``seed`` defaults to the zoo agent's seed, else 0. ``agent`` may also be an SB3 algorithm or policy.
    The twin's parameters are checked to have exactly the agent's names and shapes.
    """
    from interp_core.errors import InterpError

    if not isinstance(agent, Agent):
        agent = wrap(agent)
    module = agent.model
    base = None
    if agent.name:
        from . import zoo

        try:
            base, zoo_seed, _ = zoo.parse_name(agent.name)
        except InputError:
            base = None
        if base is not None and base not in zoo.names():
            base = None
        if base is not None and seed is None:
            seed = zoo_seed
    seed = 0 if seed is None else int(seed)
    if base is not None and isinstance(module, SB3PolicyModule):
        twin = zoo.load(base, seed=seed, random_init=True)
        return twin.to(module.device_) if twin.model.device_ != module.device_ else twin
    net = module.net
    if isinstance(module, _SB3Module):
        kwargs = _constructor_kwargs(net)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                fresh = type(net)(**kwargs)
        except Exception as e:
            raise InterpError(f"agent: could not rebuild {type(net).__name__} from its constructor arguments "
                              f"{sorted(kwargs)} ({e}); build the twin yourself and pass it as random_twin=") from e
        fresh = fresh.to(module.device_)
        new_module: _PolicyModuleBase = type(module)(fresh.eval())
    else:
        fresh = _reinit_plain(net, seed).eval()
        new_module = PlainPolicyModule(fresh, module.obs_shape, obs_axes=module._obs_axes)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:4]
        raise InterpError(f"agent: the rebuilt {type(net).__name__} does not match the agent's architecture "
                          f"(differs in {diff}); build the twin yourself and pass it as random_twin=")
    label = f"{agent.name}-random@seed{seed}" if agent.name else None
    card = {"random_twin_of": agent.name, "seed": seed, "random_init": True,
            "note": "same architecture as the agent, initialised from the seed, never trained"}
    return Agent(new_module, env_id=agent.env_id, env_kwargs=agent.env_kwargs, name=label, card=card,
                 action_names=agent.action_names)


def claim(obj: Any) -> Any:
    """The ``interp_suite.adapters`` entry point: policies become :class:`Agent` objects (priority 20, above
    the vision adapters, since an SB3 CNN policy is also a conv net); anything else is not claimed.

    Claimed: the step modules of this file, :class:`rl.sequence.EpisodeModel` (its time-axis sites), any
    stable-baselines3 / sb3-contrib algorithm (``PPO``, ``A2C``, ``DQN``, ``SAC``, ``TD3``, ``DDPG``,
    ``RecurrentPPO``, ``TRPO``, ``QRDQN``, ``TQC``, ``MaskablePPO``) and their policies."""
    if isinstance(obj, _PolicyModuleBase):
        adapter = PolicyAdapter()
        adapter.priority = 20
        return adapter
    if type(obj).__name__ == "EpisodeModel" and type(obj).__module__ == "rl.sequence":
        return obj.hooked  # one HookedModel per EpisodeModel, kept: its trace is reused by every method
    classes = (*type(obj).__mro__, *type(getattr(obj, "policy", None)).__mro__)
    if not any(c.__module__.startswith(("stable_baselines3", "sb3_contrib")) for c in classes):
        return None  # not an SB3 object: stable-baselines3 (slow to import) is not imported
    try:
        from stable_baselines3.common.policies import BasePolicy
    except ImportError:  # the rl extra is not installed
        return None
    if isinstance(obj, BasePolicy) or isinstance(getattr(obj, "policy", None), BasePolicy):
        agent = wrap(obj)
        agent.priority = 20
        return agent
    return None
