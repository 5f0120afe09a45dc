"""Labels against ground truth: for every SAE latent (or any unit), the known variable it tracks best.

Given latent activations ``F [N, n]`` (``N`` examples: images, time steps, ...; ``n`` latents) and known
variables ``{name: v [N]}`` (image factors of the shapes data, the digit class, world variables of an RL env),
:func:`label_latents` scores every latent against every variable:

- a **categorical** (or binary) variable is split one-vs-rest into indicators ``1{v = c}``, one per value
  ``c``; the score is the AUROC of the latent's activation for that indicator (Mann-Whitney U with average
  ranks for ties, so a latent that is 0 on most rows is handled exactly as
  ``sklearn.metrics.roc_auc_score``); AUROC 1 means the latent is larger on every row with ``v = c`` than on
  every other row;
- a **continuous** variable gets the Pearson correlation ``r`` of the latent with it.

To choose one label per latent on a common scale the *strength* of a label is ``2 AUROC - 1`` (Somers' D, a
rank correlation; 0 for chance, 1 for a perfect indicator) or ``|r|``; each latent's label is the
``(variable, value)`` of highest strength. Kinds are inferred (booleans, integers with at most
``max_categories`` values and strings are categorical; other floats continuous) unless given by ``kinds``.

**Permutation baseline.** The variables' rows are shuffled ``n_permutations`` times (the same permutations for
every latent, keeping the joint distribution of the variables) and the best strength over all labels is
recomputed: ``baseline [n]`` is its 95th percentile per latent and ``p_value [n]`` the share of permutations at
least as strong as the observed best (``(1 + #) / (1 + P)``), the null of a latent unrelated to every variable
with the same multiple-comparison search. A label counts as *significant* when ``p_value <= alpha``.

:func:`latent_activations` collects ``F`` for a model through the latents-as-sites mechanism
(:func:`~interp_core.features.latents.with_latents`), pooled per example (``pool="max"`` by default: an image
or state is as active as its most active cell), so it lines up with per-example variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from ..errors import InputError, InputTypeError
from ..results import Result

__all__ = ["LatentLabels", "label_latents", "latent_activations"]

KINDS = ("categorical", "continuous")


def _as_matrix(F: Any, argument: str) -> np.ndarray:
    if isinstance(F, torch.Tensor):
        F = F.detach().cpu().double().numpy()
    if not isinstance(F, np.ndarray):
        raise InputTypeError(f"{argument}: expected latent activations [N, n] as a tensor or array, got "
                             f"{type(F).__name__}")
    if F.ndim != 2 or F.shape[0] < 2 or F.shape[1] < 1:
        raise InputError(f"{argument}: expected latent activations [N, n] with N >= 2 examples, got shape "
                         f"{F.shape}; pool positions per example (latent_activations(..., pool='max'))")
    F = F.astype(np.float64, copy=False)
    if not np.isfinite(F).all():
        raise InputError(f"{argument}: latent activations hold NaN or infinite values")
    return F


def _as_variable(name: str, v: Any, n_rows: int) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    v = np.asarray(v)
    if v.ndim != 1 or v.shape[0] != n_rows:
        raise InputError(f"variables[{name!r}]: expected one value per example, shape [{n_rows}], got {v.shape}")
    if v.dtype.kind == "f" and not np.isfinite(v).all():
        raise InputError(f"variables[{name!r}]: holds NaN or infinite values; drop those examples first")
    return v


def _infer_kind(v: np.ndarray, max_categories: int) -> str:
    if v.dtype.kind in "bUSO":
        return "categorical"
    if v.dtype.kind in "iu":
        return "categorical" if np.unique(v).size <= max_categories else "continuous"
    return "categorical" if np.unique(v).size <= 2 else "continuous"


def _ranks(F: np.ndarray) -> np.ndarray:
    return rankdata(F, axis=0, method="average")


def _auroc(R: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """AUROC ``[n, L]`` of each column of ``F`` (given as its average ranks ``R [N, n]``) for each indicator
    column of ``Y [N, L]`` (Mann-Whitney: ``(sum of positive ranks - P (P + 1) / 2) / (P Q)``)."""
    pos = Y.sum(0)
    neg = Y.shape[0] - pos
    U = R.T @ Y - pos * (pos + 1) / 2
    return U / (pos * neg)


def _standardise(X: np.ndarray) -> np.ndarray:
    Xc = X - X.mean(0)
    s = np.sqrt((Xc ** 2).sum(0))
    return Xc / np.where(s == 0, 1.0, s)


@dataclass
class _Design:
    """The label columns for all variables: indicators (categorical) and standardised values (continuous)."""

    names: list[tuple[str, Any, str]]  # (variable, value or None, kind)
    Y_cat: np.ndarray  # [N, Lc] indicators
    Y_con: np.ndarray  # [N, Lr] raw values


def _design(variables: Mapping[str, np.ndarray], kinds: Mapping[str, str]) -> _Design:
    names_cat, cols_cat, names_con, cols_con = [], [], [], []
    for name, v in variables.items():
        if kinds[name] == "categorical":
            values = np.unique(v)
            if values.size < 2:
                continue  # constant: nothing to track
            for c in values:
                names_cat.append((name, c.item() if hasattr(c, "item") else c, "categorical"))
                cols_cat.append((v == c).astype(np.float64))
        else:
            if np.ptp(v.astype(np.float64)) == 0:
                continue
            names_con.append((name, None, "continuous"))
            cols_con.append(v.astype(np.float64))
    n = len(next(iter(variables.values())))
    Y_cat = np.stack(cols_cat, 1) if cols_cat else np.zeros((n, 0))
    Y_con = np.stack(cols_con, 1) if cols_con else np.zeros((n, 0))
    return _Design(names_cat + names_con, Y_cat, Y_con)


def _scores(R: np.ndarray, Z: np.ndarray, des: _Design, perm: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """``(score [n, L], strength [n, L])`` with the variables' rows permuted by ``perm``."""
    Yc = des.Y_cat if perm is None else des.Y_cat[perm]
    Yr = des.Y_con if perm is None else des.Y_con[perm]
    parts_s, parts_t = [], []
    if Yc.shape[1]:
        a = _auroc(R, Yc)
        parts_s.append(a)
        parts_t.append(2 * a - 1)
    if Yr.shape[1]:
        r = Z.T @ _standardise(Yr)
        parts_s.append(r)
        parts_t.append(np.abs(r))
    return np.concatenate(parts_s, 1), np.concatenate(parts_t, 1)


