"""Policies as hooked models with the canonical policy sites (``rl.agents``).

An RL policy becomes an :class:`Agent`: a :class:`~interp_core.HookedModel` around a small ``nn.Module``
(:class:`SB3PolicyModule` or :class:`PlainPolicyModule`) whose forward is one policy step::

    output = agent(obs, state, episode_start)        # PolicyOutput(logits, value, state)
    output, cache = agent.run_with_cache((obs, state, episode_start), sites=["memory.h", "logits"])
    action, state = agent.act(obs, state)            # one env step's action (argmax by default)

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
                 ``distribution.distribution.logits``)
``value``        the state-value estimate ``[batch, 1]``
================ ================================================================================

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
        logits: ``[batch, n_actions]`` unnormalised action logits.
        value: ``[batch]`` state-value estimates (zeros if the policy has no critic).
        state: the recurrent state to pass to the next step (``None`` for feed-forward policies).
    """

    logits: torch.Tensor
    value: torch.Tensor
    state: State | None


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


class _PolicyModuleBase(nn.Module):
    """Shared pieces: identity modules that make canonical sites, and the canonical site list.

    ``threads`` (default 1): intra-op threads used by a forward. Policy networks are tiny, so threads only
    add synchronisation; on a loaded 2-core machine a 2-thread forward of the DoorKey CNN took 4-8 ms
    against 0.6 ms on one thread (measured here). ``None`` leaves torch's setting alone.
    """

    recurrent: bool = False
    threads: int | None = 1

    def __init__(self) -> None:
        super().__init__()
        # identity modules: their outputs are the canonical sites; patching them patches the computation
        self.obs_in = nn.Identity()
        self.features_out = nn.Identity()
        self.memory_h = nn.Identity()
        self.memory_c = nn.Identity()
        self.logits_out = nn.Identity()
        self.value_out = nn.Identity()
        # (site name, module path, description, axes or None = inferred from the traced shape)
        self._canonical: list[tuple[str, str, str, tuple[str, ...] | None]] = []
        self.__dict__["_device_param"] = None  # a plain attribute, not a registered parameter

    def _mirror_training(self, policy: nn.Module) -> None:
        """Give this wrapper (and its identity helpers) the wrapped policy's train/eval flag, without
        touching the policy: the root flag then says truthfully whether the policy is in train mode."""
        for m in (self, self.obs_in, self.features_out, self.memory_h, self.memory_c, self.logits_out,
                  self.value_out):
            m.training = policy.training

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


