"""The env registry: env ids -> how to build them, their action names and their world variables.

Each env module of this package declares its specs as data, a module-level ``SPECS`` tuple of
:class:`EnvSpec`; :mod:`rl.envs` lists those modules once (``ENV_MODULES``) and builds the registry from them
the first time it is asked. Nothing registers itself as a side effect of importing an unrelated module. A new
env is one file (the env, its world wrapper and its ``SPECS``) plus one line in ``ENV_MODULES``; a user's own
env is one call::

    rl.envs.register(EnvSpec("Toy-v0", make=lambda env_id, **kw: ToyWorld(ToyEnv(**kw)),
                              action_names=("left", "right")))

after which ``rl.envs.make("Toy-v0")``, ``rl.collect(agent, "Toy-v0", ...)`` and the agents' action names
work with it.

Lookup rule: an exact id wins; otherwise the matching glob pattern (``"MiniGrid-*"``) with the most literal
characters (the most specific one); none raises an :class:`~interp_core.errors.InputError` that lists the
registered ids.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from interp_core.errors import InputError, InputTypeError

from .base import Variable

__all__ = ["EnvSpec", "EnvRegistry"]


@dataclass(frozen=True)
class EnvSpec:
    """How to build one env (or a family of ids) with its world state recorded.

    Attributes:
        id: an exact env id (``"TMaze-v0"``) or a glob pattern for a family (``"MiniGrid-*"``).
        make: ``make(env_id, **kwargs) -> gym.Env``: the env, wrapped in a
            :class:`~rl.envs.base.WorldWrapper` when it records world variables (an env without one still
            works with :func:`rl.collect`, activations only).
        action_names: names of the discrete actions by index (``("left", "right")``), or ``None``.
        variables: the world variables every env of this spec records, or ``None`` when they depend on the
            env instance (MiniGrid: DoorKey has a key and a door, Empty has none); then they are read from a
            built env (:meth:`EnvRegistry.variables`).
        examples: concrete ids of the family (used by the tests and listed in errors).
        description: one line.
    """

    id: str
    make: Callable[..., gym.Env]
    action_names: tuple[str, ...] | None = None
    variables: tuple[Variable, ...] | None = None
    examples: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise InputError(f"EnvSpec id: a non-empty string (an env id or a glob pattern), got {self.id!r}")
        if not callable(self.make):
            raise InputTypeError(f"EnvSpec {self.id!r}: make must be a callable make(env_id, **kwargs) -> gym.Env, "
                                 f"got {type(self.make).__name__}")
        if self.action_names is not None:
            object.__setattr__(self, "action_names", tuple(str(a) for a in self.action_names))
        if self.variables is not None:
            bad = [v for v in self.variables if not isinstance(v, Variable)]
            if bad:
                raise InputTypeError(f"EnvSpec {self.id!r}: variables must be rl.envs.Variable objects, got "
                                     f"{type(bad[0]).__name__}")
            object.__setattr__(self, "variables", tuple(self.variables))
        object.__setattr__(self, "examples", tuple(self.examples) or (() if self.is_pattern else (self.id,)))

    @property
    def is_pattern(self) -> bool:
        """Whether :attr:`id` is a glob pattern (``*``, ``?`` or ``[``) rather than one id."""
        return any(c in self.id for c in "*?[")

    def matches(self, env_id: str) -> bool:
        return env_id == self.id or (self.is_pattern and fnmatch.fnmatchcase(env_id, self.id))

    def _specificity(self) -> int:
        return sum(c not in "*?[]" for c in self.id)


class EnvRegistry:
    """Env specs from the ``SPECS`` of a fixed list of modules, plus those added with :meth:`register`.

    Args:
        modules: module names (relative to ``package``) whose ``SPECS`` make the built-in registry; imported
            on the first lookup.
        package: the package the names are relative to.
    """

    def __init__(self, modules: Sequence[str] = (), package: str | None = None):
        self._modules = tuple(modules)
        self._package = package
        self._specs: dict[str, EnvSpec] | None = None

    def _table(self) -> dict[str, EnvSpec]:
        if self._specs is None:
            specs: dict[str, EnvSpec] = {}
            for name in self._modules:
                module = importlib.import_module(f".{name}" if self._package else name, self._package)
                for spec in getattr(module, "SPECS", ()):
                    specs[spec.id] = spec
            self._specs = specs
        return self._specs

    def register(self, spec: EnvSpec, replace: bool = False) -> EnvSpec:
        """Add ``spec``; an id registered already raises unless ``replace=True``. Returns ``spec``."""
        if not isinstance(spec, EnvSpec):
            raise InputTypeError(f"spec: expected an rl.envs.EnvSpec, got {type(spec).__name__}")
        table = self._table()
        if spec.id in table and not replace:
            raise InputError(f"spec: env id {spec.id!r} is registered already; pass replace=True to replace it, "
                             f"or unregister({spec.id!r}) first")
        table[spec.id] = spec
        return spec

    def unregister(self, env_id: str) -> EnvSpec:
        """Remove and return the spec registered under exactly ``env_id``."""
        table = self._table()
        if env_id not in table:
            raise InputError(f"env_id: {env_id!r} is not registered; registered: {self.ids()}")
        return table.pop(env_id)

    def ids(self) -> list[str]:
        """Registered ids and patterns, in registration order."""
        return list(self._table())

    def find(self, env_id: str) -> EnvSpec | None:
        """The spec for ``env_id`` by the lookup rule (module docstring), or ``None``."""
        if not isinstance(env_id, str):
            raise InputTypeError(f"env_id: expected a string id, got {type(env_id).__name__}")
        table = self._table()
        if env_id in table:
            return table[env_id]
        hits = [s for s in table.values() if s.matches(env_id)]
        return max(hits, key=EnvSpec._specificity) if hits else None

    def spec(self, env_id: str) -> EnvSpec:
        """The spec for ``env_id``; raises an :class:`InputError` listing the registered ids otherwise."""
        found = self.find(env_id)
        if found is None:
            raise InputError(
                f"env_id: no world-state recorder for {env_id!r}; registered: {', '.join(self.ids())}. Register "
                f"one with rl.envs.register(rl.envs.EnvSpec({env_id!r}, make=...)), or give rl.collect a "
                f"gymnasium env instance (activations only; world=lambda env: {{...}} for your own variables)")
        return found

    def examples(self) -> tuple[str, ...]:
        """Every spec's example ids, in registration order."""
        return tuple(e for s in self._table().values() for e in s.examples)

    def variables(self, env_id: str, **kwargs: Any) -> tuple[Variable, ...]:
        """The world variables recorded by ``env_id``: the spec's own, or read from a built env."""
        spec = self.spec(env_id)
        if spec.variables is not None:
            return spec.variables
        from .base import world_wrapper

        env = spec.make(env_id, **kwargs)
        try:
            wrapper = world_wrapper(env)
            return tuple(wrapper.variables) if wrapper is not None else ()
        finally:
            env.close()

    def __contains__(self, env_id: object) -> bool:
        return isinstance(env_id, str) and self.find(env_id) is not None

    def __iter__(self) -> Iterable[EnvSpec]:
        return iter(list(self._table().values()))
