"""Feature-level universality: matching units across models, model stitching, and the cross-model study.

- :func:`match_units` — pair the units (neurons, channels, SAE latents: the columns of ``[N, d]`` feature
  rows) of two models by the Pearson correlation of their activations over the same inputs. ``"hungarian"``:
  the one-to-one assignment maximising the summed correlation (Kuhn 1955, via
  ``scipy.optimize.linear_sum_assignment``), as in Li et al. 2016 ("Convergent Learning: Do different neural
  networks learn the same representations?", ICLR); ``"max"``: each unit of A takes its best-correlated unit of
  B (many-to-one). A random-init model gives the baseline distribution of matched correlations.
- :func:`match_features` — the same per layer pair, run from hooked models over data, with a baseline.
- :func:`stitch` — model stitching (Bansal, Nakkiran & Barak 2021, "Revisiting Model Stitching to Compare
  Neural Representations", NeurIPS; Lenc & Vedaldi 2015): an affine layer maps A's activation at one site into
  B's activation space at another (per position: a 1x1 convolution for conv maps), B runs on from there (a
  :class:`~interp_core.interventions.Replace` at B's site), and the stitched model's accuracy is compared with
  each model alone. The layer is initialised by least squares (regress B's activation on A's) and then
  trained on the task loss with both models frozen.
- :func:`universality_study` — CKA and matched-unit correlations for several model pairs, each against a
  random-init baseline: one table and one figure set, with calibrated columns and, over seeds, intervals.
- :func:`calibrate` / :func:`calibrated_score` — a score beside its random-init baseline in one calibrated form,
  the share of the gap from the baseline to the ceiling, ``(score - random) / (1 - random)``, with a Student-t
  interval over seeds, so a CartPole row (random-init CKA ~0.75) and a vision row (~0.3) read on one scale.

Every function takes models of any kind (a CNN, a ViT, a policy) as a ``HookedModel`` or a plain ``nn.Module``
(:func:`~interp_core.boundary.as_hooked`: the registered adapter names the sites) and data in any form
:func:`~interp_core.boundary.iter_batches` accepts (tensors, numpy arrays, ``(x, y)`` pairs, ``Dataset``,
``DataLoader``, iterables of batches), and runs the models in eval mode (``hm.analysis()``), their train/eval
flags, buffers and weights left as they were. NaN or infinite inputs are refused with ``InputError``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from .axes import PoolSpec, feature_last
from .boundary import Batch, as_hooked
from .errors import InputError, InputTypeError
from .interventions import Replace
from .progress import progress_bar
from .results import Result
from .similarity._arrays import ArrayLike, as_pair
from .similarity.sources import collect_features, for_model, is_model, prepare_batches
from .similarity.streaming import LinearCKAAccumulator

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ unit matching
def unit_correlations(X: ArrayLike, Y: ArrayLike) -> np.ndarray:
    """Pearson correlation ``[d1, d2]`` between every column of X and every column of Y (0 for a constant unit).

    Hand-written on purpose: one ``[d1, N] @ [N, d2]`` product. scipy has no cross-correlation matrix
    (``scipy.stats.pearsonr`` column by column: 32 s for 2,000 rows x 256 x 256 units, vs 0.14 s here) and
    ``np.corrcoef`` computes the full ``(d1 + d2)^2`` matrix (0.16 s) and gives NaN for a dead unit.
    """
    X, Y = as_pair(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    sx, sy = np.linalg.norm(Xc, axis=0), np.linalg.norm(Yc, axis=0)
    C = (Xc.T @ Yc) / np.outer(np.where(sx == 0, 1, sx), np.where(sy == 0, 1, sy))
    C[sx == 0, :] = 0.0
    C[:, sy == 0] = 0.0
    return C


@dataclass
class UnitMatch(Result):
    """Matched units: ``units_a[k]`` of A is paired with ``units_b[k]`` of B at correlation ``correlations[k]``."""

    units_a: np.ndarray
    units_b: np.ndarray
    correlations: np.ndarray
    method: str

    @property
    def mean(self) -> float:
        return float(np.mean(self.correlations))

    def plot(self, ax: Any = None) -> Any:
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4, 3))
        ax.hist(self.correlations, bins=20, range=(-1, 1), color="C0")
        ax.set_xlabel(f"matched correlation ({self.method})")
        ax.set_ylabel("units")
        return ax.figure


def match_units(X: ArrayLike, Y: ArrayLike, method: Literal["hungarian", "max"] = "hungarian",
                absolute: bool = False) -> UnitMatch:
    """Match the units (columns) of X ``[N, d1]`` to those of Y ``[N, d2]`` by activation correlation.

    Args:
        method: ``"hungarian"`` (one-to-one, ``min(d1, d2)`` pairs, maximising the summed correlation) or
            ``"max"`` (each unit of X to its most correlated unit of Y; ``d1`` pairs).
        absolute: match on ``|corr|`` (a unit and its sign-flipped twin count as the same feature).
    """
    C = unit_correlations(X, Y)
    S = np.abs(C) if absolute else C
    if method == "hungarian":
        ia, ib = linear_sum_assignment(S, maximize=True)
    elif method == "max":
        ia, ib = np.arange(C.shape[0]), S.argmax(1)
    else:
        raise InputError(f"method: must be 'hungarian' or 'max', got {method!r}")
    return UnitMatch(ia, ib, S[ia, ib], method)


@dataclass
class FeatureMatchResult(Result):
    """Matched-unit correlations per site pair, trained vs the random-init baseline."""

    site_pairs: list[tuple[str, str]]
    correlations: list[np.ndarray]
    baseline: list[np.ndarray] | None
    method: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> list[dict[str, Any]]:
        """One row per site pair: ``site_a``, ``site_b``, ``units``, ``mean_corr``, ``median_corr`` (and, with a
        baseline, ``baseline_mean_corr``, ``baseline_median_corr``)."""
        rows = []
        for k, (a, b) in enumerate(self.site_pairs):
            row = {"site_a": a, "site_b": b, "units": int(len(self.correlations[k])),
                   "mean_corr": float(np.mean(self.correlations[k])),
                   "median_corr": float(np.median(self.correlations[k]))}
            if self.baseline is not None:
                row["baseline_mean_corr"] = float(np.mean(self.baseline[k]))
                row["baseline_median_corr"] = float(np.median(self.baseline[k]))
            rows.append(row)
        return rows

    def summary(self) -> list[dict[str, Any]]:
        """:attr:`table` under its earlier keys (``mean``, ``median``, ``units``, ``baseline_mean``)."""
        rows = []
        for k, (a, b) in enumerate(self.site_pairs):
            row = {"site_a": a, "site_b": b, "mean": float(np.mean(self.correlations[k])),
                   "median": float(np.median(self.correlations[k])), "units": int(len(self.correlations[k]))}
            if self.baseline is not None:
                row["baseline_mean"] = float(np.mean(self.baseline[k]))
            rows.append(row)
        return rows

    def plot(self, ax: Any = None, title: str | None = None) -> Any:
        """Distribution of matched correlations per site pair (trained: blue; baseline: grey)."""
        import matplotlib.pyplot as plt

        n = len(self.site_pairs)
        if ax is None:
            _, ax = plt.subplots(figsize=(1.5 + 0.6 * n, 3.2))
        pos = np.arange(n)
        parts = ax.violinplot([np.asarray(c) for c in self.correlations], positions=pos - 0.18, widths=0.34,
                              showmedians=True)
        for b in parts["bodies"]:
            b.set_facecolor("C0")
        if self.baseline is not None:
            parts = ax.violinplot([np.asarray(c) for c in self.baseline], positions=pos + 0.18, widths=0.34,
                                  showmedians=True)
            for b in parts["bodies"]:
                b.set_facecolor("0.6")
        ax.set_xticks(pos, [f"{a}\n{b}" if a != b else a for a, b in self.site_pairs], rotation=90, fontsize=7)
        ax.set_ylabel(f"matched correlation ({self.method})")
        ax.set_ylim(-0.2, 1.02)
        ax.set_title(title or "trained (blue) vs random-init baseline (grey)", fontsize=9)
        return ax.figure


def depth_pairs(sites_a: Sequence[str], sites_b: Sequence[str]) -> list[tuple[str, str]]:
    """Pair each site of A with the site of B at the same relative depth (``i / (L_a - 1)``)."""
    la, lb = len(sites_a), len(sites_b)
    if la == 1:
        return [(sites_a[0], sites_b[-1])]
    return [(a, sites_b[round(i * (lb - 1) / (la - 1))]) for i, a in enumerate(sites_a)]


def _check_method(method: str) -> None:
    if method not in ("hungarian", "max"):
        raise InputError(f"method: must be 'hungarian' or 'max', got {method!r}")


def _models(*sources: Any) -> list[Any]:
    """Models through the boundary (a plain module gets its registered adapter); precomputed sources as given."""
    names = ("model_a", "model_b", "baseline")
    return [as_hooked(src, name) if src is not None and is_model(src) else src for src, name in zip(sources, names)]


def match_features(model_a: Any, model_b: Any, data: Any, site_pairs: Sequence[tuple[str, str]],
                   pool: PoolSpec = "mean", method: Literal["hungarian", "max"] = "hungarian",
                   baseline: Any = None, max_batches: int | None = None, *, batch_size: int | None = None,
                   progress: bool | None = None) -> FeatureMatchResult:
    """Matched-unit correlations for each ``(site of A, site of B)`` pair over the same inputs.

    Args:
        model_a, model_b, baseline: models (``HookedModel`` or plain ``nn.Module``: the registered adapter is
            used) or precomputed sources, see :mod:`interp_core.similarity.sources`; ``baseline`` is a
            random-init twin of B matched instead of B for the control distribution.
        data: the inputs in any form :func:`~interp_core.boundary.iter_batches` accepts (tensor, numpy array,
            ``(x, y)``, ``Dataset``, ``DataLoader``, iterable of batches); batched once and reused for the
            baseline. Models run in eval mode (``hm.analysis()``).
        site_pairs: ``[(site of A, site of B), ...]``.
        pool: pooling of positions (``"mean"`` default: one row per input, channels as units).
        method: ``"hungarian"`` or ``"max"`` (:func:`match_units`).
        max_batches, batch_size: limit the data / size the batches.
        progress: tqdm bars over the batches (``None``: only on a terminal).
    """
    _check_method(method)
    if not site_pairs or any(not isinstance(p, (tuple, list)) or len(p) != 2 for p in site_pairs):
        raise InputError(f"site_pairs: give a non-empty list of (site of A, site of B) pairs, got {site_pairs!r}")
    model_a, model_b, baseline = _models(model_a, model_b, baseline)
    sa = list(dict.fromkeys(a for a, _ in site_pairs))
    sb = list(dict.fromkeys(b for _, b in site_pairs))
    if baseline is not None and is_model(model_a) and data is not None:
        data = prepare_batches(data, model_a, sites=sa, batch_size=batch_size, max_batches=max_batches)
    common = dict(batch_size=batch_size, progress=progress)
    xs, ys = collect_features(model_a, model_b, data, sa, sb, pool, max_batches, desc="match features", **common)
    fa, fb = dict(zip(sa, xs)), dict(zip(sb, ys))
    corr = [match_units(fa[a], fb[b], method).correlations for a, b in site_pairs]
    base = None
    if baseline is not None:
        _, zs = collect_features(model_a, baseline, data, sa[:1], sb, pool, max_batches, desc="match baseline",
                                 **common)
        fz = dict(zip(sb, zs))
        base = [match_units(fa[a], fz[b], method).correlations for a, b in site_pairs]
    return FeatureMatchResult([tuple(p) for p in site_pairs], corr, base, method,
                              {"pool": pool, "rows": int(xs[0].shape[0])})


# ------------------------------------------------------------------------------------------ stitching
class StitchingLayer(nn.Module):
    """Affine map on the feature axis, applied at every position: ``[..., d_a] -> [..., d_b]``.

    For a conv site this is a 1x1 convolution, for a token site a per-token linear layer (Bansal et al. 2021).
    """

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@dataclass
class StitchResult(Result):
    """Accuracy of A alone, B alone and A's bottom stitched into B's top, on the same test inputs."""

    site_a: str
    site_b: str
    accuracy_a: float
    accuracy_b: float
    accuracy_stitched: float
    accuracy_stitched_init: float
    train_losses: list[float]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def relative(self) -> float:
        """Stitched accuracy / B's accuracy (Bansal et al.'s "stitching penalty" is 1 minus this)."""
        return self.accuracy_stitched / self.accuracy_b if self.accuracy_b > 0 else float("nan")

    def plot(self, ax: Any = None) -> Any:
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4, 3))
        names = ["A", "B", "stitched (lstsq)", "stitched (trained)"]
        vals = [self.accuracy_a, self.accuracy_b, self.accuracy_stitched_init, self.accuracy_stitched]
        ax.bar(names, vals, color=["C0", "C1", "0.6", "C2"])
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{self.site_a} -> {self.site_b}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        return ax.figure


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(getattr(out, "logits", None), torch.Tensor):  # PolicyOutput, HF-style model outputs
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    raise InputTypeError(f"cannot read logits from a model output of type {type(out).__name__}; pass output_fn=")


class _Stitched:
    """Run B with its activation at ``site_b`` replaced by ``layer(A's activation at site_a)``."""

    def __init__(self, model_a: Any, site_a: str, model_b: Any, site_b: str, layer: StitchingLayer):
        self.a, self.b, self.site_a, self.site_b, self.layer = model_a, model_b, site_a, site_b, layer

    def activation_a(self, x: Any) -> torch.Tensor:
        _, cache = self.a.run_with_cache(x, sites=[self.site_a])
        flat, _ = feature_last(cache[self.site_a], cache.axes(self.site_a))
        return flat

    def __call__(self, x: Any, grad: bool = False) -> Any:
        src = self.activation_a(x)

        def replace(act: torch.Tensor, site: Any) -> torch.Tensor:
            flat_b, restore = feature_last(act, site.axes)
            if src.shape[:-1] != flat_b.shape[:-1]:
                raise InputError(f"stitching {self.site_a} -> {self.site_b}: A's activation has positions "
                                 f"{tuple(src.shape[:-1])} but B's has {tuple(flat_b.shape[:-1])}; stitch sites "
                                 f"with the same batch and position layout")
            return restore(self.layer(src.to(device=act.device, dtype=act.dtype)))

        with torch.enable_grad() if grad else torch.no_grad():
            return self.b.run_with_interventions(for_model(x, self.b), {self.site_b: Replace(replace)})


def _output(model: Any, x: Any) -> Any:
    with torch.no_grad():
        return model.run_with_interventions(for_model(x, model), {})


def _accuracy(fn: Callable[[Any], Any], batches: Sequence[Batch], output_fn: Callable,
              targets: Callable[[Batch], torch.Tensor]) -> float:
    hit = tot = 0
    for batch in batches:
        with torch.no_grad():
            pred = output_fn(fn(batch.inputs)).argmax(-1).cpu()
        y = targets(batch)
        hit += int((pred == y).sum())
        tot += int(y.numel())
    return hit / max(tot, 1)


def stitch(model_a: Any, site_a: str, model_b: Any, site_b: str, train_data: Any, test_data: Any,
           target: Literal["labels", "model_b"] = "labels", epochs: int = 3, lr: float = 1e-3, ridge: float = 1e-6,
           output_fn: Callable[[Any], torch.Tensor] = _logits, seed: int = 0, *, batch_size: int | None = None,
           progress: bool | None = None) -> StitchResult:
    """Stitch A's ``site_a`` into B's ``site_b`` with an affine layer; report accuracies (Bansal et al. 2021).

    Args:
        model_a, model_b: models (``HookedModel`` or plain ``nn.Module``, which gets its registered adapter), run
            in eval mode and frozen: neither their weights, their ``.grad`` nor their train/eval flags change.
        site_a, site_b: sites with the same batch and position layout (e.g. ``blocks.3.resid_post`` of two ViTs
            with the same tokens, conv maps of the same spatial size, ``policy.1`` of two policies).
        train_data, test_data: inputs with labels in any form :func:`~interp_core.boundary.iter_batches`
            accepts (``(x, y)`` tensors, a ``Dataset`` or ``DataLoader`` of ``(x, y)``, a list of ``(x, y)``
            batches), or inputs alone with ``target="model_b"``. Each is batched once and kept in memory.
        target: ``"labels"`` (accuracy and loss against the labels) or ``"model_b"`` (against B's own
            predictions: the agreement with B, e.g. for a policy's actions).
        epochs: passes of task-loss training after the least-squares initialisation (0: least squares only).
        lr: Adam learning rate of that training.
        ridge: L2 regularisation of the least-squares initialisation (relative to the mean feature variance).
        output_fn: reads the logits from a model output (default: a tensor, the first element of a tuple, a
            ``.logits`` attribute or a ``"logits"`` key).
        seed: seed of the training.
        batch_size: inputs per batch where the data is not batched already.
        progress: tqdm bar over the training epochs (``None``: only on a terminal).
    """
    if target not in ("labels", "model_b"):
        raise InputError(f"target: must be 'labels' or 'model_b', got {target!r}")
    if not isinstance(epochs, int) or epochs < 0:
        raise InputError(f"epochs: must be a non-negative integer, got {epochs!r}")
    ha, hb = as_hooked(model_a, "model_a"), as_hooked(model_b, "model_b")
    train = prepare_batches(train_data, ha, sites=[site_a], batch_size=batch_size, argument="train_data")
    test = prepare_batches(test_data, ha, sites=[site_a], batch_size=batch_size, argument="test_data")
    torch.manual_seed(seed)

    def targets(batch: Batch) -> torch.Tensor:
        if target == "labels":
            if batch.labels is None:
                raise InputError("train_data, test_data: target='labels' needs labels (give (inputs, labels) "
                                 "batches); use target='model_b' to compare with B's own predictions")
            return batch.labels
        return output_fn(_output(hb, batch.inputs)).argmax(-1).cpu()

    with ha.analysis(), hb.analysis():
        # least-squares initialisation from the normal equations (streamed over batches)
        xtx = xty = sx = sy = None
        n = 0
        for batch in train:
            _, ca = ha.run_with_cache(batch.inputs, sites=[site_a])
            _, cb = hb.run_with_cache(for_model(batch.inputs, hb), sites=[site_b])
            fa = feature_last(ca[site_a], ca.axes(site_a))[0]
            fa = fa.reshape(-1, fa.shape[-1]).cpu().double()
            fb = feature_last(cb[site_b], cb.axes(site_b))[0]
            fb = fb.reshape(-1, fb.shape[-1]).cpu().double()
            if fa.shape[0] != fb.shape[0]:
                raise InputError(f"stitching {site_a} -> {site_b}: {fa.shape[0]} rows (batch x positions) at A "
                                 f"but {fb.shape[0]} at B; stitch sites with the same position layout")
            if xtx is None:
                xtx = torch.zeros(fa.shape[1], fa.shape[1], dtype=torch.float64)
                xty = torch.zeros(fa.shape[1], fb.shape[1], dtype=torch.float64)
                sx, sy = torch.zeros(fa.shape[1], dtype=torch.float64), torch.zeros(fb.shape[1], dtype=torch.float64)
            xtx += fa.T @ fa
            xty += fa.T @ fb
            sx += fa.sum(0)
            sy += fb.sum(0)
            n += fa.shape[0]
        mx, my = sx / n, sy / n
        cxx = xtx / n - torch.outer(mx, mx)
        cxy = xty / n - torch.outer(mx, my)
        lam = ridge * float(torch.diagonal(cxx).mean().clamp_min(1e-12))
        W = torch.linalg.solve(cxx + lam * torch.eye(len(cxx), dtype=torch.float64), cxy)  # [d_a, d_b]
        ref = next((p for p in hb.parameters() if p.is_floating_point()), None)
        dev = ref.device if ref is not None else torch.device("cpu")
        layer = StitchingLayer(W.shape[0], W.shape[1]).to(device=dev, dtype=ref.dtype if ref is not None else None)
        with torch.no_grad():
            layer.linear.weight.copy_(W.T)
            layer.linear.bias.copy_(my - mx @ W)
        stitched = _Stitched(ha, site_a, hb, site_b, layer)

        acc_init = _accuracy(stitched, test, output_fn, targets)
        losses: list[float] = []
        opt = torch.optim.Adam(layer.parameters(), lr=lr)
        params = list(layer.parameters())
        for _ in progress_bar(range(epochs), desc=f"stitch {site_a} -> {site_b}", unit="epoch",
                              progress=progress):
            for batch in train:
                y = targets(batch).to(dev)
                loss = nn.functional.cross_entropy(output_fn(stitched(batch.inputs, grad=True)), y)
                grads = torch.autograd.grad(loss, params)  # only the layer: B's .grad stays untouched
                for p, g in zip(params, grads):
                    p.grad = g
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
        acc_a = _accuracy(lambda x: _output(ha, x), test, output_fn, targets)
        acc_b = _accuracy(lambda x: _output(hb, x), test, output_fn, targets)
        acc_s = _accuracy(stitched, test, output_fn, targets)
    return StitchResult(site_a, site_b, acc_a, acc_b, acc_s, acc_init, losses,
                        {"target": target, "epochs": epochs, "lr": lr, "ridge": ridge, "seed": seed,
                         "train_batches": len(train), "test_batches": len(test)})


# ------------------------------------------------------------------------------------------ the study
@dataclass
class Comparison:
    """One model pair of a universality study.

    ``baseline``: the random-init twin of ``model_b`` (same architecture, untrained); ``data``: the inputs both
    models take, in any form :func:`~interp_core.boundary.iter_batches` accepts (batched once, kept in memory and
    reused for the baseline); models may be ``HookedModel`` or plain ``nn.Module`` (registered adapter); sites
    are paired by relative depth for unit matching.
    """

    name: str
    model_a: Any
    model_b: Any
    data: Any
    sites_a: Sequence[str]
    sites_b: Sequence[str]
    baseline: Any = None
    pool: PoolSpec = "mean"
    group: str | None = None


@dataclass
class UniversalityStudyResult(Result):
    """Per comparison: CKA matrices (trained, baseline) and matched-unit correlations; one tidy table."""

    table: list[dict[str, Any]]
    cka: dict[str, np.ndarray]
    cka_baseline: dict[str, np.ndarray]
    matches: dict[str, FeatureMatchResult]
    sites: dict[str, tuple[list[str], list[str]]]
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self, confidence: float = 0.95) -> list[dict[str, Any]]:
        """One row per group of comparisons (:attr:`Comparison.group`; a comparison without one is its own
        group): for each score with a baseline (``cka_depth``, ``cka_best``, ``matched_corr``), the mean of its
        calibrated values over the group's comparisons (seeds) and a Student-t ``confidence`` interval:
        ``{score}_calibrated``, ``{score}_calibrated_low`` / ``_high``, plus ``{score}`` and
        ``{score}_baseline`` means and ``n_seeds``. Raises :class:`InputError` for a group of fewer than two
        comparisons with baselines (no interval from one seed)."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in self.table:
            groups.setdefault(row.get("group") or row["comparison"], []).append(row)
        out = []
        for name, rows in groups.items():
            if any("cka_depth_baseline" not in r for r in rows):
                raise InputError(f"group {name!r}: a comparison has no baseline; give every Comparison a random-init "
                                 f"baseline to calibrate its scores")
            summary: dict[str, Any] = {"group": name, "n_seeds": len(rows),
                                       "comparisons": [r["comparison"] for r in rows]}
            for score in _STUDY_SCORES:
                cal = calibrate([r[score] for r in rows], [r[f"{score}_baseline"] for r in rows],
                                confidence=confidence, name=f"{name}: {score}", argument=f"group {name!r}")
                summary.update({score: float(np.mean(cal.scores)), f"{score}_baseline": float(np.mean(cal.baselines)),
                                f"{score}_calibrated": cal.mean, f"{score}_calibrated_low": cal.low,
                                f"{score}_calibrated_high": cal.high})
            out.append(summary)
        return out

    def plot(self) -> Any:
        """One row per comparison: CKA heatmap (trained), CKA heatmap (baseline), matched correlations."""
        import matplotlib.pyplot as plt

        names = list(self.cka)
        fig, axes = plt.subplots(len(names), 3, figsize=(13, 3.6 * len(names)), squeeze=False)
        for r, name in enumerate(names):
            sa, sb = self.sites[name]
            for c, (M, what) in enumerate(((self.cka[name], "trained"), (self.cka_baseline.get(name), "baseline"))):
                ax = axes[r, c]
                if M is None:
                    ax.axis("off")
                    continue
                im = ax.imshow(M, vmin=0, vmax=1, cmap="magma", aspect="auto")
                ax.set_xticks(range(len(sb)), sb, rotation=90, fontsize=6)
                ax.set_yticks(range(len(sa)), sa, fontsize=6)
                ax.set_title(f"{name}: linear CKA ({what} B)", fontsize=9)
                fig.colorbar(im, ax=ax, fraction=0.046)
            self.matches[name].plot(ax=axes[r, 2], title=f"{name}: matched units")
        fig.tight_layout()
        return fig


def universality_study(comparisons: Sequence[Comparison], method: Literal["hungarian", "max"] = "hungarian", *,
                       batch_size: int | None = None, progress: bool | None = None) -> UniversalityStudyResult:
    """CKA (layer x layer) and matched-unit correlations for each comparison, each vs its random-init baseline.

    Each model runs once over the comparison's data in eval mode (features pooled by ``comparison.pool`` and kept
    in memory, so keep the data to a few thousand inputs). Table columns: ``cka_depth`` (mean linear CKA over
    sites paired by relative depth), ``cka_best`` (mean over A's sites of the best CKA with any site of B), their
    ``*_baseline`` twins against the random-init B, ``matched_corr`` and ``matched_corr_baseline`` (mean
    matched-unit correlation over the depth-paired sites). ``progress``: a tqdm bar over the comparisons
    (``None``: only on a terminal).
    """
    _check_method(method)
    comparisons = list(comparisons)
    if not comparisons or not all(isinstance(c, Comparison) for c in comparisons):
        raise InputTypeError("comparisons: give a non-empty list of Comparison(name, model_a, model_b, data, "
                             "sites_a, sites_b, baseline=...)")
    table, ckas, bases, matches, sites = [], {}, {}, {}, {}
    for c in progress_bar(comparisons, desc="universality", unit="comparison", progress=progress):
        sa, sb = list(c.sites_a), list(c.sites_b)
        if not sa or not sb:
            raise InputError(f"comparison {c.name!r}: sites_a and sites_b must be non-empty")
        model_a, model_b, baseline = _models(c.model_a, c.model_b, c.baseline)
        data = c.data
        if is_model(model_a):
            data = prepare_batches(data, model_a, sites=sa, batch_size=batch_size)
        pairs = depth_pairs(sa, sb)
        xs, ys = collect_features(model_a, model_b, data, sa, sb, c.pool, progress=False)
        M = LinearCKAAccumulator().update(xs, ys).matrix()
        fa, fb = dict(zip(sa, xs)), dict(zip(sb, ys))
        corr = [match_units(fa[a], fb[b], method).correlations for a, b in pairs]
        idx = [(sa.index(a), sb.index(b)) for a, b in pairs]
        row = {"comparison": c.name, **({"group": c.group} if c.group is not None else {}),
               "rows": int(xs[0].shape[0]), "sites_a": len(sa), "sites_b": len(sb),
               "cka_depth": float(np.mean([M[i, j] for i, j in idx])), "cka_best": float(M.max(1).mean()),
               "matched_corr": float(np.mean([x.mean() for x in corr]))}
        base_corr = None
        if baseline is not None:
            _, zs = collect_features(model_a, baseline, data, sa[:1], sb, c.pool, progress=False)
            B = LinearCKAAccumulator().update(xs, zs).matrix()
            fz = dict(zip(sb, zs))
            base_corr = [match_units(fa[a], fz[b], method).correlations for a, b in pairs]
            row.update({"cka_depth_baseline": float(np.mean([B[i, j] for i, j in idx])),
                        "cka_best_baseline": float(B.max(1).mean()),
                        "matched_corr_baseline": float(np.mean([x.mean() for x in base_corr]))})
            for score in _STUDY_SCORES:
                row[f"{score}_calibrated"] = _calibrated_or_nan(row[score], row[f"{score}_baseline"])
            bases[c.name] = B
        logger.info("universality %s: %s", c.name, row)
        table.append(row)
        ckas[c.name] = M
        matches[c.name] = FeatureMatchResult(pairs, corr, base_corr, method, {"pool": c.pool})
        sites[c.name] = (sa, sb)
    return UniversalityStudyResult(table, ckas, bases, matches, sites, {"method": method})


# ------------------------------------------------------------------------------------------ calibration
_STUDY_SCORES = ("cka_depth", "cka_best", "matched_corr")


def calibrated_score(score: Any, baseline: Any, ceiling: float = 1.0) -> Any:
    """The share of the gap from the random-init baseline to the ceiling that a score closes.

    ``calibrated = (score - baseline) / (ceiling - baseline)``: 0 when the trained model scores like its
    random-init twin, 1 at the ceiling (CKA, a correlation, an accuracy: 1), negative below the baseline. The
    same normalisation as "skill scores" of forecast verification and the "normalised score" of RL benchmarks
    ((score - random) / (reference - random)). Works on floats and elementwise on arrays (broadcast).

    Raises :class:`InputError` when a score or baseline is not finite, or when a baseline is at (or above) the
    ceiling: there is no gap to close, so no calibrated value.
    """
    s = np.asarray(score, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(b))):
        raise InputError(f"score, baseline: must be finite numbers, got score={score!r}, baseline={baseline!r}")
    if not np.isfinite(ceiling):
        raise InputError(f"ceiling: must be a finite number, got {ceiling!r}")
    gap = ceiling - b
    if np.any(gap <= 0):
        raise InputError(f"baseline: a random-init baseline of {float(np.max(b)):.6g} reaches the ceiling {ceiling}; "
                         f"there is no gap to calibrate against (compare at a site where the untrained model is "
                         f"not already at the ceiling)")
    out = (s - b) / gap
    return float(out) if out.ndim == 0 else out


def _calibrated_or_nan(score: float, baseline: float) -> float:
    """The study's calibrated column: NaN (JSON null) where the baseline sits at the ceiling."""
    try:
        return float(calibrated_score(score, baseline))
    except InputError:
        return float("nan")


@dataclass
class CalibratedScore(Result):
    """A score over seeds, calibrated against each seed's random-init baseline, with a Student-t interval.

    ``values[i] = (scores[i] - baselines[i]) / (ceiling - baselines[i])``; ``mean`` their mean; ``[low, high]``
    the two-sided ``confidence`` t-interval ``mean -/+ t_{n-1, (1 + confidence) / 2} * sd / sqrt(n)`` (``sd``
    with ``ddof=1``).
    """

    name: str
    scores: np.ndarray
    baselines: np.ndarray
    values: np.ndarray
    mean: float
    low: float
    high: float
    confidence: float
    ceiling: float = 1.0
    method: str = "student-t"

    @property
    def n(self) -> int:
        return int(len(self.values))

    def row(self) -> dict[str, Any]:
        """The table row: raw and baseline means beside the calibrated mean and its interval."""
        return {"name": self.name, "score": float(np.mean(self.scores)), "baseline": float(np.mean(self.baselines)),
                "calibrated": self.mean, "low": self.low, "high": self.high, "n_seeds": self.n,
                "confidence": self.confidence, "interval": self.method}

    def plot(self, ax: Any = None) -> Any:
        """The per-seed calibrated values (dots) with the mean and its interval (bar)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(3, 3))
        ax.scatter(np.zeros(self.n), self.values, color="0.5", zorder=2)
        ax.errorbar([0], [self.mean], yerr=[[self.mean - self.low], [self.high - self.mean]], fmt="o", color="C0",
                    capsize=4, zorder=3)
        ax.axhline(0, color="0.7", lw=0.8)
        ax.axhline(1, color="0.7", lw=0.8, ls="--")
        ax.set_xticks([0], [self.name], fontsize=8)
        ax.set_ylabel(f"calibrated (0 = random init, 1 = ceiling); {int(round(100 * self.confidence))}% t-interval")
        return ax.figure


def calibrate(scores: Sequence[float], baselines: Sequence[float] | float, confidence: float = 0.95,
              ceiling: float = 1.0, name: str = "score", *, argument: str = "scores") -> CalibratedScore:
    """Calibrate one score measured over seeds against the random-init baselines, with an interval over seeds.

    Args:
        scores: the score of each seed (``n >= 2``): a CKA, a matched-unit correlation, a probe accuracy.
        baselines: each seed's random-init score (paired with ``scores``: seed ``i``'s trained model against its
            own random-init twin), or one number for all seeds.
        confidence: two-sided level of the interval, in (0, 1).
        ceiling: the best possible score (1 for CKA, correlations and accuracies).
        name: label of the result.

    The interval is Student's t over the per-seed calibrated values, not a bootstrap: with the 2-5 seeds a zoo
    ships, a percentile bootstrap has at most ``C(2n-1, n)`` distinct resamples (10 for three seeds) and its
    interval is systematically too narrow, while the t-interval is exact for normal per-seed values and
    conservative enough for small ``n`` (it widens with ``t_{n-1}``). Fewer than two seeds give no interval
    and raise :class:`InputError`.
    """
    s = np.asarray(scores, dtype=float).reshape(-1)
    b = np.broadcast_to(np.asarray(baselines, dtype=float), s.shape).copy() if np.ndim(baselines) == 0 else \
        np.asarray(baselines, dtype=float).reshape(-1)
    if s.shape != b.shape:
        raise InputError(f"baselines: one per seed ({len(s)} scores) or one number, got {len(b)} baselines")
    if len(s) < 2:
        raise InputError(f"{argument}: an interval over seeds needs at least 2 seeds, got {len(s)}; train and "
                         f"compare more seeds (the zoo ships @seed0..2), or report the single calibrated value "
                         f"with calibrated_score(score, baseline)")
    if not (isinstance(confidence, (float, int)) and 0 < confidence < 1):
        raise InputError(f"confidence: a level in (0, 1) such as 0.95, got {confidence!r}")
    from scipy import stats

    values = np.asarray(calibrated_score(s, b, ceiling), dtype=float)
    mean = float(values.mean())
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return CalibratedScore(name, s, b, values, mean, mean - half, mean + half, float(confidence), float(ceiling))


__all__ = ["CalibratedScore", "Comparison", "calibrate", "calibrated_score", "FeatureMatchResult",
           "StitchResult", "StitchingLayer", "UnitMatch", "UniversalityStudyResult", "depth_pairs",
           "match_features", "match_units", "stitch", "unit_correlations", "universality_study"]
