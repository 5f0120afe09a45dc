"""Replacing a module's ``forward`` for a while, safely in any order.

Some analyses must change what a module computes, not just its output: patching reuses a module's recorded
output instead of recomputing it, and the ViT adapter runs an instrumented copy of timm's attention to expose
per-head activations. Both used to swap ``module.forward`` and put it back, which is only correct when the
swaps are undone in strict reverse order.

Here every module keeps a list of overrides. Each override is a function ``make(module, inner) -> forward``
that receives the forward below it (``inner``) and returns the new one; the effective forward is rebuilt
from the module's own forward up through the list whenever an override is added or removed, so handles can
be removed in any order and the module ends exactly as it started (its class ``forward``, or the instance
``forward`` it had before). :meth:`interp_core.HookedModel.replacing_forward` is the scoped form.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["replace_forward", "ForwardHandle", "active_overrides"]

MakeForward = Callable[[nn.Module, Callable[..., Any]], Callable[..., Any]]
_MISSING = object()
_ids = itertools.count()


class _Overrides:
    def __init__(self, module: nn.Module):
        self.saved = module.__dict__.get("forward", _MISSING)  # an instance forward the user set, if any
        self.entries: dict[int, MakeForward] = {}

    def base(self, module: nn.Module) -> Callable[..., Any]:
        if self.saved is not _MISSING:
            return self.saved
        return type(module).forward.__get__(module)

    def rebuild(self, module: nn.Module) -> None:
        if not self.entries:
            if self.saved is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                object.__setattr__(module, "forward", self.saved)
            return
        fwd = self.base(module)
        for make in self.entries.values():  # insertion order: later overrides wrap earlier ones
            fwd = make(module, fwd)
        object.__setattr__(module, "forward", fwd)


_REGISTRY: "weakref.WeakKeyDictionary[nn.Module, _Overrides]" = weakref.WeakKeyDictionary()


class ForwardHandle:
    """Removes one override; ``remove()`` twice is a no-op."""

    def __init__(self, module: nn.Module, key: int):
        self._module = weakref.ref(module)
        self._key = key

    def remove(self) -> None:
        module = self._module()
        if module is None:
            return
        state = _REGISTRY.get(module)
        if state is None or self._key not in state.entries:
            return
        del state.entries[self._key]
        state.rebuild(module)
        if not state.entries:
            del _REGISTRY[module]


def replace_forward(module: nn.Module, make: MakeForward) -> ForwardHandle:
    """Override ``module.forward`` with ``make(module, inner)`` until the returned handle is removed."""
    state = _REGISTRY.get(module)
    if state is None:
        state = _REGISTRY[module] = _Overrides(module)
    key = next(_ids)
    state.entries[key] = make
    try:
        state.rebuild(module)
    except BaseException:
        del state.entries[key]
        state.rebuild(module)
        raise
    return ForwardHandle(module, key)


def active_overrides(module: nn.Module) -> int:
    """How many overrides are active on ``module`` (0 when its forward is its own)."""
    state = _REGISTRY.get(module)
    return len(state.entries) if state is not None else 0
