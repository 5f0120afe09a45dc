"""One way in: how models, data and targets enter every method of the suite.

Every public method starts with the functions here, so a model, its data and the question asked are
understood the same way everywhere (patching, probes, attribution, steering, similarity, universality,
features, circuits, causal abstraction, and the domain methods in ``vision`` and ``rl``).

**Model -> HookedModel** (:func:`as_hooked`). A :class:`~interp_core.HookedModel` passes through. Anything
else is offered to the *adapter registry*: domain packages declare a ``claim(obj)`` function in the
``interp_suite.adapters`` entry-point group of their ``pyproject.toml`` (``vision`` claims timm ViTs and conv
nets, ``rl`` claims policy modules and stable-baselines3 models); a claim returns an adapter, a ready
``HookedModel``, or ``None``. The claim with the highest ``priority`` wins; with none, the generic adapter
(every submodule by module path) is used. ``interp_core`` reads the entry points by name and never imports
the domain packages itself, so ``HookedModel(vit)`` and ``vision.wrap(vit)`` give the same sites whenever
``vision`` is installed. :func:`register_adapter` adds a claim at run time (a user's own adapter).

**Data -> batches** (:func:`iter_batches`, :func:`as_inputs`). Accepted, with one rule each:

- a tensor or numpy array ``[N, ...]``: cut along the first axis into batches of ``batch_size``;
- a pair ``(x, y)`` of such arrays with ``y`` 1-d and ``len(x) == len(y)``: inputs and their labels;
- a ``Dataset`` (items ``x``, ``(x, y)`` or dicts): batched with a ``DataLoader`` of ``batch_size``;
- a ``DataLoader`` or any iterable of batches: each element is one batch, a tensor, an ``(x, y)`` pair or
  a dict (inputs under ``x`` / ``input(s)`` / ``image(s)`` / ``pixel_values`` / ``obs``, labels under
  ``y`` / ``label(s)`` / ``target(s)``; a dict without such keys is passed as keyword arguments).

Labels come from the data when ``labels`` is not given. Floating inputs are converted to the model's
floating dtype and moved to its device; NaN or infinite inputs, empty data, a label count that does not
match and unbatched tensors are refused with an error that names the argument. Without ``batch_size`` the
size is chosen from the activation size of the sites asked for (:func:`auto_batch_size`).

**Target or metric -> Metric** (:func:`as_metric`): a :class:`~interp_core.metrics.Metric` passes through,
a callable is wrapped (its output checked to be one number per example), a class index (int or ``[batch]``
tensor) becomes that class's logit.

**Mode**: analyses run the model in eval mode (``hm.analysis()``) unless asked otherwise, restore every
module's ``training`` flag, and never change buffers.
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError, InputTypeError
from .metrics import Metric, as_metric
from .sites import Adapter

__all__ = ["ENTRY_POINT_GROUP", "Batch", "as_hooked", "find_adapter", "register_adapter", "iter_batches",
           "as_inputs", "auto_batch_size", "as_metric", "Metric", "all_finite", "check_finite", "describe_inputs"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "interp_suite.adapters"
INPUT_KEYS = ("x", "inputs", "input", "images", "image", "pixel_values", "obs")
LABEL_KEYS = ("y", "labels", "label", "targets", "target")
DEFAULT_BATCH = 256
BATCH_BUDGET_BYTES = 64 * 2**20

Claim = Callable[[Any], Any]
_runtime_claims: dict[str, Claim] = {}


# ---------------------------------------------------------------------------------------------- models
def register_adapter(name: str, claim: Claim) -> None:
    """Add ``claim(obj) -> Adapter | HookedModel | None`` to the registry under ``name`` (replacing one of
    the same name). Packages declare theirs as entry points instead; this is for a user's own adapter."""
    if not callable(claim):
        raise InputTypeError(f"claim: expected a callable claim(obj) -> adapter or None, got {type(claim).__name__}")
    _runtime_claims[str(name)] = claim


