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

The code lives in three files: this one (the :class:`Agent`, plain policies, :func:`wrap`, :func:`random_twin`,
:func:`claim`), :mod:`rl.sb3` (the stable-baselines3 step modules) and :mod:`rl.policy_base` (the shared
base); every name stays importable from here.

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


from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from interp_core import HookedModel
from interp_core.errors import InputError, InputTypeError, SiteError
from interp_core.sites import Site

from .policy_base import (  # noqa: F401  (re-exported: every name of rl.agents stays importable from here)
    PolicyOutput,
    State,
    _default_obs_axes,
    _first_device,
    _is_helper,
    _leaves,
    _mask_state,
    _plain_rnn_kernels,
    _PolicyModuleBase,
    _threads,
)
from .sb3 import (  # noqa: F401  (re-exported)
    SB3ActorCriticQModule,
    SB3PolicyModule,
    SB3QModule,
    _algorithm_env_id,
    _constructor_kwargs,
    _sb3_module,
    _sb3_raw_sites,
    _SB3Module,
)


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

    def step(self, x: torch.Tensor, state: State | None, episode_start: Any) -> PolicyOutput:
        x = self.obs_in(x)
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
        value = critic(latent) if critic is not None else torch.zeros_like(logits[:, :1])
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
