"""The shape every attribution method shares (captum's): ``Method(model, site=None).attribute(inputs, target=)``.

:class:`AttributionMethod` does what every method needs, once: the model enters through
:func:`~interp_core.boundary.as_hooked`, the inputs through :func:`~interp_core.boundary.as_inputs`, the target
or metric through :func:`~interp_core.metrics.as_metric`; inputs are processed ``batch_size`` examples at a time
inside ``hm.analysis()`` (eval mode, flags restored) with gradients enabled (so a frozen model or a caller's
``torch.no_grad()`` block works); the caller's global random generators are never reseeded (stochastic
methods draw from a private fork of them); attributes that captum leaves on modules are removed. A subclass
implements :meth:`AttributionMethod._chunk` for one batch.

Methods are registered by name (:func:`register_method`); :func:`method_class` finds one by name or alias,
and an unknown name lists the closest ones.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..boundary import as_hooked, as_inputs, describe_inputs
from ..errors import InputError, InputTypeError, InterpError
from ..hooked import HookedModel
from ..metrics import Metric, as_metric, logits_of
from ..progress import progress_bar
from ..sites import Site, infer_axes
from .result import AttributionResult

__all__ = ["AttributionMethod", "register_method", "method_class", "registered_methods", "Chunk"]

_REGISTRY: dict[str, type["AttributionMethod"]] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.lower().replace("-", "_").replace(" ", "_")


def register_method(cls: type["AttributionMethod"]) -> type["AttributionMethod"]:
    """Register an :class:`AttributionMethod` subclass under ``cls.name`` and its ``cls.aliases`` (a class
    decorator; also for a user's own method)."""
    if not (isinstance(cls, type) and issubclass(cls, AttributionMethod)) or not getattr(cls, "name", ""):
        raise InputTypeError(f"register_method: expected an AttributionMethod subclass with a name, got {cls!r}")
    _REGISTRY[cls.name] = cls
    for alias in (cls.name, *cls.aliases):
        _ALIASES[_key(alias)] = cls.name
        _ALIASES[_key(alias).replace("_", "")] = cls.name
    return cls


def registered_methods() -> list[str]:
    """The canonical names of the registered methods."""
    return list(_REGISTRY)


def method_class(method: str | type["AttributionMethod"]) -> type["AttributionMethod"]:
    """The registered class for a method name or alias (``"ig"``, ``"gradcam"``, captum's class names)."""
    if isinstance(method, type) and issubclass(method, AttributionMethod):
        return method
    if not isinstance(method, str):
        raise InputTypeError(f"method: expected a method name such as 'integrated_gradients', got "
                             f"{type(method).__name__}")
    k = _key(method)
    name = _ALIASES.get(k, _ALIASES.get(k.replace("_", "")))
    if name is None:
        close = difflib.get_close_matches(k, list(_REGISTRY) + list(_ALIASES), n=3, cutoff=0.5)
        close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
        raise InputError(f"method: unknown attribution method {method!r}; closest: "
                         f"{', '.join(repr(c) for c in close) or 'none'} (registered: {registered_methods()})")
    return _REGISTRY[name]


@dataclass
class Chunk:
    """One batch of work handed to :meth:`AttributionMethod._chunk`.

    ``x``: ``[b, ...]`` inputs; ``target``: captum's target for these rows (class indices) or ``None`` when a
    metric is attributed; ``metric``: the :class:`~interp_core.metrics.Metric` for these rows (the target's
    logit when a target was given); ``forward``: a module giving captum one output row per example (the
    logits for a target, ``metric(output)`` for a metric); ``baselines``: for these rows.
    """

    x: torch.Tensor
    target: Any
    metric: Metric
    forward: nn.Module
    baselines: Any
    n_steps: int
    internal_batch_size: int
    seed: int
    return_convergence_delta: bool
    positions: Any
    kwargs: dict[str, Any]


class _LogitsModule(nn.Module):
    """``logits_of(model(x))``: captum's ``target=`` then picks a class (also for tuple outputs of policies)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> torch.Tensor:
        return logits_of(self.model(*args))


class _MetricModule(nn.Module):
    """``metric(model(x))`` as a module (DeepLift needs a module; captum then sees one number per row).

    Path methods stack ``k`` copies of a batch of ``block`` examples (one per step, block after block, as
    captum's integrated gradients does); the metric is applied block by block there, so a metric over
    per-example classes (``logit_diff(labels, other)``) sees the batch it was made for.
    """

    def __init__(self, model: nn.Module, metric: Metric, block: int | None = None):
        super().__init__()
        self.model = model
        self.metric = metric
        self.block = block

    def forward(self, *args: Any) -> torch.Tensor:
        raw = self.model(*args)
        rows, b = args[0].shape[0], self.block
        if b is not None and rows != b and rows % b == 0:
            out = torch.cat([self.metric(rows_of(raw, k, k + b, rows)) for k in range(0, rows, b)])
        else:
            out = self.metric(raw)
        if out.shape[0] != args[0].shape[0]:
            raise InputError(f"metric {self.metric.name!r} returned {tuple(out.shape)} for a batch of "
                             f"{args[0].shape[0]}; it must return one number per example, a 1-D Tensor[batch]")
        return out


CAPTUM_ATTRIBUTES = ("input", "output", "input_ref", "activations", "rule")


@contextlib.contextmanager
def no_new_attributes(model: nn.Module) -> Iterator[None]:
    """Remove the attributes captum leaves on modules (DeepLift stores ``module.input`` / ``module.output`` /
    ``module.input_ref`` on every module it hooks; LRP ``activations`` / ``rule``) when they were not there
    before the block. Attributes a model sets on itself are its own business and are kept."""
    before = {m: set(vars(m)) for m in model.modules()}
    try:
        yield
    finally:
        for m, keys in before.items():
            for k in CAPTUM_ATTRIBUTES:
                if k in vars(m) and k not in keys:
                    delattr(m, k)


@contextlib.contextmanager
def private_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch's and numpy's global generators with ``seed`` for the block and give the caller's states
    back afterwards (captum draws from the global generators and takes no generator argument)."""
    devices = [device] if device is not None and device.type == "cuda" else []
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        np.random.set_state(state)


def _slice_rows(value: Any, i: int, j: int, n: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n and n > 1:
        return value[i:j]
    if isinstance(value, list) and len(value) == n and n > 1:
        return value[i:j]
    return value


def named_positions(hm: HookedModel, site: Site) -> dict[str, int]:
    """The site's named positions (``{"cls": 0}``); for a module-path site without names, those of a site
    with the same activation (same module, kind, call and axes), e.g. ``blocks.0`` -> ``blocks.0.resid_post``."""
    if site.pos_names:
        return dict(site.pos_names)
    if site.kind == "virtual" or site.read is not None:
        return {}
    for s in hm.sites.values():
        if (s.pos_names and s.module_path == site.module_path and s.kind == site.kind and s.read is None
                and s.call_index == site.call_index and s.axes == site.axes and s.shape == site.shape):
            return dict(s.pos_names)
    return {}


def input_axes(hm: HookedModel, x: torch.Tensor, given: Any = None) -> tuple[str, ...]:
    """Axis roles of the model's input ``x``.

    In order: ``given``; the adapter's ``input_axes(model, x)`` if it has one; the model's ``obs`` site (a
    policy's preprocessed observation) when its per-example shape equals the input's, or is a permutation
    of it in which every size maps to one role (MiniGrid's channels-last ``[N, 7, 7, 3]`` against the
    network's ``[N, 3, 7, 7]`` gives ``(batch, pos, pos, feature)``); otherwise inferred from the shape
    (:func:`~interp_core.sites.infer_axes`, images channels-first). An ambiguous case is refused.
    """
    if given is not None:
        axes = tuple(given)
        if len(axes) != x.dim():
            raise InputError(f"input_axes: {axes} has {len(axes)} roles for inputs of shape {tuple(x.shape)}; "
                             f"give one role per dimension")
        Site(name="inputs", module_path="", axes=axes)  # validates the roles
        return axes
    from_adapter = getattr(hm.adapter, "input_axes", None)
    if callable(from_adapter):
        axes = from_adapter(hm.model, x)
        if axes is not None:
            return tuple(axes)
    if "obs" in hm.sites:
        obs = hm.sites["obs"]
        if obs.axes is not None and obs.shape is not None and len(obs.axes) == x.dim():
            shape = tuple(x.shape[1:])
            if shape == tuple(obs.shape):
                return tuple(obs.axes)
            if sorted(shape) == sorted(obs.shape):
                roles = []
                for size in shape:
                    found = {obs.axes[k + 1] for k, s in enumerate(obs.shape) if s == size}
                    if len(found) != 1:
                        raise InputError(
                            f"input_axes: the inputs {tuple(x.shape)} are a permutation of the 'obs' site "
                            f"[batch, {', '.join(map(str, obs.shape))}] with axes {obs.axes}, but size {size} "
                            f"has roles {sorted(found)}; pass input_axes= (e.g. ('batch', 'pos', 'pos', "
                            f"'feature') for channels-last images)")
                    roles.append(found.pop())
                return ("batch", *roles)
        if x.dim() > 2:
            raise InputError(f"input_axes: the inputs {tuple(x.shape)} do not match the model's 'obs' site "
                             f"{obs.shape} (axes {obs.axes}), so their axis roles are unknown; pass input_axes=")
    axes = infer_axes(x.shape)
    if axes is None:
        raise InputError(f"input_axes: cannot tell the axis roles of inputs {tuple(x.shape)}; pass input_axes=")
    return axes


class AttributionMethod:
    """Base class: ``Method(model, site=None, backend="auto").attribute(inputs, target=..., ...)``.

    Class attributes: ``name`` (registry key), ``aliases``, ``layer`` (attributes to a site's activation),
    ``path`` (integrates along a path: ``n_steps`` / ``internal_batch_size`` apply), ``backends``,
    ``uses_baselines`` and ``uses_positions`` (a setting a method does not use is refused, not ignored).

    Args:
        model: a :class:`~interp_core.HookedModel` or an ``nn.Module`` (adapted by the registry).
        site: the site (layer methods only).
        backend: ``"auto"``, ``"captum"`` or ``"hooks"`` (the core's hooks) where the method has both.
    """

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    layer: ClassVar[bool] = False
    path: ClassVar[bool] = False
    backends: ClassVar[tuple[str, ...]] = ("captum",)
    uses_baselines: ClassVar[bool] = True
    uses_positions: ClassVar[bool] = False

    def __init__(self, model: Any, site: str | None = None, backend: str = "auto"):
        self.hm = as_hooked(model)
        if backend != "auto" and backend not in self.backends:
            raise InputError(f"backend: {self.name} supports {['auto', *self.backends]}, got {backend!r}")
        self.backend = backend
        if self.layer and site is None:
            raise InputError(f"site: {self.name} attributes to a site's activation; pass site= (e.g. one of "
                             f"{self.hm.sites.names[:5]})")
        if not self.layer and site is not None:
            raise InputError(f"site: {self.name} attributes to the inputs; drop site= or use a layer method "
                             f"{[n for n, c in _REGISTRY.items() if c.layer]}")
        if site is not None and not isinstance(site, str):
            raise InputTypeError(f"site: expected a site name, got {type(site).__name__}")
        self.site = site

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hm!r}" + (f", site={self.site!r})" if self.site else ")")

    # ------------------------------------------------------------------------------------ the one verb
    def attribute(self, inputs: Any, target: Any = None, *, metric: Any = None, baselines: Any = None,
                  n_steps: int = 50, batch_size: int = 32, internal_batch_size: int | None = None, seed: int = 0,
                  return_convergence_delta: bool = False, input_axes: Any = None, positions: Any = None,
                  progress: bool | None = None, train: bool = False, **kwargs: Any) -> AttributionResult:
        """Attribute ``target`` (an output index: int or one per example, as in captum) or ``metric``
        (``output -> Tensor[batch]``) to the inputs or to the site's activation.

        Args:
            inputs: ``[batch, ...]`` inputs in any form :func:`~interp_core.boundary.as_inputs` accepts;
                integer or boolean inputs are converted to the model's floating dtype (attributed as reals).
            baselines: as in captum (default zeros); a distribution to draw from for ``gradient_shap``.
            n_steps: path steps (path methods).
            batch_size: examples per captum call (bounds memory).
            internal_batch_size: rows (examples x steps) per forward for path methods; default
                ``batch_size * min(n_steps, 8)``.
            seed: seed of stochastic methods' draws (per chunk); the caller's generators are untouched.
            return_convergence_delta: also return captum's completeness gap (methods that support it).
            input_axes: axis roles of the inputs (default: see :func:`input_axes`).
            positions: Grad-CAM's position selection (see :class:`~interp_core.attribution.LayerGradCam`).
            progress: a tqdm bar over batches (``None``: only on a terminal).
            train: run in train mode (dropout on, batch statistics; buffers restored) instead of eval mode.
            **kwargs: passed to the captum method (``abs=False`` for saliency, ``n_samples`` / ``stdevs`` for
                gradient_shap, ``relu_attributions`` for Grad-CAM, ``method`` for the quadrature rule).
        """
        hm = self.hm
        x, _ = as_inputs(inputs, model=hm, argument="inputs")
        if not isinstance(x, torch.Tensor):
            raise InputTypeError(f"inputs: attribution needs one input tensor [batch, ...], got "
                                 f"{type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise InputError(f"inputs: empty ({tuple(x.shape)}); give at least one example")
        if not x.is_floating_point():
            if x.is_complex():
                raise InputTypeError(f"inputs: gradients need real inputs, got {x.dtype}")
            # integer / boolean observations (MiniGrid's uint8 grids) are attributed as real numbers
            floating = next((p.dtype for p in hm.model.parameters() if p.is_floating_point()), torch.float32)
            x = x.to(floating)
        n = x.shape[0]
        if isinstance(target, (list, tuple, np.ndarray)):
            target = torch.as_tensor(np.asarray(target))
        if isinstance(target, torch.Tensor) and target.dim() == 1 and target.shape[0] != n:
            raise InputError(f"target: {target.shape[0]} targets for {n} inputs; give one per input or an int")
        full_metric = as_metric(metric, target=target, argument="metric")  # the one rule; also validates
        for given, used, what in ((baselines, self.uses_baselines, "baselines"),
                                  (positions, self.uses_positions, "positions"),
                                  (input_axes, not self.layer, "input_axes")):
            if given is not None and not used:
                raise InputError(f"{what}: {self.name} does not use it; drop {what}=")
        if not isinstance(n_steps, int) or n_steps < 1:
            raise InputError(f"n_steps: must be a positive integer, got {n_steps!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size: must be a positive integer, got {batch_size!r}")
        try:
            hm._ensure_traced(x[:1])
        except InterpError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise InputError(f"inputs: the model fails on {describe_inputs(x)}: {e}; give inputs shaped as the "
                             f"model expects") from e
        self._prepare(x, input_axes)
        net = hm.model
        parts, deltas, axes = [], [], None
        starts = range(0, n, batch_size)
        with hm.analysis(train=train), torch.enable_grad(), no_new_attributes(net):
            for i in progress_bar(starts, desc=self.name, progress=progress,
                                  leave=False):
                j = min(n, i + batch_size)
                t = _slice_rows(target, i, j, n)
                chunk_metric = full_metric if target is None else as_metric(target=t)
                forward = (_LogitsModule(net) if target is not None else
                           _MetricModule(net, full_metric, block=j - i if self.path else None))
                xc = x[i:j].detach()
                if not self.layer:  # captum differentiates with respect to it (and warns unless it requires grad)
                    xc.requires_grad_(True)
                chunk = Chunk(x=xc, target=t, metric=chunk_metric, forward=forward,
                              baselines=self._slice_baselines(baselines, i, j, n), n_steps=n_steps,
                              internal_batch_size=internal_batch_size or (j - i) * min(n_steps, 8), seed=seed,
                              return_convergence_delta=return_convergence_delta, positions=positions,
                              kwargs=kwargs)
                try:
                    attr, delta, axes = self._chunk(chunk)
                except InterpError as e:
                    if metric is not None and n > batch_size:
                        raise InputError(f"metric: {full_metric.name!r} failed on examples {i}:{j} of {n} ({e}); "
                                         f"a metric made for the whole batch (per-example classes) needs "
                                         f"batch_size >= {n}, or give target= per example") from e
                    raise
                except TypeError as e:
                    if "unexpected keyword" in str(e):
                        raise InputError(f"{self.name}: {e}; the extra keyword arguments {sorted(kwargs)} are "
                                         f"passed to the captum method, which does not take one of them") from None
                    raise InputError(f"{self.name} failed on inputs {describe_inputs(chunk.x)}: {e}; check the "
                                     f"inputs, baselines and target against the model") from e
                except (RuntimeError, ValueError, IndexError, AssertionError) as e:
                    raise InputError(f"{self.name} failed on inputs {describe_inputs(chunk.x)}: {e}; check the "
                                     f"inputs, baselines and target against the model") from e
                parts.append(attr.detach())
                if delta is not None:
                    deltas.append(delta.detach().reshape(-1))
        attributions = torch.cat(parts)
        config = {"method": self.name, "site": self.site, "n_steps": n_steps if self.path else None,
                  "batch_size": batch_size, "internal_batch_size": internal_batch_size,
                  "backend": self._backend_used(), "train": train,
                  "target": target if isinstance(target, (int, type(None))) else "per-example",
                  "metric": full_metric.name if metric is not None else None,
                  "seed": seed, "kwargs": {k: repr(v) for k, v in kwargs.items()}, **self._extra_config()}
        return AttributionResult(attributions=attributions, axes=tuple(axes), method=self.name, site=self.site,
                                 delta=torch.cat(deltas) if deltas else None, config=config)

    # ------------------------------------------------------------------------------------ for subclasses
    def _prepare(self, x: torch.Tensor, given_axes: Any) -> None:
        """Checks once the model is traced (the site exists and has axes; input axes)."""
        if self.layer:
            site = self.hm.sites[self.site]
            if site.axes is None:
                raise InputError(f"site '{self.site}' has unknown axes; give the adapter axes for it")
            self.site_obj = site
        else:
            self.input_axes_ = input_axes(self.hm, x, given_axes)

    def _slice_baselines(self, baselines: Any, i: int, j: int, n: int) -> Any:
        return _slice_rows(baselines, i, j, n)

    def _backend_used(self) -> str:
        return "captum"

    def _extra_config(self) -> dict[str, Any]:
        return {}

    def _chunk(self, c: Chunk) -> tuple[torch.Tensor, torch.Tensor | None, tuple[str, ...]]:
        """Attributions ``[b, ...]``, the convergence delta ``[b]`` or ``None``, and the axis roles."""
        raise NotImplementedError


def rows_of(output: Any, lo: int, hi: int, total: int) -> Any:
    """Rows ``lo:hi`` of a model output (a tensor, or a tuple / named tuple / dict of them): tensors whose
    first dimension has ``total`` rows are sliced, everything else (a recurrent state) is kept."""
    if isinstance(output, torch.Tensor):
        return output[lo:hi] if output.dim() > 0 and output.shape[0] == total else output
    if isinstance(output, dict):
        return {k: rows_of(v, lo, hi, total) for k, v in output.items()}
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return type(output)(*(rows_of(v, lo, hi, total) for v in output))
    if isinstance(output, (tuple, list)):
        return type(output)(rows_of(v, lo, hi, total) for v in output)
    return output


def site_error(site: str, metric: Metric, why: str) -> InputError:
    return InputError(f"site '{site}': {metric.name} does not depend on this site's activation ({why}); pick a "
                      f"site on the path from the input to the output")


def prod(shape: Any) -> int:
    return math.prod(int(s) for s in shape)

