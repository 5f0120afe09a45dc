"""Interchange interventions and interchange-intervention accuracy (IIA).

Causal abstraction (Geiger et al. 2021, "Causal Abstractions of Neural Networks", NeurIPS; Geiger et al.
2024, "Finding Alignments Between Interpretable Causal Variables and Distributed Neural Representations",
CLeaR) asks whether a high-level causal model (``turn = cue``, ``label = 2 a + b``) describes what a network
computes. A high-level variable ``V`` is *aligned* with a subspace of a site's activation when setting that
subspace to its value on a **source** input makes the network, run on a **base** input, output what the
high-level model predicts with ``V`` taken from the source.

**Interchange intervention.** With a site's activation as feature rows ``a`` (base) and ``s`` (source)
of size ``d`` (head and feature axes flattened, positions kept apart: :func:`interp_core.axes.feature_last`)
and an orthonormal basis ``Q`` ``[d, k]`` of the subspace,

    ``a' = a + Q Q^T (s - a)``

i.e. the component of ``a`` in ``span(Q)`` is replaced by the source's and the orthogonal complement kept.
``subspace="full"`` (or ``None``) is ``Q = I``: ``a' = s``. ``positions=`` / ``heads=`` restrict the change
to the selected entries (in the site's own terms, :mod:`interp_core.interventions`).

**IIA** (Geiger et al. 2021) is the share of (base, source) pairs on which the intervened network's
prediction equals the high-level model's counterfactual ``high_level(base_vars, source_vars)``; its
confidence interval is the exact binomial (Clopper-Pearson) interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..axes import feature_last
from ..boundary import as_hooked, iter_batches
from ..errors import InputError, InputTypeError
from ..interventions import Intervention
from ..metrics import logits_of
from ..progress import progress_bar
from ..results import Result
from ..sites import Site

__all__ = ["Interchange", "interchange", "iia", "IIAResult", "orthonormal_basis", "binomial_ci"]


def orthonormal_basis(subspace: Any, d: int, argument: str = "subspace") -> torch.Tensor | None:
    """``subspace`` as an orthonormal ``[d, k]`` basis (``None`` for the full space).

    Accepts ``None`` / ``"full"``, a ``[d]`` direction or a ``[d, k]`` matrix whose columns span the subspace
    (orthonormalised by a QR decomposition, so any basis of the same span gives the same intervention).
    """
    if subspace is None or (isinstance(subspace, str) and subspace == "full"):
        return None
    if isinstance(subspace, str):
        raise InputError(f"{argument}: unknown subspace {subspace!r}; give None or 'full' (the whole site), or a "
                         f"[d, k] basis")
    try:
        q = torch.as_tensor(np.asarray(subspace) if not isinstance(subspace, torch.Tensor) else subspace)
    except (TypeError, ValueError) as e:
        raise InputTypeError(f"{argument}: expected a [d, k] basis (tensor or array), got "
                             f"{type(subspace).__name__} ({e})") from None
    q = q.detach().to(torch.float64)
    if q.dim() == 1:
        q = q[:, None]
    if q.dim() != 2 or q.shape[0] != d:
        raise InputError(f"{argument}: basis of shape {tuple(q.shape)}, expected [{d}, k] (the site's head x "
                         f"feature size d={d} in rows, one column per basis vector)")
    if q.shape[1] == 0 or q.shape[1] > d:
        raise InputError(f"{argument}: a basis needs between 1 and d={d} columns, got {q.shape[1]}")
    if not bool(torch.isfinite(q).all()):
        raise InputError(f"{argument}: basis has NaN or infinite entries; give a finite basis")
    qr, r = torch.linalg.qr(q)
    diag = r.diagonal().abs()
    if bool((diag <= diag.max() * d * torch.finfo(torch.float64).eps).any()) or float(diag.max()) == 0.0:
        raise InputError(f"{argument}: the {q.shape[1]} columns are linearly dependent (rank below "
                         f"{q.shape[1]}); give independent columns or fewer of them")
    return qr


def _source_tensor(source: Any, site: Site) -> torch.Tensor:
    if isinstance(source, torch.Tensor):
        return source
    if isinstance(source, Mapping) or hasattr(source, "__getitem__"):
        return source[site.name]
    raise InputTypeError(f"Interchange source for site '{site.name}': expected a tensor or a cache holding the "
                         f"site, got {type(source).__name__}")


class Interchange(Intervention):
    """Set the activation's component in a subspace to the source's: ``a' = a + Q Q^T (s - a)``.

    Args:
        source: the source run's activation at the same site, shaped like the activation (or with batch size
            1, broadcast), or an :class:`~interp_core.ActivationCache` holding it unpooled.
        subspace: ``None`` / ``"full"`` (the whole feature space: ``a' = s``), a ``[d]`` direction or a
            ``[d, k]`` basis in the site's flattened head x feature space (orthonormalised here). A
            ``torch.Tensor`` that requires grad is used as given (assumed orthonormal, gradients flow to
            it): this is how :class:`~interp_core.causal.DAS` trains its rotation.
        positions, heads, features: selectors (:mod:`interp_core.interventions`).
        calls: apply only on these forward calls (0-based, counted since construction or :meth:`reset`),
            e.g. ``calls=[t]`` for time step ``t`` of a recurrent agent stepped once per forward; other calls
            pass through unchanged. ``None``: every call.
    """

    def __init__(self, source: Any, subspace: Any = None, positions: Any = None, heads: Any = None,
                 features: Any = None, calls: int | Sequence[int] | None = None):
        super().__init__(positions, heads, features)
        self.source = source
        self._basis: dict[tuple, torch.Tensor | None] = {}
        self.subspace = subspace
        if calls is not None:
            calls = [calls] if isinstance(calls, (int, np.integer)) else list(calls)
            if not calls or any(not isinstance(c, (int, np.integer)) or c < 0 for c in calls):
                raise InputError(f"calls: non-negative forward-call indices, got {calls!r}")
            calls = {int(c) for c in calls}
        self.calls = calls
        self.n_calls = 0

    @property
    def subspace(self) -> Any:
        return self._subspace

    @subspace.setter
    def subspace(self, value: Any) -> None:
        self._subspace = value
        self._basis = {}  # the orthonormalised basis is recomputed for the new subspace

    def reset(self) -> Interchange:
        """Start counting forward calls from 0 again."""
        self.n_calls = 0
        return self

    def _q(self, d: int, site: Site, like: torch.Tensor) -> torch.Tensor | None:
        sub = self.subspace
        if isinstance(sub, torch.Tensor) and sub.requires_grad:
            if sub.dim() != 2 or sub.shape[0] != d:
                raise InputError(f"subspace: basis of shape {tuple(sub.shape)} at site '{site.name}', expected "
                                 f"[{d}, k]")
            return sub.to(like.dtype)
        key = (d, like.dtype, like.device)
        if key not in self._basis:
            q = orthonormal_basis(sub, d)
            self._basis[key] = None if q is None else q.to(device=like.device, dtype=like.dtype)
        return self._basis[key]

    def __call__(self, act: torch.Tensor, site: Site) -> torch.Tensor:
        i = self.n_calls
        self.n_calls += 1
        if self.calls is not None and i not in self.calls:
            return act
        return super().__call__(act, site)

    def _compute(self, act: torch.Tensor, site: Site) -> torch.Tensor:
        src = _source_tensor(self.source, site).to(device=act.device, dtype=act.dtype)
        b = site.axes.index("batch") if site.axes and "batch" in site.axes else 0
        ok = src.dim() == act.dim() and all(
            s == a or (dim == b and s == 1) for dim, (s, a) in enumerate(zip(src.shape, act.shape)))
        if not ok:
            raise InputError(f"Interchange at site '{site.name}': source has shape {tuple(src.shape)} but the "
                             f"activation has shape {tuple(act.shape)} (axes {site.axes}); record the source at "
                             f"the same site, unpooled, with as many examples as the base (or one)")
        src = src.expand_as(act)
        if site.axes is None:
            raise InputError(f"Interchange at site '{site.name}': the site's axes are unknown; give the adapter "
                             f"axes for it")
        flat, restore = feature_last(act, site.axes)
        sflat, _ = feature_last(src, site.axes)
        q = self._q(flat.shape[-1], site, flat)
        if q is None:
            return restore(sflat.clone())
        return restore(flat + ((sflat - flat) @ q) @ q.T)

    def __repr__(self) -> str:
        k = "full" if self.subspace is None or isinstance(self.subspace, str) else \
            f"k={torch.as_tensor(self.subspace).reshape(len(self.subspace), -1).shape[1]}"
        return f"Interchange({k}" + (f", calls={sorted(self.calls)}" if self.calls else "") + ")"


# ---------------------------------------------------------------------------------------------- runs
def _cat_outputs(parts: list[Any]) -> Any:
    """Join per-batch model outputs along the batch axis (tensors, tuples / named tuples, dicts)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, Mapping):
        return {k: _cat_outputs([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple):
        joined = [_cat_outputs([p[i] for p in parts]) for i in range(len(first))]
        return type(first)(*joined) if hasattr(first, "_fields") else tuple(joined)
    if first is None:
        return None
    raise InputTypeError(f"cannot join model outputs of type {type(first).__name__} over batches; pass the data "
                         f"as one batch (batch_size=N)")


def _pairs(hm: Any, base: Any, source: Any, sites: list[str], batch_size: int | None) -> Any:
    """Yield ``(base_batch, source_batch)`` pairs, row by row (same number of examples in both)."""
    bb = iter_batches(base, model=hm, batch_size=batch_size, sites=sites, argument="base")
    sb = iter_batches(source, model=hm, batch_size=batch_size, sites=sites, argument="source")
    n_b = n_s = 0
    sentinel = object()
    while True:
        b = next(bb, sentinel)
        s = next(sb, sentinel)
        if b is sentinel or s is sentinel:
            rest_b = sum(x.size for x in bb) + (0 if b is sentinel else b.size)
            rest_s = sum(x.size for x in sb) + (0 if s is sentinel else s.size)
            if rest_b or rest_s:
                raise InputError(f"base / source: {n_b + rest_b} base examples but {n_s + rest_s} source examples; "
                                 f"interchange pairs them row by row, so give as many of each")
            return
        n_b += b.size
        n_s += s.size
        if b.size != s.size:
            raise InputError(f"base / source: a base batch of {b.size} examples meets a source batch of {s.size}; "
                             f"give both as arrays of the same length (or batches of the same sizes)")
        yield b, s


def _site_list(site: Any) -> list[str]:
    names = [site] if isinstance(site, str) else list(site) if isinstance(site, (list, tuple)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise InputTypeError(f"site: expected a site name (str) or a list of them, got {site!r}")
    return names


def _check_site(hm: Any, site: Any, inputs: Any = None) -> Any:
    """``site`` (a name or a list of names) if the model has it; per-call sites of a reused module
    (``name#i``) appear once the model is traced, so an untraced model is traced on ``inputs`` first."""
    for name in _site_list(site):
        if name not in hm.sites and not getattr(hm, "_traced", True):
            if inputs is None:
                continue  # checked again on the first batch, once traced
            hm._ensure_traced(inputs)
        hm.sites[name]  # unknown names raise SiteError with the closest valid ones
    return site


def _subspace_of(subspace: Any, name: str) -> Any:
    if isinstance(subspace, Mapping):
        if name not in subspace:
            raise InputError(f"subspace: no entry for site '{name}'; give one basis per site (or None for the "
                             f"whole site), or one subspace for all sites")
        return subspace[name]
    return subspace


def interchange(model: Any, base: Any, source: Any, site: str | Sequence[str], subspace: Any = None, *,
                positions: Any = None, heads: Any = None, batch_size: int | None = None, train: bool = False,
                progress: bool | None = None) -> Any:
    """The model's outputs on ``base`` with ``site``'s (sub)space taken from the run on ``source``.

    Args:
        model: any model the boundary accepts (:func:`interp_core.boundary.as_hooked`).
        base, source: inputs in any accepted form, paired row by row (``N`` examples each).
        site: the site whose activation is interchanged, or a list of sites interchanged together (a
            variable held jointly, e.g. an LSTM's hidden and cell state).
        subspace: ``None`` / ``"full"`` or a ``[d]`` / ``[d, k]`` basis (:class:`Interchange`); with several
            sites, one value for all or a dict ``{site: subspace}``.
        positions, heads: selectors in the site's terms (e.g. ``positions="cls"`` on a ViT).
        batch_size: pairs per forward (default: from the site's size).
        train: run in train mode (default: eval mode, flags restored).
        progress: a progress bar over batches (``None``: only on a terminal).

    Returns:
        The model's output for the ``N`` base inputs (batches joined along the batch axis).
    """
    hm = as_hooked(model)
    return _interchange(hm, base, source, _check_site(hm, site), subspace, positions, heads, batch_size, train,
                        progress=progress)


def _interchange(hm: Any, base: Any, source: Any, site: Any, subspace: Any, positions: Any, heads: Any,
                 batch_size: int | None, train: bool, clean: bool = False, labels: list | None = None,
                 progress: bool | None = False) -> Any:
    """Intervened outputs (and, with ``clean=True``, the plain base outputs); ``labels``, a list, receives the
    labels the base and source data carry (``None`` where they carry none)."""
    sites = _site_list(site)
    outs, cleans, yb, ys = [], [], [], []
    # one intervention per site for all batches (its orthonormalised basis is computed once); the source is
    # swapped in per batch
    ivs = {n: Interchange(None, _subspace_of(subspace, n), positions=positions, heads=heads) for n in sites}
    with hm.analysis(train=train), torch.no_grad():
        for b, s in progress_bar(_pairs(hm, base, source, sites, batch_size), desc="interchange", unit="batch",
                                 leave=False, progress=progress):
            _check_site(hm, sites, b.inputs)
            _, cache = hm.run_with_cache(s.inputs, sites=sites)
            for n in sites:
                ivs[n].source = cache[n]
            outs.append(hm.run_with_interventions(b.inputs, ivs))
            if clean:
                cleans.append(hm.run_with_interventions(b.inputs, {}))
            yb.append(b.labels)
            ys.append(s.labels)
    if labels is not None:
        labels.extend(None if any(y is None for y in ys_) else torch.cat(ys_).numpy() for ys_ in (yb, ys))
    out = _cat_outputs(outs)
    return (out, _cat_outputs(cleans)) if clean else out


# ---------------------------------------------------------------------------------------------- IIA
def binomial_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson 1934) two-sided interval for a binomial proportion ``k / n``."""
    from scipy.special import betaincinv  # the beta quantile, without scipy.stats' per-call overhead

    if n == 0:
        return float("nan"), float("nan")
    a = 1 - level
    lo = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, a / 2))
    hi = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - a / 2))
    return lo, hi


@dataclass
class IIAResult(Result):
    """Interchange-intervention accuracy of one alignment (site, subspace) with a high-level model.

    Attributes:
        accuracy: share of pairs where the intervened prediction equals the counterfactual label.
        n, correct: pairs evaluated and pairs correct.
        ci: ``(low, high)`` exact binomial (Clopper-Pearson) interval at ``level``.
        per_class: ``{expected label: {"accuracy", "n", "ci"}}``.
        unchanged: share of pairs where the *unintervened* prediction already equals the counterfactual
            label (what an intervention that does nothing scores; e.g. the share of pairs whose source
            and base agree on the variable).
        chance: the majority share of the counterfactual labels (a constant guess).
        config: site, subspace dimension, positions, level.
    """

    accuracy: float
    n: int
    correct: int
    ci: tuple[float, float]
    per_class: dict[Any, dict[str, Any]]
    unchanged: float
    chance: float
    predicted: np.ndarray = field(repr=False)
    expected: np.ndarray = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_predictions(cls, predicted: Any, expected: Any, unchanged: Any = None, *, level: float = 0.95,
                         tolerance: float | None = None, config: dict[str, Any] | None = None) -> IIAResult:
        """IIA from labels obtained some other way (e.g. an agent's turns after a closed-loop interchange in an
        environment): ``predicted`` ``[N]`` under the intervention, ``expected`` ``[N]`` from the high-level
        model, ``unchanged`` ``[N]`` the unintervened labels (optional)."""
        pred = _as_np(predicted, "predicted")
        n = pred.shape[0]
        if n == 0:
            raise InputError("predicted: no pairs; give at least one prediction")
        exp = _labels(_as_np(expected, "expected"), n, "expected")
        if not 0 < level < 1:
            raise InputError(f"level: a confidence level in (0, 1), got {level!r}")
        ok = _match(pred, exp, tolerance)
        ok_clean = _match(_labels(_as_np(unchanged, "unchanged"), n, "unchanged"), exp, tolerance) \
            if unchanged is not None else np.full(n, np.nan)
        return _result(ok, ok_clean, pred, exp, level, tolerance, dict(config or {}))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("predicted", None)
        d.pop("expected", None)
        return d

    def plot(self, ax: Any = None) -> Any:
        """Bars: overall IIA and per-class IIA with their binomial intervals; dashed lines at ``chance``
        and at the no-intervention score."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(1.2 + 0.8 * (1 + len(self.per_class)), 3))
        names = ["all"] + [str(k) for k in self.per_class]
        acc = [self.accuracy] + [v["accuracy"] for v in self.per_class.values()]
        cis = [self.ci] + [tuple(v["ci"]) for v in self.per_class.values()]
        err = np.array([[max(a - lo, 0.0) for a, (lo, _) in zip(acc, cis)],
                        [max(hi - a, 0.0) for a, (_, hi) in zip(acc, cis)]])
        ax.bar(range(len(acc)), acc, yerr=np.nan_to_num(err), capsize=3, color=["C0"] + ["C1"] * (len(acc) - 1))
        if math.isfinite(self.chance):
            ax.axhline(self.chance, ls="--", color="gray", lw=1, label="chance")
        if math.isfinite(self.unchanged):
            ax.axhline(self.unchanged, ls=":", color="k", lw=1, label="no intervention")
        ax.set_xticks(range(len(acc)), names)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("IIA")
        ax.set_title(f"IIA at {self.config.get('site', self.config.get('sites'))} (k={self.config.get('k')})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        return ax


def _labels(x: Any, n: int, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"{what}: expected {n} labels, one per pair (shape [{n}]), got shape {arr.shape}")
    return arr


def _default_predict(output: Any) -> torch.Tensor:
    return logits_of(output).argmax(-1)


def iia(model: Any, base: Any, source: Any, site: str | Sequence[str], high_level: Callable[[Any, Any], Any],
        predict: Callable[[Any], Any] | None = None, subspace: Any = None, *, base_vars: Any = None,
        source_vars: Any = None, positions: Any = None, heads: Any = None, tolerance: float | None = None,
        level: float = 0.95, batch_size: int | None = None, train: bool = False,
        progress: bool | None = None) -> IIAResult:
    """Interchange-intervention accuracy (Geiger et al. 2021) of ``site``'s (sub)space for a high-level model.

    Args:
        model, base, source, site, subspace, positions, heads, batch_size, train, progress: as in
            :func:`interchange`.
        high_level: ``high_level(base_vars, source_vars) -> [N]`` the counterfactual labels the high-level
            causal model predicts with the variable taken from the source (vectorised: it receives all
            ``N`` pairs' variables at once, e.g. ``lambda b, s: s["cue"]``).
        predict: ``output -> [N]`` the network's label (default: argmax of the logits).
        base_vars, source_vars: the high-level variables of the base and source inputs (arrays ``[N]`` or
            dicts of them), passed to ``high_level``; default: the labels carried by ``base`` / ``source``.
        tolerance: for continuous labels, a prediction within ``tolerance`` of the expected value counts as
            correct (required when the labels are floating point).
        level: confidence level of the binomial interval.

    Returns:
        :class:`IIAResult`.
    """
    hm = as_hooked(model)
    site = _check_site(hm, site)
    if not callable(high_level):
        raise InputTypeError(f"high_level: expected a callable (base_vars, source_vars) -> expected labels, got "
                             f"{type(high_level).__name__}")
    if predict is not None and not callable(predict):
        raise InputTypeError(f"predict: expected a callable output -> labels, got {type(predict).__name__}")
    if not 0 < level < 1:
        raise InputError(f"level: a confidence level in (0, 1), got {level!r}")
    carried: list = []
    out, clean = _interchange(hm, base, source, site, subspace, positions, heads, batch_size, train, clean=True,
                              labels=carried, progress=progress)
    for argument, given, found in (("base", base_vars, carried[0]), ("source", source_vars, carried[1])):
        if given is None and found is None:
            raise InputError(f"{argument}_vars: not given and {argument} carries no labels; pass the high-level "
                             f"variables of the {argument} inputs ({argument}_vars=array [N] or dict of arrays), "
                             f"or give {argument} as (x, y) / a Dataset of (x, y)")
    base_vars = carried[0] if base_vars is None else base_vars
    source_vars = carried[1] if source_vars is None else source_vars
    pred_fn = predict or _default_predict
    pred = _as_np(pred_fn(out), "predict(output)")
    n = pred.shape[0]
    expected = _labels(high_level(base_vars, source_vars), n, "high_level(base_vars, source_vars)")
    pred_clean = _labels(_as_np(pred_fn(clean), "predict(output)"), n, "predict(output)")
    ok = _match(pred, expected, tolerance)
    ok_clean = _match(pred_clean, expected, tolerance)
    k = _subspace_dim(hm, site, subspace)
    config = {"site": site, "k": k, "positions": positions, "heads": heads, "level": level, "tolerance": tolerance,
              "high_level": getattr(high_level, "__name__", repr(high_level))}
    return _result(ok, ok_clean, pred, expected, level, tolerance, config)


def _result(ok: np.ndarray, ok_clean: np.ndarray, pred: np.ndarray, expected: np.ndarray, level: float,
            tolerance: float | None, config: dict[str, Any]) -> IIAResult:
    n = int(ok.size)
    per_class: dict[Any, dict[str, Any]] = {}
    if tolerance is None:
        for c in np.unique(expected):
            m = expected == c
            kc = int(ok[m].sum())
            key = c.item() if isinstance(c, np.generic) else c
            per_class[key] = {"accuracy": kc / int(m.sum()), "n": int(m.sum()),
                              "ci": binomial_ci(kc, int(m.sum()), level)}
        chance = max(v["n"] for v in per_class.values()) / n
    else:
        chance = float("nan")
    correct = int(ok.sum())
    unchanged = float(np.mean(ok_clean)) if ok_clean.size else float("nan")
    return IIAResult(correct / n, n, correct, binomial_ci(correct, n, level), per_class, unchanged,
                     chance, pred, expected, config)


def _as_np(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputError(f"{what}: expected one label per example (shape [N]), got shape {arr.shape}")
    return arr


def _match(pred: np.ndarray, expected: np.ndarray, tolerance: float | None) -> np.ndarray:
    floating = np.issubdtype(expected.dtype, np.floating) and not np.all(np.mod(expected, 1) == 0)
    if tolerance is None:
        if floating:
            raise InputError("tolerance: the expected labels are continuous; give tolerance= (a prediction within "
                             "it of the expected value counts as correct)")
        return pred == expected
    if tolerance < 0 or not math.isfinite(tolerance):
        raise InputError(f"tolerance: a finite non-negative number, got {tolerance!r}")
    return np.abs(pred.astype(np.float64) - expected.astype(np.float64)) <= tolerance


def _subspace_dim(hm: Any, site: Any, subspace: Any) -> Any:
    if isinstance(subspace, Mapping):
        return {k: _subspace_dim(hm, k, v) for k, v in subspace.items()}
    if subspace is None or isinstance(subspace, str):
        return "full"
    t = torch.as_tensor(np.asarray(subspace) if not isinstance(subspace, torch.Tensor) else subspace.detach())
    return 1 if t.dim() == 1 else int(t.shape[1])
