"""Sites: named places in a model whose activation can be read and replaced.

A :class:`Site` is the shared language of the suite. Every method (caching, patching, probes, similarity)
talks about sites and their **axes**, never about images or environments, so the same call runs on a CNN,
a ViT and a policy network.

Axes are roles, one per tensor dimension, including the batch dimension:

- ``batch`` — independent inputs;
- ``pos`` — tokens, spatial cells (h and w are two ``pos`` axes) or time steps;
- ``head`` — attention heads;
- ``feature`` — the coordinates of activation space.

Examples: ViT residual ``("batch", "pos", "feature")``; ViT per-head output ``("batch", "pos", "head",
"feature")``; attention pattern ``("batch", "head", "pos", "pos")``; CNN block ``("batch", "feature", "pos",
"pos")``; MLP policy layer ``("batch", "feature")``.

**The generic adapter** works on any ``nn.Module``: every submodule's output is a site named by its module
path (``layer1.0``, ``blocks.3.mlp.fc1``). Axes are inferred from the shape where unambiguous —
``(B, C, H, W)`` → feature + two pos axes, ``(B, T, D)`` → pos + feature (``(B, C, L)`` for ``Conv1d``/
``BatchNorm1d``), ``(B, D)`` → feature — and can be overridden with ``GenericAdapter(axes={...})``.

**Reused modules** (decided and tested): a module that runs more than once per forward (torchvision's
``BasicBlock`` calls the same ``relu`` twice) gets one site per call, ``layer1.0.relu#0`` and
``layer1.0.relu#1``; asking for the plain name ``layer1.0.relu`` then raises an error naming the per-call
sites. Calls are discovered by a trace (one forward, done automatically on first use).

**In-place operations** (decided and tested): captured activations are copied the moment the hook fires, so
an in-place op that runs later (``nn.ReLU(inplace=True)``, ``out += identity``) never changes cached data.

Adapters (``vision``, ``rl``) add canonical names and **virtual** sites — activations that are not a module's
plain output, such as a ViT head's output split out of fused attention. A virtual site brings its own
``attach(root, fn)``: it installs whatever makes ``fn`` see the activation once per forward and returns a
handle whose ``remove()`` restores the model exactly.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from .errors import InputError, InputTypeError, SiteError

AXIS_ROLES = ("batch", "pos", "head", "feature")
HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]


@dataclass(frozen=True)
class Site:
    """A named place in a model whose activation can be read and replaced.

    Attributes:
        name: dotted, lower-case name (``blocks.3.attn.z``, ``layer1.0.relu#1``).
        module_path: path of the hooked module in ``model.named_modules()`` ("" for the root).
        kind: ``"output"`` (forward hook), ``"input"`` (forward pre-hook on the first positional
            argument) or ``"virtual"`` (the adapter's ``attach`` decides).
        axes: one role per dimension of the full tensor, batch included; ``None`` until known.
        call_index: for a module that runs several times per forward, which call (0-based); ``None`` for a
            module that runs once.
        read: optional ``read(module_output_or_input) -> Tensor`` (e.g. the hidden state out of an LSTM's
            tuple output); default: the value itself, which must be a tensor.
        write: optional ``write(module_output_or_input, new) -> new_output``; default: ``new`` replaces it.
        attach: virtual sites only: ``attach(root_model, fn) -> handle`` with ``handle.remove()``.
        pos_names: named positions, e.g. ``{"cls": 0}`` (flat index over the pos axes).
        shape: the per-example shape (batch axis removed) seen at trace time, if traced.
        description: one line for the site table.
    """

    name: str
    module_path: str
    kind: Literal["output", "input", "virtual"] = "output"
    axes: tuple[str, ...] | None = None
    call_index: int | None = None
    read: Callable[[Any], torch.Tensor] | None = None
    write: Callable[[Any, torch.Tensor], Any] | None = None
    attach: Callable[[nn.Module, HookFn], Any] | None = None
    pos_names: dict[str, int] = field(default_factory=dict)
    shape: tuple[int, ...] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("output", "input", "virtual"):
            raise InputError(f"site {self.name!r}: kind must be 'output', 'input' or 'virtual', got {self.kind!r}")
        if self.kind == "virtual" and self.attach is None:
            raise InputError(f"virtual site {self.name!r} needs an attach(root, fn) function")
        if self.axes is not None:
            bad = [a for a in self.axes if a not in AXIS_ROLES]
            if bad:
                raise InputError(f"site {self.name!r}: unknown axis roles {bad}; roles are {AXIS_ROLES}")
            if self.axes.count("batch") != 1:
                raise InputError(f"site {self.name!r}: axes {self.axes} must contain exactly one 'batch' axis")

    def with_(self, **changes: Any) -> "Site":
        """A copy with some fields changed (sites are immutable)."""
        return replace(self, **changes)

    def dims(self, role: str) -> tuple[int, ...]:
        """Indices of the axes with a given role, e.g. ``site.dims("pos") == (2, 3)`` for a CNN block."""
        if self.axes is None:
            raise InputError(f"site {self.name!r} has unknown axes; run a forward first or set them explicitly")
        return tuple(i for i, a in enumerate(self.axes) if a == role)


def infer_axes(shape: Sequence[int], module: nn.Module | None = None) -> tuple[str, ...] | None:
    """Axis roles for an activation of ``shape`` (batch first), or ``None`` where ambiguous.

    ``(B,)`` → batch; ``(B, D)`` → feature; ``(B, T, D)`` → pos, feature (``(B, C, L)`` for Conv1d-like
    modules); ``(B, C, H, W)`` → feature, pos, pos; ``(B, C, D, H, W)`` → feature, pos, pos, pos.
    """
    n = len(shape)
    if n == 1:
        return ("batch",)
    if n == 2:
        return ("batch", "feature")
    if n == 3:
        channels_first = (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d,
                          nn.AdaptiveAvgPool1d, nn.InstanceNorm1d)
        if module is not None and isinstance(module, channels_first):
            return ("batch", "feature", "pos")
        return ("batch", "pos", "feature")
    if n == 4:
        return ("batch", "feature", "pos", "pos")
    if n == 5:
        return ("batch", "feature", "pos", "pos", "pos")
    return None


class SiteTable:
    """The sites of a model: a read-only mapping name -> :class:`Site` with helpful errors."""

    def __init__(self, sites: Iterable[Site], reused: dict[str, int] | None = None,
                 idle: Iterable[str] = ()):
        self._sites: dict[str, Site] = {}
        for s in sites:
            self._sites[s.name] = s
        # plain names of modules that run several times per forward -> number of calls
        self._reused = dict(reused or {})
        # modules that exist but did not run in the traced forward (e.g. dropout skipped by fused attention)
        self._idle = set(idle)

    def __getitem__(self, name: str) -> Site:
        if not isinstance(name, str):
            raise InputTypeError(f"site names are strings, got {type(name).__name__}")
        site = self._sites.get(name)
        if site is not None:
            return site
        if name in self._reused:
            calls = ", ".join(f"'{name}#{i}'" for i in range(self._reused[name]))
            raise SiteError(
                f"module '{name}' runs {self._reused[name]} times per forward, so its output is not one "
                f"activation; ask for one call: {calls}")
        if name in self._idle:
            raise SiteError(f"module '{name}' did not run in the traced forward (the model skips it, e.g. a "
                           f"dropout bypassed by fused attention), so it has no activation")
        close = difflib.get_close_matches(name, list(self._sites), n=3, cutoff=0.5)
        hint = ", ".join(f"'{c}'" for c in close) if close else "none"
        raise SiteError(f"unknown site '{name}'; closest: {hint} (HookedModel.sites lists all {len(self)})")

    def __contains__(self, name: object) -> bool:
        return name in self._sites

    def __iter__(self) -> Iterator[str]:
        return iter(self._sites)

    def __len__(self) -> int:
        return len(self._sites)

    def values(self) -> list[Site]:
        return list(self._sites.values())

    @property
    def names(self) -> list[str]:
        return list(self._sites)

    def matching(self, pattern: str) -> list[str]:
        """Site names matching a shell-style pattern, in model order: ``sites.matching("layer*.?")``."""
        found = [n for n in self._sites if fnmatch.fnmatchcase(n, pattern)]
        if not found:
            raise SiteError(f"no site matches {pattern!r}; examples of site names: {self.names[:5]}")
        return found

    def table(self) -> str:
        """A plain-text table: name, kind, module, axes, per-example shape."""
        rows = [("site", "kind", "module", "axes", "shape")]
        for s in self._sites.values():
            rows.append((s.name, s.kind, s.module_path or "<root>",
                         ",".join(s.axes) if s.axes else "?",
                         "x".join(map(str, s.shape)) if s.shape is not None else "?"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def __repr__(self) -> str:
        return f"SiteTable({len(self)} sites)"


@runtime_checkable
class Adapter(Protocol):
    """What a domain adapter tells the core about a model.

    ``sites(model)`` lists the sites (canonical names and virtual sites included); ``default_sites(model)``
    names what ``run_with_cache`` records when no sites are given; ``example_input(model)`` returns an input
    for a trace, or ``None``.
    """

    name: str

    def sites(self, model: nn.Module) -> list[Site]: ...

    def default_sites(self, model: nn.Module) -> list[str]: ...

    def example_input(self, model: nn.Module) -> Any | None: ...


class GenericAdapter:
    """Works on any ``nn.Module`` with no configuration: each submodule's output is a site.

    Args:
        axes: optional overrides ``{site_name: axes}`` for shapes the inference gets wrong.
        include_root: also expose the whole model's output as a site named ``output``.
    """

    name = "generic"

    def __init__(self, axes: dict[str, Sequence[str]] | None = None, include_root: bool = True):
        self.axes = {k: tuple(v) for k, v in (axes or {}).items()}
        self.include_root = include_root

    def sites(self, model: nn.Module) -> list[Site]:
        out = [Site(name=path, module_path=path, axes=self.axes.get(path),
                    description=type(mod).__name__)
               for path, mod in model.named_modules() if path]
        if self.include_root:
            out.append(Site(name="output", module_path="", axes=self.axes.get("output"),
                            description=f"{type(model).__name__} output"))
        return out

    def default_sites(self, model: nn.Module) -> list[str]:
        return [path for path, _ in model.named_modules() if path]

    def example_input(self, model: nn.Module) -> Any | None:
        return None
