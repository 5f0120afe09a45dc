"""Probe sweeps (``interp_core.probes``): one probe per site, fitted together, with control tasks.

:func:`probe_sites` enters through the boundary (``as_hooked``, ``iter_batches``, ``hm.analysis()``),
collects the sites' feature rows, splits the *inputs* (whole groups) into train and test, builds the control
labels by input type (:func:`~interp_core.probes.control_labels`, the suite's one definition) and fits every
task and control probe in one batch with :func:`fit_and_score` — the same routine ``rl.worldmodel.probe``
runs for its sites, observation baseline, random-init twin and control task.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import clone, is_classifier

from ..boundary import as_hooked, iter_batches
from ..errors import InputError
from ..progress import progress_bar
from ..results import Result, save_json
from .base import ArrayLike, as_numpy, to_numpy_1d
from .controls import control_labels, input_types, train_test_split_by_group
from .linear import LinearProbe, fit_many

log = logging.getLogger(__name__)

Job = tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]  # X_train, y_train, X_test, y_test


def default_probe() -> LinearProbe:
    """The sweep's probe: ``LinearProbe(kind="logistic", tol=3e-4, constant_features="ignore")`` (a sweep
    compares held-out accuracies; in the first version of ``benchmarks/probes.py``, ``tol=3e-4`` reached the
    accuracy of the ``tol=1e-4`` fit within 0.2 points)."""
    return LinearProbe(kind="logistic", tol=3e-4, constant_features="ignore")


def fit_and_score(probe: Any, jobs: Mapping[Any, Job], progress: bool | None = False
                  ) -> dict[Any, tuple[Any, float, float]]:
    """Fit a clone of ``probe`` per job and score it: ``{key: (fitted probe or None, train score, test score)}``.

    Linear probes are fitted together by :func:`~interp_core.probes.fit_many` (batched L-BFGS, closed forms);
    other estimators one by one. A classification job whose training labels hold one class has no probe to
    fit: it predicts that class (``None`` in place of the probe, scores = the rate of that class).
    """
    out: dict[Any, tuple[Any, float, float]] = {}
    todo: list[tuple[Any, Any, Job]] = []
    clf = is_classifier(probe)
    for key, (Xtr, ytr, Xte, yte) in jobs.items():
        if clf and np.unique(ytr).size < 2:
            only = ytr[0] if len(ytr) else None
            out[key] = (None, 1.0, float(np.mean(yte == only)) if len(yte) else float("nan"))
            continue
        todo.append((key, clone(probe), (Xtr, ytr, Xte, yte)))
    if todo and isinstance(probe, LinearProbe):
        fit_many([t[1] for t in todo], [t[2][0] for t in todo], [t[2][1] for t in todo], progress=progress)
    else:
        for _, p, (Xtr, ytr, _, _) in progress_bar(todo, desc="probes", progress=progress,
                                                   leave=False):
            p.fit(Xtr, ytr)
    for key, p, (Xtr, ytr, Xte, yte) in todo:
        out[key] = (p, float(p.score(Xtr, ytr)), float(p.score(Xte, yte)) if len(yte) else float("nan"))
    return out


@dataclass
class ProbeSweepResult(Result):
    """One probe per site: a tidy table and the fitted probes.

    ``table`` rows: ``site``, ``index`` (order of the sweep, e.g. the layer), ``metric`` ("accuracy" or
    "r2"), ``train_score``, ``test_score``, ``control_score``, ``selectivity`` (test - control; ``None``
    without control), ``n_train``, ``n_test``, ``d``. ``probes[site]`` is the probe fitted on the training
    split (its ``direction_`` lives in that site's feature space; with control it also carries
    ``task_score_``, ``control_score_``, ``selectivity_``).
    """

    table: list[dict[str, Any]]
    probes: dict[str, Any] = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        return [r["site"] for r in self.table]

    def column(self, name: str) -> list[Any]:
        return [r[name] for r in self.table]

    def best_site(self, by: str = "test_score") -> str:
        rows = [r for r in self.table if r[by] is not None]
        if not rows:
            raise InputError(f"by: no site has a value for {by!r}; use a column of the table such as "
                             f"'test_score' or 'selectivity'")
        return max(rows, key=lambda r: r[by])["site"]

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "config": self.config}

    def save(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON, atomically."""
        return save_json(self.to_dict(), path)

    def plot(self, ax: Any = None) -> Any:
        """Test score, control score and selectivity per site (in sweep order); returns the figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(self.table) + 2), 3.5))
        else:
            fig = ax.figure
        x = np.arange(len(self.table))
        metric = self.table[0]["metric"] if self.table else "score"
        ax.plot(x, self.column("test_score"), "o-", label=f"test {metric}")
        ax.plot(x, self.column("train_score"), ".:", color="grey", label=f"train {metric}")
        if self.table and all(r["control_score"] is not None for r in self.table):
            ax.plot(x, self.column("control_score"), "s--", label=f"control {metric}")
            ax.plot(x, self.column("selectivity"), "^-", label="selectivity")
        ax.set_xticks(x)
        ax.set_xticklabels(self.sites, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel(metric)
        ax.set_title("probe sweep")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def _collect(model: Any, data: Any, labels: Any, sites: Sequence[str] | str | None, pool: Any,
             batch_size: int | None, want_inputs: bool, train: bool, progress: bool | None
             ) -> tuple[list[str], dict[str, torch.Tensor], np.ndarray | None, torch.Tensor | None]:
    """Run the model over ``data`` through the boundary: ``(sites, {site: [rows, d]}, labels, inputs)``."""
    hm = as_hooked(model)
    names = list([sites] if isinstance(sites, str) else (sites or hm.default_sites))
    if not names:
        raise InputError("sites: no sites to probe; pass sites=[...] (HookedModel.sites lists them)")
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in names}
    ys: list[torch.Tensor | None] = []
    raw: list[torch.Tensor] = []
    batches = iter_batches(data, labels, model=hm, batch_size=batch_size, sites=names)
    with hm.analysis(train=train), torch.no_grad():
        for batch in progress_bar(batches, desc="probe_sites: activations", progress=progress,
                                  leave=False):
            _, cache = hm.run_with_cache(batch.inputs, sites=names, pool=pool)
            for s in names:
                parts[s].append(cache.features(s).detach())
            ys.append(batch.labels)
            if want_inputs:
                x = batch.inputs
                if isinstance(x, torch.Tensor):
                    raw.append(x.reshape(len(x), -1).detach().cpu())
                else:  # positional / keyword inputs: identity of the first tensor argument
                    first = next((v for v in (x.values() if isinstance(x, Mapping) else x)
                                  if isinstance(v, torch.Tensor)), None)
                    raw.append(first.reshape(len(first), -1).detach().cpu() if first is not None
                               else torch.arange(batch.size)[:, None] + sum(len(r) for r in raw))
    feats = {s: torch.cat(v) for s, v in parts.items()}
    y = None if any(v is None for v in ys) else as_numpy(torch.cat(ys))
    return names, feats, y, (torch.cat(raw) if raw else None)


def probe_sites(model: Any, data: Any, labels: ArrayLike | None = None, sites: Sequence[str] | str | None = None,
                pool: Any = "mean", probe: Any = None, groups: ArrayLike | None = None, control: bool = True,
                control_types: ArrayLike | None = None, test_size: float = 0.2, seed: int = 0,
                batch_size: int | None = None, *, train: bool = False,
                progress: bool | None = None) -> ProbeSweepResult:
    """Fit one probe per site on the model's activations and compare them (held-out, with control tasks).

    Args:
        model: a :class:`~interp_core.hooked.HookedModel` or a module (wrapped by ``as_hooked``).
        data: the inputs in any form the boundary accepts (tensor, numpy array, ``(x, y)`` pair, Dataset,
            DataLoader, iterable of batches), or an already collected ``ActivationCache`` /
            ``ActivationStore`` holding the sites (then ``labels`` are required).
        labels: ``[N]`` one per input (repeated over positions for unpooled sites); default: the labels the
            data carries (``(x, y)`` pairs).
        sites: site names (default: the model's default sites).
        pool: how positions are reduced (``"mean"``, ``"cls"``, ...; ``None`` folds positions into rows).
        probe: the estimator to clone per site (default :func:`default_probe`).
        groups: ``[N]`` group per input for the held-out split (default: each input its own group, so the
            positions of one input stay on one side).
        control: also fit a control task (Hewitt & Liang 2019) per site and report selectivity.
        control_types: ``[N]`` input type per input for the control task (default: ``groups`` when given,
            else identical inputs share a type; :mod:`~interp_core.probes.controls`).
        batch_size: inputs per forward (default: chosen from the sites' activation sizes).
        train: run the model in train mode (default eval mode, flags and buffers restored).
        progress: progress bars over batches and probes (``None``: only on a terminal).
    """
    probe = probe if probe is not None else default_probe()
    if not hasattr(probe, "fit") or not hasattr(probe, "score"):
        raise InputError(f"probe: expected an estimator with fit and score, got {type(probe).__name__}")
    input_rows = None
    if hasattr(data, "features") and hasattr(data, "site_names") and not isinstance(data, torch.Tensor):
        names = list([sites] if isinstance(sites, str) else (sites or data.site_names))
        feats = {s: data.features(s, pool=pool) for s in names}
        if labels is None:
            raise InputError("labels: a collected cache or store carries no labels here; pass labels=[N]")
        y_in = as_numpy(labels)
    else:
        want_inputs = control and control_types is None and groups is None
        names, feats, y_data, input_rows = _collect(model, data, labels, sites, pool, batch_size, want_inputs,
                                                    train, progress)
        if y_data is None:
            raise InputError("labels: none given and the data carries none; pass labels=[N] or (x, y) data")
        y_in = y_data
    n_inputs = len(y_in)
    if is_classifier(probe) and np.unique(y_in).size < 2:
        raise InputError(f"labels: a single class ({y_in[0]!r}) for all {n_inputs} inputs; a classification probe "
                         f"needs at least two classes (check the labels, or pass a regression probe)")
    fits = {}
    for s, X in feats.items():
        if X.shape[0] % n_inputs:
            raise InputError(f"site '{s}' gives {X.shape[0]} feature rows, not a multiple of the {n_inputs} labels; "
                             f"pool the site or give one label per row")
        fits[s] = X.shape[0] // n_inputs
    g_in = np.arange(n_inputs) if groups is None else to_numpy_1d(groups, "groups")
    if len(g_in) != n_inputs:
        raise InputError(f"groups has {len(g_in)} entries for {n_inputs} inputs")
    yc_in = None
    if control:
        if control_types is not None or groups is not None:
            types = control_types if control_types is not None else g_in
            if len(types) != n_inputs:
                raise InputError(f"control_types has {len(types)} entries for {n_inputs} inputs")
            yc_in = control_labels(y_in, types, seed=seed)
        elif input_rows is not None:
            yc_in = control_labels(y_in, inputs=input_rows, seed=seed)
        else:  # a collected cache: the inputs are not known, each input is its own type
            yc_in = control_labels(y_in, np.arange(n_inputs), seed=seed)
    # split at the level of inputs (whole groups), then expand to rows
    _, te_in = train_test_split_by_group(n_inputs, g_in, test_size, seed)
    test_in = np.zeros(n_inputs, dtype=bool)
    test_in[te_in] = True
    jobs: dict[tuple[str, str], Job] = {}
    for s in names:
        rep = fits[s]
        te_rows = np.repeat(test_in, rep)
        X = feats[s]
        tr_t = torch.as_tensor(~te_rows, device=X.device)
        te_t = torch.as_tensor(te_rows, device=X.device)
        y_rows = np.repeat(y_in, rep, axis=0)
        X_tr, X_te = X[tr_t], X[te_t]  # one tensor for task and control: fit_many solves them jointly
        jobs[(s, "task")] = (X_tr, y_rows[~te_rows], X_te, y_rows[te_rows])
        if control:
            yc_rows = np.repeat(yc_in, rep, axis=0)
            jobs[(s, "control")] = (X_tr, yc_rows[~te_rows], X_te, yc_rows[te_rows])
    done = fit_and_score(probe, jobs, progress=progress)
    metric = "accuracy" if is_classifier(probe) else "r2"
    table, probes = [], {}
    for i, s in enumerate(names):
        p, train_score, test_score = done[(s, "task")]
        Xtr, ytr, _, yte = jobs[(s, "task")]
        row = {"site": s, "index": i, "metric": metric, "train_score": train_score, "test_score": test_score,
               "control_score": None, "selectivity": None, "n_train": int(len(ytr)), "n_test": int(len(yte)),
               "d": int(Xtr.shape[1])}
        if control:
            row["control_score"] = done[(s, "control")][2]
            row["selectivity"] = row["test_score"] - row["control_score"]
            if p is not None:
                p.task_score_, p.control_score_ = row["test_score"], row["control_score"]
                p.selectivity_ = row["selectivity"]
        table.append(row)
        probes[s] = p
    config = {"sites": names, "pool": pool if not callable(pool) else repr(pool), "probe": repr(probe),
              "control": control, "control_types": "given" if control_types is not None else
              ("groups" if groups is not None else "identical inputs"), "test_size": test_size, "seed": seed,
              "n_inputs": n_inputs, "train_mode": train}
    return ProbeSweepResult(table=table, probes=probes, config=config)


__all__ = ["ProbeSweepResult", "default_probe", "fit_and_score", "input_types", "probe_sites"]
