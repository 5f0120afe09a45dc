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

from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym

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


def find_world_wrapper(env: gym.Env) -> WorldWrapper:
    """The outermost :class:`WorldWrapper` in ``env``'s wrapper chain (raises if there is none)."""
    e: Any = env
    while e is not None:
        if isinstance(e, WorldWrapper):
            return e
        e = getattr(e, "env", None)
    raise InputTypeError(f"{env} records no world state; build it with rl.envs.make(ENV_ID) or wrap it in a "
                    "WorldWrapper (CartPoleWorld, MiniGridWorld) first")