class SB3PolicyModule(_PolicyModuleBase):
    """One step of a stable-baselines3 ``ActorCriticPolicy`` / ``ActorCriticCnnPolicy`` or an sb3-contrib
    ``RecurrentActorCriticPolicy`` (discrete actions), as ``forward(obs, state=None, episode_start=None) ->
    PolicyOutput``. It reuses the policy's own submodules (``self.net``), never copying or changing them.

    Recurrent state: ``(h, c)`` each ``[n_layers, batch, hidden]`` for the actor LSTM, followed by
    ``(h_vf, c_vf)`` when the critic has its own LSTM (``enable_critic_lstm=True``).
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        from gymnasium import spaces
        from stable_baselines3.common.policies import ActorCriticPolicy

        if not isinstance(policy, ActorCriticPolicy):
            raise InputTypeError(f"SB3PolicyModule wraps a stable-baselines3 ActorCriticPolicy, got "
                            f"{type(policy).__name__}; pass model.policy for an algorithm object")
        if not isinstance(policy.action_space, spaces.Discrete):
            raise InputTypeError(f"only discrete action spaces are supported (logits); got {policy.action_space}")
        self.net = policy
        self._mirror_training(policy)
        self.recurrent = hasattr(policy, "lstm_actor")
        self.n_actions = int(policy.action_space.n)
        self._pshape = tuple(policy.observation_space.shape)
        self._eshape = self._env_shape()
        # SB3 transposed a channels-last image space (VecTransposeImage): the env emits [h, w, c]
        self._transposed = len(self._pshape) == 3 and self._pshape != self._eshape
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
        self._add("logits", "logits_out", "action logits", ("batch", "feature"))
        self._add("value", "value_out", "state value", ("batch", "feature"))

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
        value = self.value_out(p.value_net(latent_vf))
        return PolicyOutput(logits, value[:, 0], new_state)


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
                   if path and path not in self._helpers and path not in taken and path != "net"]
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
    from stable_baselines3.common.policies import ActorCriticPolicy

    if not isinstance(policy, ActorCriticPolicy):
        raise InputTypeError(f"model: the rl-policy adapter describes rl.agents policy modules and stable-baselines3 "
                             f"ActorCriticPolicy objects, got {type(policy).__name__}")
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

        ``deterministic`` takes the argmax of the logits (SB3's ``predict(deterministic=True)``); otherwise
        actions are sampled with ``generator``. Interventions active on the agent (``with
        agent.intervene(...)``) apply. A single observation gives an ``int`` action. The policy runs in eval mode
        (``self.analysis()``), every module's train/eval flag restored afterwards.
        """
        single = tuple(np.shape(obs)) == tuple(self.model.env_observation_shape())
        if single and episode_start is not None:
            episode_start = np.atleast_1d(episode_start)
        with self.analysis():
            out = self.model(obs, state, episode_start)
        if deterministic:
            actions = out.logits.argmax(-1)
        else:
            probs = torch.softmax(out.logits, -1)
            actions = torch.multinomial(probs, 1, generator=generator)[:, 0]
        actions = actions.cpu().numpy()
        return (int(actions[0]) if single else actions), out.state


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


def wrap(policy: Any, env_id: str | None = None, obs_shape: Sequence[int] | None = None, **kwargs: Any) -> Agent:
    """Make an :class:`Agent` from an SB3 algorithm (``PPO``, ``RecurrentPPO``), an SB3 policy, or a plain
    ``nn.Module`` following the protocol (then ``obs_shape`` is required; ``obs_axes=`` may say its layout).
    ``kwargs`` go to :class:`Agent`. An algorithm's own env id is used when ``env_id`` is not given.
    """
    from stable_baselines3.common.policies import ActorCriticPolicy

    obs_axes = kwargs.pop("obs_axes", None)
    if hasattr(policy, "policy") and isinstance(policy.policy, ActorCriticPolicy):
        env_id = env_id if env_id is not None else _algorithm_env_id(policy)
        policy = policy.policy
    if isinstance(policy, ActorCriticPolicy):
        return Agent(SB3PolicyModule(policy), env_id=env_id, **kwargs)
    if isinstance(policy, nn.Module):
        if obs_shape is None:
            raise InputError("obs_shape: wrapping a plain nn.Module policy needs obs_shape= (the per-example "
                             "observation shape)")
        return Agent(PlainPolicyModule(policy, obs_shape, obs_axes=obs_axes), env_id=env_id, **kwargs)
    raise InputTypeError(f"policy: cannot wrap a {type(policy).__name__}: expected an SB3 algorithm or "
                         "ActorCriticPolicy, or an nn.Module following rl.agents' plain-policy protocol")


def claim(obj: Any) -> Any:
    """The ``interp_suite.adapters`` entry point: policies become :class:`Agent` objects (priority 20, above
    the vision adapters, since an SB3 CNN policy is also a conv net); anything else is not claimed."""
    if isinstance(obj, _PolicyModuleBase):
        adapter = PolicyAdapter()
        adapter.priority = 20
        return adapter
    try:
        from stable_baselines3.common.policies import ActorCriticPolicy
    except ImportError:  # the rl extra is not installed
        return None
    if isinstance(obj, ActorCriticPolicy) or isinstance(getattr(obj, "policy", None), ActorCriticPolicy):
        agent = wrap(obj)
        agent.priority = 20
        return agent
    return None
