"""Distributed alignment search (DAS): a learned orthogonal subspace per high-level variable.

Geiger, Wu, Potts, Icard & Goodman (2024), "Finding Alignments Between Interpretable Causal Variables and
Distributed Neural Representations" (CLeaR): instead of testing a fixed set of units, learn an orthogonal
rotation of a site's feature space ``R^d`` whose first ``k`` coordinates hold the variable. With ``Q``
``[d, k]`` the learned orthonormal basis (columns), a base activation ``a`` and a source activation ``s``,
the interchange intervention is ``a' = a + Q Q^T (s - a)`` (:class:`~interp_core.causal.Interchange`);
``Q`` is trained, with the model frozen, so that the intervened model outputs the **counterfactual label**
of each (base, source) pair — what the high-level model predicts with the variable taken from the source:

- categorical / binary variables: cross-entropy between the model's logits and the counterfactual class;
- continuous variables: mean squared error between a readout of the output (``readout=``, a metric
  ``output -> [N]``) and the counterfactual value.

``Q`` is ``W^T`` for a bias-free ``nn.Linear(d, k)`` whose weight is kept orthonormal by
``torch.nn.utils.parametrizations.orthogonal``. ``score`` is the interchange-intervention accuracy (IIA) on
held-out pairs. Baselines: :meth:`DAS.compare` reports the IIA of the DAS subspace, of a probe direction and
of random subspaces of the same dimension (several seeds), and the principal angles between the DAS
subspace and the probe direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..boundary import as_hooked, as_inputs, iter_batches
from ..errors import InputError, InputTypeError
from ..metrics import as_metric, logits_of
from ..progress import progress_bar
from ..results import Result
from .interchange import IIAResult, Interchange, _check_site, _interchange, _labels, _match, _result

__all__ = ["DAS", "DASComparison", "principal_angles", "subspace_cosine", "random_subspace"]


# ---------------------------------------------------------------------------------------------- geometry
def _basis(x: Any, argument: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.to(torch.float64)
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2 or t.shape[1] == 0:
        raise InputError(f"{argument}: expected a [d] direction or a [d, k] basis, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or float(t.abs().max()) == 0.0:
        raise InputError(f"{argument}: the basis is zero or has NaN / infinite entries; give a finite, non-zero one")
    q, _ = torch.linalg.qr(t)
    return q


def principal_angles(a: Any, b: Any) -> np.ndarray:
    """Principal angles (radians, ascending) between ``span(a)`` and ``span(b)`` (``[d]`` or ``[d, k]``).

    ``cos theta_i = sigma_i(Q_a^T Q_b)`` with ``Q`` orthonormal bases (Björck & Golub 1973); ``min(k_a, k_b)``
    angles, 0 for a shared direction, ``pi / 2`` for orthogonal ones.
    """
    qa, qb = _basis(a, "a"), _basis(b, "b")
    if qa.shape[0] != qb.shape[0]:
        raise InputError(f"a / b: bases live in different spaces (d={qa.shape[0]} vs d={qb.shape[0]})")
    s = torch.linalg.svdvals(qa.T @ qb).clamp(0.0, 1.0)
    return np.sort(np.arccos(s.numpy()))


def subspace_cosine(subspace: Any, direction: Any) -> float:
    """``|cos|`` of the angle between ``direction`` ``[d]`` and ``span(subspace)``: ``||Q^T u|| / ||u||``
    (1: the direction lies in the subspace, 0: orthogonal to it)."""
    return float(np.cos(principal_angles(subspace, direction)[0]))


def random_subspace(d: int, k: int, seed: int = 0) -> torch.Tensor:
    """A uniformly random ``k``-dimensional subspace of ``R^d`` as an orthonormal ``[d, k]`` basis (QR of a
    Gaussian matrix; Haar-distributed)."""
    if not (isinstance(d, int) and isinstance(k, int) and 1 <= k <= d):
        raise InputError(f"k: need 1 <= k <= d, got k={k!r}, d={d!r}")
    g = torch.Generator().manual_seed(int(seed))
    q, r = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return (q * torch.sign(r.diagonal())[None, :]).float()


# ---------------------------------------------------------------------------------------------- helpers
def _take(x: Any, idx: torch.Tensor, n: int) -> Any:
    """Rows ``idx`` of inputs holding ``n`` examples: each tensor is indexed along its first axis of size ``n``
    (dim 0 for ordinary inputs; dim 1 for a recurrent state ``[layers, batch, hidden]``)."""
    if isinstance(x, torch.Tensor):
        if x.dim() == 0:
            return x
        dim = next((i for i, s in enumerate(x.shape) if s == n), None)
        if dim is None:
            raise InputError(f"base: an input tensor of shape {tuple(x.shape)} has no axis of the batch size {n}; "
                             f"give inputs with one row per pair")
        return x.index_select(dim, idx.to(x.device))
    if isinstance(x, dict):
        return {k: _take(v, idx, n) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_take(v, idx, n) for v in x)
    return x


def _n_of(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    if isinstance(x, dict):
        return _n_of(next(iter(x.values())))
    if isinstance(x, tuple):
        return _n_of(x[0])
    raise InputTypeError(f"base: cannot tell the number of examples of a {type(x).__name__}")


def _source_acts(hm: Any, source: Any, site: str, batch_size: int | None) -> torch.Tensor:
    parts = []
    with torch.no_grad():
        for b in iter_batches(source, model=hm, batch_size=batch_size, sites=[site], argument="source"):
            _, cache = hm.run_with_cache(b.inputs, sites=[site])
            parts.append(cache[site])
    return torch.cat(parts)


def _targets(y: Any, n: int, argument: str = "target_labels") -> torch.Tensor:
    if y is None:
        raise InputError(f"{argument}: none given; pass the counterfactual label of each (base, source) pair")
    t = y.detach().cpu() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    if t.dim() != 1 or t.shape[0] != n:
        raise InputError(f"{argument}: expected {n} labels, one per (base, source) pair (shape [{n}]), got shape "
                         f"{tuple(t.shape)}")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise InputError(f"{argument}: has NaN or infinite values; give finite labels")
    return t


# ---------------------------------------------------------------------------------------------- results
@dataclass
class DASComparison(Result):
    """IIA of the DAS subspace beside its baselines, on the same held-out pairs.

    Attributes:
        das: IIA of the learned ``k``-dimensional subspace.
        random: IIA of random ``k``-dimensional subspaces, one per seed; ``random_mean`` / ``random_sd``.
        full: IIA of interchanging the whole site (``Q = I``), the ceiling of any subspace.
        probe: IIA of the probe direction's 1-d subspace (``None`` without a direction).
        probe_cosine: ``|cos|`` between the probe direction and the DAS subspace; ``probe_angles_deg``: the
            principal angles between them (degrees).
        config: site, ``k``, seeds.
    """

    das: float
    random: list[float]
    random_mean: float
    random_sd: float
    full: float
    probe: float | None
    probe_cosine: float | None
    probe_angles_deg: list[float] | None
    unchanged: float
    config: dict[str, Any] = field(default_factory=dict)

    def plot(self, ax: Any = None) -> Any:
        """Bars: IIA of the DAS subspace, the probe direction, random subspaces (mean ± sd) and the full site."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4, 3))
        names, vals, errs = ["DAS"], [self.das], [0.0]
        if self.probe is not None:
            names.append("probe")
            vals.append(self.probe)
            errs.append(0.0)
        names += ["random", "full"]
        vals += [self.random_mean, self.full]
        errs += [self.random_sd, 0.0]
        ax.bar(range(len(vals)), vals, yerr=errs, capsize=3, color=["C0", "C2", "C7", "C1"][-len(vals):])
        if math.isfinite(self.unchanged):
            ax.axhline(self.unchanged, ls=":", color="k", lw=1, label="no intervention")
        ax.set_xticks(range(len(vals)), names)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("IIA")
        title = f"{self.config.get('site')} (k={self.config.get('k')})"
        if self.probe_cosine is not None:
            title += f", |cos(probe, DAS)|={self.probe_cosine:.2f}"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        return ax


