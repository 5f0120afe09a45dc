"""World-state variables and the wrapper protocol that records them.

A :class:`WorldWrapper` wraps any gymnasium env and adds, to the ``info`` dict of ``reset`` and of every
``step``, the *true* state of the world at that moment, as named typed variables, and for each variable
whether the agent's current observation shows it:

- ``info["world"]``: ``{name: value}`` — ``int`` for categorical / ordinal variables, ``float`` for
  continuous ones;
- ``info["world_visible"]``: ``{name: bool}`` — ``True`` when the observation returned with this ``info``
  shows the variable (each env documents its exact rule).

The values describe the state *after* the transition, i.e. the state the returned observation shows, so
``obs[t]``, ``info[t]["world"]`` and the agent's activations at step ``t`` line up.

Variables are typed so probes can choose classification (categorical), ordinal regression / classification
(ordinal) or regression (continuous) automatically.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from interp_core.errors import InputError, InputTypeError, SiteError

VariableKind = Literal["categorical", "ordinal", "continuous"]


@dataclass(frozen=True)
class Variable:
    """A named, typed world-state variable.

    Attributes:
        name: short snake-case name (``agent_x``, ``cue``).
        kind: ``"categorical"`` (unordered classes, stored as ``int`` codes), ``"ordinal"`` (ordered
            integers, e.g. grid coordinates or a BFS distance) or ``"continuous"`` (a real number).
        description: one line, with units.
        categories: for categorical variables, the class names by code (``("left", "right")``).
    """

    name: str
    kind: VariableKind
    description: str = ""
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("categorical", "ordinal", "continuous"):
            raise InputError(f"variable {self.name!r}: kind must be categorical, ordinal or continuous, "
                             f"got {self.kind!r}")

    @property
    def is_classification(self) -> bool:
        """Whether a probe for this variable is a classifier (categorical) rather than a regressor."""
        return self.kind == "categorical"


class WorldWrapper(gym.Wrapper):
    """Base class: subclasses define :attr:`variables` and :meth:`world`.

    ``world()`` returns ``(values, visible)`` for the current state of the wrapped env; this base class adds
    them to the ``info`` of ``reset`` and ``step``. The wrapper never changes observations, rewards or
    dynamics.
    """

    variables: tuple[Variable, ...] = ()

    def world(self) -> tuple[dict[str, Any], dict[str, bool]]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def variable_names(self) -> list[str]:
        return [v.name for v in self.variables]

    def variable(self, name: str) -> Variable:
        """The :class:`Variable` called ``name`` (raises a helpful ``KeyError`` otherwise)."""
        for v in self.variables:
            if v.name == name:
                return v
        raise SiteError(f"unknown world variable {name!r}; this env records {self.variable_names}")

    def _annotate(self, info: dict[str, Any]) -> dict[str, Any]:
        values, visible = self.world()
        info = dict(info)
        info["world"] = values
        info["world_visible"] = visible
        return info

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        return obs, self._annotate(info)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._annotate(info)


def world_wrapper(env: gym.Env) -> WorldWrapper | None:
    """The outermost :class:`WorldWrapper` in ``env``'s wrapper chain, or ``None`` (a plain env)."""
    e: Any = env
    while e is not None:
        if isinstance(e, WorldWrapper):
            return e
        e = getattr(e, "env", None)
    return None


def find_world_wrapper(env: gym.Env) -> WorldWrapper:
    """The outermost :class:`WorldWrapper` in ``env``'s wrapper chain (raises if there is none)."""
    found = world_wrapper(env)
    if found is None:
        raise InputTypeError(f"env: {env} records no world state; build it with rl.envs.make(ENV_ID), wrap it in "
                             "a WorldWrapper (CartPoleWorld, MiniGridWorld), or in rl.envs.FunctionWorld(env, "
                             "lambda env: {...}) for variables of your own")
    return found