@dataclass
class LatentLabels(Result):
    """Each latent's best ground-truth label, per site.

    For every site: ``labels[site]`` is a list (one entry per latent) of dicts with ``latent``, ``variable``,
    ``value`` (the class for a categorical variable, ``None`` for a continuous one), ``measure`` (``"auroc"``
    or ``"corr"``), ``score`` (the AUROC or ``r``), ``strength`` (``2 AUROC - 1`` or ``|r|``), ``baseline``
    (95th percentile of the permuted best strength), ``p_value``, ``significant`` and ``firing_rate`` (share
    of examples where the latent is not 0). ``scores[site]`` is the full ``[n, L]`` score matrix over the
    labels ``label_names`` (``(variable, value)``). Definitions in the module docstring.
    """

    labels: dict
    scores: dict
    label_names: list
    n_examples: int
    config: dict = field(default_factory=dict)

    def table(self, top: int | None = 10, significant_only: bool = False) -> list[dict[str, Any]]:
        """The ``top`` best-labelled latents of each site (highest strength first), one row per latent with
        the site's name added; ``top=None`` keeps all."""
        rows = []
        for site, entries in self.labels.items():
            keep = [e for e in entries if e["significant"] or not significant_only]
            keep = sorted(keep, key=lambda e: -e["strength"])
            rows.extend({"site": site, **e} for e in (keep if top is None else keep[:top]))
        return rows

    def plot(self, top: int = 10, ax: Any = None) -> Any:
        """Bars of the best labels' strength per site beside their permutation baselines."""
        import matplotlib.pyplot as plt

        rows = self.table(top)
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(rows) + 1), 3.2))
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["strength"] for r in rows], 0.4, label="latent")
        ax.bar(x + 0.2, [r["baseline"] for r in rows], 0.4, color="0.6", label="permutation 95%")
        names = [f"{r['site']}:{r['latent']}\n{r['variable']}" + ("" if r["value"] is None else f"={r['value']}")
                 for r in rows]
        ax.set_xticks(x, names, rotation=90, fontsize=7)
        ax.set_ylabel("strength (2 AUROC - 1 or |r|)")
        ax.legend(fontsize=7)
        return ax.figure