# ---------------------------------------------------------------------------------------------- DAS
class DAS:
    """Distributed alignment search (module docstring): learn an orthonormal ``[d, k]`` subspace of a site
    such that interchanging it makes the model output the counterfactual label.

    Args:
        k: dimension of the subspace.
        lr: Adam learning rate for the rotation.
        epochs: passes over the training pairs.
        batch_size: pairs per gradient step.
        seed: seeds the rotation's initialisation and the pair order.
        loss: ``"auto"`` (cross-entropy for integer targets, MSE for floating ones), ``"ce"`` or ``"mse"``.
        readout: for MSE, a metric ``output -> [N]`` (or a class index: that logit) read from the output;
            default: the output itself when it is ``[N]`` or ``[N, 1]``.
        positions, heads: restrict the interchange to these positions / heads of the site.
        train: run the model in train mode (default eval mode, flags restored).
        progress: a progress bar over epochs (``None``: only on a terminal).

    Learned attributes: ``subspace_`` ``[d, k]`` (orthonormal columns), ``site_``, ``n_features_in_`` (d),
    ``loss_``, ``loss_curve_`` (mean loss per epoch), ``n_pairs_``.
    """

    def __init__(self, k: int = 1, lr: float = 1e-2, epochs: int = 20, batch_size: int = 64, seed: int = 0,
                 loss: str = "auto", readout: Any = None, positions: Any = None, heads: Any = None,
                 train: bool = False, progress: bool | None = None):
        self.k = k
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self.loss = loss
        self.readout = readout
        self.positions = positions
        self.heads = heads
        self.train = train
        self.progress = progress

    def __repr__(self) -> str:
        return f"DAS(k={self.k}, lr={self.lr}, epochs={self.epochs}, batch_size={self.batch_size}, seed={self.seed})"

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> None:
        for name in ("k", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"{name}: a positive integer, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr: a positive learning rate, got {self.lr!r}")
        if self.loss not in ("auto", "ce", "mse"):
            raise InputError(f"loss: 'auto', 'ce' or 'mse', got {self.loss!r}")

    def _loss_kind(self, y: torch.Tensor) -> str:
        if self.loss != "auto":
            if self.loss == "ce" and y.is_floating_point():
                raise InputError("target_labels: loss='ce' needs integer class labels; give them as integers or "
                                 "use loss='mse' for a continuous variable")
            return self.loss
        return "mse" if y.is_floating_point() else "ce"

    def _readout(self) -> Callable[[Any], torch.Tensor]:
        if self.readout is not None:
            return as_metric(self.readout, argument="readout")

        def own(out: Any) -> torch.Tensor:
            z = logits_of(out)
            if z.dim() == 2 and z.shape[1] == 1:
                return z[:, 0]
            if z.dim() == 1:
                return z
            raise InputError(f"readout: the model's output has shape {tuple(z.shape)}; for a continuous variable "
                             f"give readout= (a metric output -> [N], e.g. interp_core.metrics.value())")
        return own

    def _check_fitted(self) -> None:
        if not hasattr(self, "subspace_"):
            from ..errors import NotFittedError

            raise NotFittedError("this DAS is not fitted yet; call fit(model, site, base, source, target_labels) "
                                 "first")

    # ------------------------------------------------------------------ fit
    def fit(self, model: Any, site: str, base: Any, source: Any, target_labels: Any) -> DAS:
        """Learn ``subspace_`` on ``N`` (base, source) pairs whose counterfactual labels are ``target_labels``.

        Args:
            model: any model the boundary accepts; its weights are never changed (only the rotation trains).
            site: the site to search.
            base, source: ``N`` inputs each (any accepted form), paired row by row.
            target_labels: ``[N]`` the label the high-level model predicts for each pair (integer classes, or
                floats for a continuous variable).
        """
        self._check_params()
        hm = as_hooked(model)
        if not isinstance(site, str):
            raise InputTypeError(f"site: expected one site name (str), got {type(site).__name__}")
        with hm.analysis(train=self.train):
            x, _ = as_inputs(base, model=hm, argument="base")
            site = _check_site(hm, site, x)
            n = _n_of(x)
            src = _source_acts(hm, source, site, None)
            if src.shape[0] != n:
                raise InputError(f"base / source: {n} base examples but {src.shape[0]} source examples; DAS "
                                 f"pairs them row by row, so give as many of each")
            y = _targets(target_labels, n)
            kind = self._loss_kind(y)
            readout = self._readout() if kind == "mse" else None
            s = hm.sites[site]
            axes = s.axes
            if axes is None:
                raise InputError(f"site '{site}': its axes are unknown; give the adapter axes for it")
            d = math.prod(src.shape[i] for i, a in enumerate(axes) if a in ("head", "feature"))
            if self.k > d:
                raise InputError(f"k: {self.k} is more than the site's {d} features; give k <= {d}")
            rot = nn.Linear(d, self.k, bias=False)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                nn.init.normal_(rot.weight)  # the orthogonal map of a Gaussian matrix: a random subspace
                nn.utils.parametrizations.orthogonal(rot)
            rot = rot.to(device=src.device, dtype=src.dtype)
            opt = torch.optim.Adam(rot.parameters(), lr=self.lr)
            params = list(rot.parameters())
            g = torch.Generator().manual_seed(self.seed)
            curve: list[float] = []
            bar = progress_bar(range(self.epochs), desc="DAS", unit="epoch", leave=False,
                               progress=self.progress)
            iv = Interchange(None, None, positions=self.positions, heads=self.heads)
            for _ in bar:
                perm = torch.randperm(n, generator=g)
                total, seen = 0.0, 0
                for lo in range(0, n, self.batch_size):
                    idx = perm[lo:lo + self.batch_size]
                    with torch.enable_grad():
                        iv.subspace = rot.weight.T  # [d, k], orthonormal columns, in the autograd graph
                        iv.source = src.index_select(0, idx.to(src.device))
                        out = hm.run_with_interventions(_take(x, idx, n), {site: iv})
                        yb = y[idx].to(src.device)
                        if kind == "ce":
                            loss = F.cross_entropy(logits_of(out).float(), yb.long())
                        else:
                            loss = F.mse_loss(readout(out).float(), yb.float())
                        grads = torch.autograd.grad(loss, params)
                    for p, gr in zip(params, grads):
                        p.grad = gr
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    total += float(loss.detach()) * len(idx)
                    seen += len(idx)
                curve.append(total / seen)
                bar.set_postfix(loss=f"{curve[-1]:.4f}")
            with torch.no_grad():
                q = rot.weight.T.detach().clone()
        self.subspace_ = q
        self.site_ = site
        self.n_features_in_ = d
        self.loss_kind_ = kind
        self.loss_curve_ = curve
        self.loss_ = curve[-1]
        self.n_pairs_ = n
        return self

    # ------------------------------------------------------------------ use
    def intervention(self, source: Any, calls: int | Sequence[int] | None = None) -> Interchange:
        """The fitted interchange as an intervention: ``{site_: das.intervention(source_acts)}`` for
        ``HookedModel.intervene`` or a closed-loop rollout (``calls=`` picks forward calls, e.g. a time step)."""
        self._check_fitted()
        return Interchange(source, self.subspace_, positions=self.positions, heads=self.heads, calls=calls)

    def predict(self, model: Any, base: Any, source: Any) -> torch.Tensor:
        """The intervened model's labels ``[N]`` (argmax of the logits; the readout for a continuous variable)."""
        self._check_fitted()
        hm = as_hooked(model)
        out = _interchange(hm, base, source, self.site_, self.subspace_, self.positions, self.heads, None, self.train)
        return self._predict_fn()(out)

    def _predict_fn(self) -> Callable[[Any], torch.Tensor]:
        if self.loss_kind_ == "mse":
            read = self._readout()
            return lambda out: read(out).detach()
        return lambda out: logits_of(out).argmax(-1)

    def _iia(self, hm: Any, base: Any, source: Any, target_labels: Any, subspace: Any, tolerance: float | None,
             level: float, k: Any) -> IIAResult:
        out, clean = _interchange(hm, base, source, self.site_, subspace, self.positions, self.heads, None,
                                  self.train, clean=True)
        pf = self._predict_fn()
        pred = pf(out).cpu().numpy()
        pred_clean = pf(clean).cpu().numpy()
        expected = _labels(_targets(target_labels, pred.shape[0]).numpy(), pred.shape[0], "target_labels")
        if self.loss_kind_ == "mse" and tolerance is None:
            raise InputError("tolerance: this DAS fits a continuous variable; give tolerance= (a counterfactual "
                             "readout within it of the target counts as correct)")
        ok, ok_clean = _match(pred, expected, tolerance), _match(pred_clean, expected, tolerance)
        config = {"site": self.site_, "k": k, "positions": self.positions, "heads": self.heads, "level": level,
                  "tolerance": tolerance, "high_level": "target_labels"}
        return _result(ok, ok_clean, pred, expected, level, tolerance, config)

    def score(self, model: Any, base: Any, source: Any, target_labels: Any, *, tolerance: float | None = None,
              level: float = 0.95) -> IIAResult:
        """Interchange-intervention accuracy of the learned subspace on (held-out) pairs: the share whose
        intervened prediction equals ``target_labels`` (within ``tolerance`` for a continuous variable)."""
        self._check_fitted()
        hm = as_hooked(model)
        return self._iia(hm, base, source, target_labels, self.subspace_, tolerance, level, self.k)

    def compare(self, model: Any, base: Any, source: Any, target_labels: Any, probe_direction: Any = None, *,
                seeds: Sequence[int] = (0, 1, 2, 3, 4), tolerance: float | None = None,
                level: float = 0.95) -> DASComparison:
        """IIA of the DAS subspace, of ``probe_direction`` (a ``[d]`` direction, e.g. a linear probe's weight
        vector), of random ``k``-dimensional subspaces (one per seed) and of the full site, on the same pairs,
        and the principal angles between the probe direction and the DAS subspace."""
        self._check_fitted()
        hm = as_hooked(model)
        seeds = list(seeds)
        if not seeds:
            raise InputError("seeds: give at least one seed for the random-subspace baseline")
        das = self._iia(hm, base, source, target_labels, self.subspace_, tolerance, level, self.k)
        rand = [self._iia(hm, base, source, target_labels, random_subspace(self.n_features_in_, self.k, s),
                          tolerance, level, self.k).accuracy for s in seeds]
        full = self._iia(hm, base, source, target_labels, None, tolerance, level, "full").accuracy
        probe = cos = angles = None
        if probe_direction is not None:
            u = probe_direction.detach() if isinstance(probe_direction, torch.Tensor) else \
                torch.as_tensor(np.asarray(probe_direction))
            u = u.reshape(-1).float()
            if u.numel() != self.n_features_in_:
                raise InputError(f"probe_direction: {u.numel()} entries, expected {self.n_features_in_} (the site's "
                                 f"feature size)")
            probe = self._iia(hm, base, source, target_labels, u, tolerance, level, 1).accuracy
            cos = subspace_cosine(self.subspace_, u)
            angles = np.degrees(principal_angles(self.subspace_, u)).tolist()
        config = {"site": self.site_, "k": self.k, "seeds": seeds, "level": level, "n": das.n}
        return DASComparison(das.accuracy, rand, float(np.mean(rand)), float(np.std(rand)), full, probe, cos,
                             angles, das.unchanged, config)