@functools.lru_cache(maxsize=1)
def _entry_point_claims() -> tuple[tuple[str, Claim], ...]:
    found = []
    # every distribution's entry points, not only the first of each name: a stale ``*.egg-info`` left in
    # the working directory by an older editable install would otherwise hide the installed ones
    eps = {(ep.name, ep.value): ep for dist in metadata.distributions() for ep in dist.entry_points
           if ep.group == ENTRY_POINT_GROUP}
    for ep in sorted(eps.values(), key=lambda e: (e.name, e.value)):
        try:
            found.append((ep.name, ep.load()))
        except Exception as e:  # a broken optional package must not break the core
            log.warning("adapter entry point %r (%s) failed to load: %s", ep.name, ep.value, e)
    return tuple(found)


def registered_adapters() -> list[str]:
    """Names of the claims the registry asks, entry points first."""
    return [n for n, _ in _entry_point_claims()] + list(_runtime_claims)


def _best_claim(obj: Any) -> Any:
    best, best_priority = None, -math.inf
    for name, claim in [*_entry_point_claims(), *_runtime_claims.items()]:
        try:
            got = claim(obj)
        except Exception as e:
            log.warning("adapter %r failed to claim a %s: %s", name, type(obj).__name__, e)
            continue
        if got is None:
            continue
        priority = getattr(got, "priority", 0)
        if priority > best_priority:
            best, best_priority = got, priority
    return best


def find_adapter(module: nn.Module) -> Adapter | None:
    """The best registered adapter for ``module`` (``None``: use the generic adapter)."""
    from .hooked import HookedModel

    got = _best_claim(module)
    if isinstance(got, HookedModel):
        return got.adapter
    return got


def as_hooked(model: Any, argument: str = "model") -> Any:
    """``model`` as a :class:`~interp_core.HookedModel`, by the registry's rule (module docstring)."""
    from .hooked import HookedModel

    if isinstance(model, HookedModel):
        return model
    got = _best_claim(model)
    if isinstance(got, HookedModel):
        return got
    if isinstance(model, nn.Module):
        return HookedModel(model, adapter=got)
    raise InputTypeError(
        f"{argument}: expected a HookedModel or a torch nn.Module, got {type(model).__name__}; wrap your model "
        f"(HookedModel(module), vision.wrap(module), rl.agents.wrap(policy))")


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Batch:
    """One batch of model inputs (a tensor, a tuple of positional args or a dict of kwargs) and its labels."""

    inputs: Any
    labels: torch.Tensor | None
    size: int


def describe_inputs(inputs: Any) -> str:
    """A short description of an input for error messages: ``tensor (40, 16) float32``."""
    if isinstance(inputs, torch.Tensor):
        return f"tensor {tuple(inputs.shape)} {str(inputs.dtype).replace('torch.', '')}"
    if isinstance(inputs, np.ndarray):
        return f"array {inputs.shape} {inputs.dtype}"
    if isinstance(inputs, Mapping):
        return "dict(" + ", ".join(f"{k}={describe_inputs(v)}" for k, v in inputs.items()) + ")"
    if isinstance(inputs, (tuple, list)):
        return "(" + ", ".join(describe_inputs(v) for v in inputs) + ")"
    return type(inputs).__name__


def _is_array(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, np.ndarray))