def _infer_variable(name: str, value: Any) -> Variable:
    if isinstance(value, (bool, np.bool_)):
        return Variable(name, "categorical", "given by the world function", ("no", "yes"))
    if isinstance(value, (int, np.integer)):
        return Variable(name, "ordinal", "given by the world function")
    if isinstance(value, (float, np.floating)):
        return Variable(name, "continuous", "given by the world function")
    raise InputTypeError(f"world: variable {name!r} is a {type(value).__name__}; a world function returns "
                         f"numbers (bool: categorical, int: ordinal, float: continuous), or declare the variable "
                         f"with FunctionWorld(env, fn, variables=[Variable(...)])")


def _coerce(var: Variable, value: Any) -> Any:
    try:
        return float(value) if var.kind == "continuous" else int(value)
    except (TypeError, ValueError):
        raise InputTypeError(f"world: variable {var.name!r} ({var.kind}) got {value!r}; give a number") from None


class FunctionWorld(WorldWrapper):
    """World variables computed by a function of the env: ``FunctionWorld(env, lambda env: {...})``.

    ``fn(env)`` is called after every ``reset`` and ``step`` with the env this wrapper wraps, and returns
    ``{name: value}`` or ``({name: value}, {name: visible})``. Variables are typed from the first values
    (``bool`` -> categorical no/yes, ``int`` -> ordinal, ``float`` -> continuous) unless ``variables`` declares
    them. Visibility flags default to ``True`` when the function gives none: without a rule for what the
    observation shows, a decoded variable is never counted as evidence of memory (the conservative reading of
    :mod:`rl.worldmodel`'s verdicts).

    Variables recorded by a world wrapper further in (``rl.envs.make``'s) are kept beside the function's; a
    name in both raises.

    Args:
        env: any gymnasium env.
        fn: ``fn(env) -> values`` or ``(values, visible)``.
        variables: the function's variables, if their kinds should not be inferred.
    """

    def __init__(self, env: gym.Env, fn: Any, variables: Any = None):
        super().__init__(env)
        if not callable(fn):
            raise InputTypeError(f"world: expected a function env -> {{name: value}}, got {type(fn).__name__}")
        self.fn = fn
        inner = world_wrapper(env)
        self._inner: tuple[Variable, ...] = tuple(inner.variables) if inner is not None else ()
        self._own: tuple[Variable, ...] | None = None
        if variables is not None:
            own = tuple(variables)
            bad = [v for v in own if not isinstance(v, Variable)]
            if bad:
                raise InputTypeError(f"variables: expected rl.envs.Variable objects, got {type(bad[0]).__name__}")
            self._set_own(own)

    def _set_own(self, own: tuple[Variable, ...]) -> None:
        clash = sorted({v.name for v in own} & {v.name for v in self._inner})
        if clash:
            raise InputError(f"world: variables {clash} are recorded by the env's world wrapper already; rename "
                             f"them in the world function")
        self._own = own
        self.variables = self._inner + own

    def world(self) -> tuple[dict[str, Any], dict[str, bool]]:
        got = self.fn(self.env)
        visible_given: Any = None
        if isinstance(got, tuple) and len(got) == 2:
            got, visible_given = got
        if not isinstance(got, Mapping):
            raise InputTypeError(f"world: the world function returned a {type(got).__name__}; return a dict "
                                 f"{{name: value}} or a pair (values, visible)")
        if self._own is None:
            self._set_own(tuple(_infer_variable(str(k), v) for k, v in got.items()))
        assert self._own is not None
        names = [v.name for v in self._own]
        if set(got) != set(names):
            raise InputError(f"world: the world function returned variables {sorted(got)} but earlier "
                             f"{sorted(names)}; return the same names at every step")
        values = {v.name: _coerce(v, got[v.name]) for v in self._own}
        visible = {n: bool(visible_given[n]) if visible_given is not None and n in visible_given else True
                   for n in names}
        return values, visible

    def _annotate(self, info: dict[str, Any]) -> dict[str, Any]:
        values, visible = self.world()
        info = dict(info)
        info["world"] = {**info.get("world", {}), **values}
        info["world_visible"] = {**info.get("world_visible", {}), **visible}
        return info
