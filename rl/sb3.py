"""stable-baselines3 / sb3-contrib policies as step modules (re-exported by :mod:`rl.agents`).

- :class:`SB3PolicyModule`: actor-critic policies (PPO, A2C, TRPO, RecurrentPPO, MaskablePPO), recurrent ones
  stepped one observation at a time with ``memory.h`` / ``memory.c``;
- :class:`SB3QModule`: DQN / QR-DQN (``q_values``, ``quantiles``);
- :class:`SB3ActorCriticQModule`: SAC / TD3 / DDPG / TQC (``action``, ``critic.qi``);
- :func:`sb3_module` picks one for a policy object; :func:`sb3_raw_sites` names the canonical sites of a raw
  ``ActorCriticPolicy`` on its own module paths; :func:`constructor_kwargs` rebuilds a policy's architecture
  (for random-init twins).

The site table and the action kinds are documented in :mod:`rl.agents`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from interp_core.errors import InputError, InputTypeError
from interp_core.sites import Site

from .policy_base import PolicyOutput, State, _leaves, _mask_state, _plain_rnn_kernels, _PolicyModuleBase


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
    def step(self, x: torch.Tensor, state: State | None, episode_start: Any) -> PolicyOutput:
        p = self.net
        x = self.to_network(self.obs_in(x))
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

    def step(self, x: torch.Tensor, state: State | None, episode_start: Any) -> PolicyOutput:
        p = self.net
        qnet = p.quantile_net if self.quantile else p.q_net
        x = self.to_network(self.obs_in(x))
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

    def step(self, x: torch.Tensor, state: State | None, episode_start: Any) -> PolicyOutput:
        from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN

        actor, critic = self.net.actor, self.net.critic
        x = self.to_network(self.obs_in(x))
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



# public names of the helpers (the underscored ones stay importable from rl.agents)
sb3_raw_sites = _sb3_raw_sites
sb3_module = _sb3_module
constructor_kwargs = _constructor_kwargs
algorithm_env_id = _algorithm_env_id

__all__ = ["SB3PolicyModule", "SB3QModule", "SB3ActorCriticQModule", "sb3_module", "sb3_raw_sites",
           "constructor_kwargs", "algorithm_env_id"]