def _to_tensor(x: Any, argument: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise InputTypeError(f"{argument}: a numpy array of Python objects cannot be a model input; stack the "
                                 f"examples into one numeric array first (np.stack)")
        return torch.from_numpy(np.ascontiguousarray(x))
    raise InputTypeError(f"{argument}: expected a tensor or numpy array, got {type(x).__name__}")


_SLOTS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _model_tensor_slots(module: nn.Module) -> tuple:
    """``((owner, name) of the first parameter, (owner, name) of the first floating one or None, whether the
    model has a layer that needs batched inputs)``, found once per module (walking ``parameters()`` costs tens
    of microseconds, more than a small policy's forward). The slots are read live (:func:`_param_at`), so they
    follow ``.to()``, ``.double()`` and replaced parameters."""
    got = _SLOTS.get(module)
    if got is None:
        first = floating = None
        for path, p in module.named_parameters():
            owner, _, name = path.rpartition(".")
            slot = (module.get_submodule(owner), name)
            first = first or slot
            if p.is_floating_point():
                floating = slot
                break
        batched = any(isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in module.modules())
        got = _SLOTS[module] = (first, floating, batched)
    return got


def _param_at(module: nn.Module, which: int) -> torch.Tensor | None:
    slot = _model_tensor_slots(module)[which]
    if slot is None:
        return None
    p = slot[0]._parameters.get(slot[1])
    if p is None:  # the parameter was removed since: look again
        _SLOTS.pop(module, None)
        return _param_at(module, which)
    return p


def _float_dtype(model: Any) -> torch.dtype | None:
    module = getattr(model, "model", model)
    if isinstance(module, nn.Module):
        p = _param_at(module, 1)
        return p.dtype if p is not None and p.is_floating_point() else None
    return None


def _device(model: Any) -> torch.device | None:
    module = getattr(model, "model", model)
    if isinstance(module, nn.Module):
        p = _param_at(module, 0)
        return p.device if p is not None else None
    return None


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of a floating tensor is finite. One sum first (NaN and inf propagate into it; a
    twentieth of the cost of an elementwise test on an image batch), the elementwise test only where the sum
    is not finite (it can also overflow)."""
    s = t.sum(dtype=torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t.sum()
    return bool(torch.isfinite(s)) or bool(torch.isfinite(t).all())


def check_finite(x: Any, argument: str) -> None:
    """Refuse NaN or infinite values in a floating tensor (or in any tensor of a tuple / dict)."""
    if isinstance(x, Mapping):
        for k, v in x.items():
            check_finite(v, f"{argument}[{k!r}]")
        return
    if isinstance(x, (tuple, list)):
        for i, v in enumerate(x):
            check_finite(v, f"{argument}[{i}]")
        return
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not all_finite(x):
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            first = int(bad.reshape(len(x), -1).any(1).nonzero()[0]) if x.dim() else 0
            raise InputError(f"{argument}: holds {int(bad.sum())} NaN or infinite values (first in row {first}); "
                             f"analyses need finite inputs: drop or clean those rows first")


def _prepare(x: Any, model: Any, argument: str, finite: bool) -> Any:
    """Convert one model input: arrays to tensors, floating dtype to the model's, onto the model's device."""
    if isinstance(x, Mapping):
        return {k: _prepare(v, model, f"{argument}[{k!r}]", finite) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_prepare(v, model, f"{argument}[{i}]", finite) for i, v in enumerate(x))
    if not _is_array(x):
        return x
    t = _to_tensor(x, argument)
    if t.is_floating_point():
        dtype = _float_dtype(model)
        if dtype is not None and t.dtype != dtype:
            t = t.to(dtype)
    device = _device(model)
    if device is not None and t.device != device:
        t = t.to(device)
    if finite:
        check_finite(t, argument)
    return t


def _labels_tensor(y: Any, argument: str) -> torch.Tensor:
    if isinstance(y, (list, tuple)) and not any(_is_array(v) for v in y):
        y = np.asarray(y)
    t = _to_tensor(y, argument)
    if t.dim() == 0:
        raise InputError(f"{argument}: a single value; give one label per input, shape [N]")
    return t.detach().cpu()


def _split_pair(item: Any) -> tuple[Any, Any]:
    """``(inputs, labels)`` of one batch / dataset item: a pair, a dict with known keys, or inputs alone."""
    if isinstance(item, Mapping):
        xk = next((k for k in INPUT_KEYS if k in item), None)
        yk = next((k for k in LABEL_KEYS if k in item), None)
        if xk is None:
            return dict(item), None
        return item[xk], (item[yk] if yk is not None else None)
    if isinstance(item, (tuple, list)) and len(item) == 1 and _is_array(item[0]):
        return item[0], None  # a TensorDataset of inputs alone yields 1-tuples
    if isinstance(item, (tuple, list)) and len(item) == 2 and _is_array(item[1]) and _is_array(item[0]):
        x, y = item  # a pair when y is one label per input: 1-d and as long as x
        if x.ndim and y.ndim == 1 and y.shape[0] == x.shape[0]:
            return x, y
    return item, None


def _length(x: Any) -> int:
    if isinstance(x, Mapping):
        x = next(iter(x.values()), None)
    if isinstance(x, tuple):
        x = x[0] if x else None
    if _is_array(x):
        if x.ndim == 0:
            return 0
        return int(x.shape[0])
    raise InputTypeError(f"cannot tell the batch size of a {type(x).__name__}")


def _slice(x: Any, lo: int, hi: int) -> Any:
    if isinstance(x, Mapping):
        return {k: _slice(v, lo, hi) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_slice(v, lo, hi) for v in x)
    return x[lo:hi] if _is_array(x) else x


def iter_batches(data: Any, labels: Any = None, *, model: Any = None, batch_size: int | None = None,
                 sites: Sequence[str] | None = None, argument: str = "data", finite: bool = True,
                 min_dim: int | None = None) -> Iterator[Batch]:
    """Batches of ``data`` (module docstring rules) as :class:`Batch` objects, ready for ``model``.

    Args:
        data: the inputs in any accepted form.
        labels: ``[N]`` labels, one per input (default: those carried by ``data``, if any).
        model: the model the batches are for (dtype and device conversion, batch size from its sites).
        batch_size: examples per batch where the data is not batched already (default: :func:`auto_batch_size`).
        sites: the sites the caller will record (for the automatic batch size).
        finite: refuse NaN or infinite floating inputs.
        min_dim: refuse tensors with fewer dimensions (an unbatched example); default: 2 when the model's
            first parameter has more than one dimension (a conv or linear layer), else no check.
    """
    if data is None:
        raise InputError(f"{argument}: no data given; pass inputs as a tensor, numpy array, (x, y) pair, Dataset, "
                         f"DataLoader or iterable of batches")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size: must be a positive integer, got {batch_size!r}")
    y_all = _labels_tensor(labels, "labels") if labels is not None else None
    size = batch_size or (auto_batch_size(model, sites) if model is not None else DEFAULT_BATCH)
    if min_dim is None:
        min_dim = 2 if _expects_batched(model) else 1

    def check_dims(x: Any, where: str) -> None:
        if isinstance(x, torch.Tensor) and x.dim() < min_dim:
            raise InputError(f"{where}: a tensor of shape {tuple(x.shape)} has no batch axis; the model takes "
                             f"batches [N, ...] (for one example use x[None] / x.unsqueeze(0))")

    def emit(x: Any, y: Any, where: str) -> Batch:
        x = _prepare(x, model, where, finite)
        check_dims(x, where)
        n = _length(x)
        yt = _labels_tensor(y, f"{where} labels") if y is not None else None
        if yt is not None and len(yt) != n:
            raise InputError(f"{where}: {n} inputs but {len(yt)} labels; give one label per input")
        return Batch(x, yt, n)

    def whole(x: Any, y: Any, sliceable: bool) -> Iterator[Batch]:
        if y is not None and y_all is not None:
            raise InputError(f"{argument}: labels given twice (inside the data as (x, y) and as labels=); "
                             f"give them once")
        y = y if y is not None else y_all
        n = _length(x)
        if n == 0:
            raise InputError(f"{argument}: empty ({describe_inputs(x)}); give at least one example")
        if y is not None and len(y) != n:
            raise InputError(f"{argument}: {n} inputs but {len(y)} labels; give one label per input")
        step = size if sliceable else n
        for lo in range(0, n, step):
            yield emit(_slice(x, lo, lo + step), None if y is None else y[lo:lo + step],
                       argument if n <= step else f"{argument}[{lo}:{min(n, lo + step)}]")

    def generate() -> Iterator[Batch]:
        if _is_array(data):
            yield from whole(data, None, True)
            return
        if isinstance(data, (tuple, list, Mapping)):
            x, y = _split_pair(data)
            if y is not None or (isinstance(data, Mapping) and all(_is_array(v) for v in data.values())):
                yield from whole(x, y, True)  # (x, y), {"x": ..., "y": ...} or keyword arguments
                return
            if isinstance(data, tuple) and data and all(_is_array(v) or v is None or isinstance(v, tuple)
                                                        for v in data):
                yield from whole(data, None, False)  # positional arguments of one batch
                return
        if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
            if len(data) == 0:  # type: ignore[arg-type]
                raise InputError(f"{argument}: the Dataset is empty; give at least one example")
            data_iter: Iterable[Any] = torch.utils.data.DataLoader(data, batch_size=size, shuffle=False)
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
            data_iter = data
        else:
            raise InputTypeError(f"{argument}: cannot make batches from a {type(data).__name__}; give a tensor, "
                                 f"numpy array, (x, y) pair, Dataset, DataLoader or iterable of batches")
        seen, offset = 0, 0
        for i, item in enumerate(data_iter):
            bx, by = _split_pair(item)
            if by is not None and y_all is not None:
                raise InputError(f"{argument}: labels given twice (in the batches and as labels=); give them once")
            batch = emit(bx, by, f"{argument} batch {i}")
            if batch.labels is None and y_all is not None:
                if offset + batch.size > len(y_all):
                    raise InputError(f"labels: {len(y_all)} labels for more inputs than that; give one per input")
                batch.labels = y_all[offset:offset + batch.size]
            offset += batch.size
            seen += 1
            if batch.size:
                yield batch
        if not seen or not offset:
            raise InputError(f"{argument}: no examples (the iterable was empty); give at least one batch")
        if y_all is not None and offset != len(y_all):
            raise InputError(f"labels: {len(y_all)} labels for {offset} inputs; give one label per input")

    return generate()


def as_inputs(data: Any, labels: Any = None, *, model: Any = None, argument: str = "data",
              finite: bool = True) -> tuple[Any, torch.Tensor | None]:
    """All of ``data`` as one batch ``(inputs, labels)`` (concatenated; labels ``None`` when unknown)."""
    xs, ys = [], []
    for b in iter_batches(data, labels, model=model, batch_size=2**62, argument=argument, finite=finite):
        xs.append(b.inputs)
        ys.append(b.labels)
    x = xs[0] if len(xs) == 1 else _cat(xs, argument)
    if any(y is None for y in ys):
        return x, None
    return x, (ys[0] if len(ys) == 1 else torch.cat(ys))


def _cat(parts: list[Any], argument: str) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        try:
            return torch.cat(parts)
        except RuntimeError as e:
            raise InputError(f"{argument}: batches of different shapes cannot be joined "
                             f"({describe_inputs(parts[0])} vs others): {e}") from None
    if isinstance(first, Mapping):
        return {k: _cat([p[k] for p in parts], argument) for k in first}
    if isinstance(first, tuple):
        return tuple(_cat([p[i] for p in parts], argument) for i in range(len(first)))
    raise InputTypeError(f"{argument}: cannot join batches of {type(first).__name__}")


def _expects_batched(model: Any) -> bool:
    module = getattr(model, "model", model)
    return isinstance(module, nn.Module) and _model_tensor_slots(module)[2]


def auto_batch_size(model: Any, sites: Sequence[str] | None = None, budget_bytes: int = BATCH_BUDGET_BYTES) -> int:
    """Examples per batch so that the activations of ``sites`` (default: every traced site) fit in
    ``budget_bytes`` (64 MiB), between 1 and 4,096; 256 when the sizes are unknown (untraced model)."""
    table = getattr(model, "sites", None)
    if table is None:
        return DEFAULT_BATCH
    names = list(sites) if sites else list(table)
    sizes = []
    for n in names:
        s = table[n] if n in table else None
        if s is not None and s.shape is not None:
            sizes.append(math.prod(s.shape))
    if not sizes:
        return DEFAULT_BATCH
    per_example = 4 * (sum(sizes) if sites else max(sizes) * 4)
    return int(min(4096, max(1, budget_bytes // max(per_example, 1))))