def label_latents(latents: Any, variables: Mapping[str, Any], *, kinds: Mapping[str, str] | None = None,
                  n_permutations: int = 200, alpha: float = 0.01, max_categories: int = 20,
                  seed: int = 0) -> LatentLabels:
    """Label every latent with the known variable (and value) it tracks best, with a permutation baseline.

    Args:
        latents: activations ``[N, n]`` (tensor or array), or ``{site: [N, n]}`` for several sites on the
            same ``N`` examples (:func:`latent_activations` gives this).
        variables: ``{name: values [N]}``: known per-example variables (digit class, shape factors, world
            variables of a rollout, ...).
        kinds: ``{name: "categorical" | "continuous"}`` where the inferred kind is not wanted.
        n_permutations: shuffles of the variables for the baseline (0: no baseline, ``p_value`` NaN).
        alpha: significance level for ``significant``.
        max_categories: integer variables with more distinct values are treated as continuous.
        seed: the permutations' seed.

    Returns:
        :class:`LatentLabels` (definitions in the module docstring).
    """
    per_site = dict(latents) if isinstance(latents, Mapping) else {"latents": latents}
    if not per_site:
        raise InputError("latents: an empty mapping; give {site: activations [N, n]}")
    mats = {site: _as_matrix(F, f"latents[{site!r}]" if isinstance(latents, Mapping) else "latents")
            for site, F in per_site.items()}
    sizes = {F.shape[0] for F in mats.values()}
    if len(sizes) != 1:
        raise InputError(f"latents: every site needs the same examples, got row counts "
                         f"{ {s: F.shape[0] for s, F in mats.items()} }")
    n_rows = sizes.pop()
    if not isinstance(variables, Mapping) or not variables:
        raise InputTypeError("variables: expected a non-empty mapping {name: values [N]}")
    vs = {str(k): _as_variable(str(k), v, n_rows) for k, v in variables.items()}
    kinds = dict(kinds or {})
    for k, kind in kinds.items():
        if k not in vs:
            raise InputError(f"kinds: {k!r} is not one of the variables {sorted(vs)}")
        if kind not in KINDS:
            raise InputError(f"kinds[{k!r}]: must be one of {KINDS}, got {kind!r}")
    for k, v in vs.items():
        kinds.setdefault(k, _infer_kind(v, max_categories))
        if kinds[k] == "continuous" and v.dtype.kind not in "biuf":
            raise InputError(f"kinds[{k!r}]: a continuous variable needs numbers, got dtype {v.dtype}")
    if not isinstance(n_permutations, (int, np.integer)) or n_permutations < 0:
        raise InputError(f"n_permutations: must be an integer >= 0, got {n_permutations!r}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha: must be in (0, 1), got {alpha!r}")
    des = _design(vs, kinds)
    if not des.names:
        raise InputError("variables: every variable is constant on these examples; nothing to label")
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n_rows) for _ in range(n_permutations)]
    labels, scores = {}, {}
    for site, F in mats.items():
        R, Z = _ranks(F), _standardise(F)
        score, strength = _scores(R, Z, des)
        best = strength.argmax(1)
        best_strength = strength[np.arange(F.shape[1]), best]
        if perms:
            null = np.stack([_scores(R, Z, des, p)[1].max(1) for p in perms], 1)  # [n, P]
            p_value = (1 + (null >= best_strength[:, None] - 1e-12).sum(1)) / (1 + len(perms))
            baseline = np.quantile(null, 0.95, axis=1)
        else:
            p_value = np.full(F.shape[1], np.nan)
            baseline = np.full(F.shape[1], np.nan)
        firing = (F != 0).mean(0)
        entries = []
        for i in range(F.shape[1]):
            var, value, kind = des.names[best[i]]
            entries.append({"latent": i, "variable": var, "value": value,
                            "measure": "auroc" if kind == "categorical" else "corr",
                            "score": float(score[i, best[i]]), "strength": float(best_strength[i]),
                            "baseline": float(baseline[i]), "p_value": float(p_value[i]),
                            "significant": bool(p_value[i] <= alpha), "firing_rate": float(firing[i])})
        labels[site] = entries
        scores[site] = score
    return LatentLabels(labels=labels, scores=scores, label_names=[(v, c) for v, c, _ in des.names],
                        n_examples=n_rows, config={"kinds": kinds, "n_permutations": int(n_permutations),
                                                   "alpha": alpha, "seed": seed})


def latent_activations(model: Any, saes: Mapping[str, Any], data: Any, *, pool: Any = "max",
                       batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """``{site: F [N, n]}``: each SAE's latents over ``data``, pooled per example (``pool``: ``"max"``,
    ``"mean"``, a position, or ``None`` for sites without positions), read through the virtual site
    ``<site>.latents`` (:func:`~interp_core.features.latents.with_latents`) in eval mode."""
    from ..boundary import iter_batches
    from .latents import with_latents

    hm = with_latents(model, saes)
    names = [s + ".latents" for s in saes]
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in saes}
    with hm.analysis():
        for b in iter_batches(data, model=hm, batch_size=batch_size, sites=names, argument="data"):
            _, cache = hm.run_with_cache(b.inputs, sites=names, pool=pool)
            for s in saes:
                parts[s].append(cache.features(s + ".latents").detach().cpu())
    return {s: torch.cat(p) for s, p in parts.items()}
