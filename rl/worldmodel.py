"""World-model probes with controls, and their causal check (``rl.worldmodel``).

:func:`probe` answers "does this layer encode world variable V, beyond what the observation already shows?"
For every site x variable (x steps ahead, k = 0..K) it fits a linear probe on rollouts of the agent and
reports, on **held-out episodes** (the split is by episode, never by step):

- ``score`` — accuracy (categorical variables, and ordinal ones with few levels) or R^2 (continuous);
- ``random_init`` — the same probe on the same site of the architecture's **random-init twin**, run on the
  same observation sequences (what the architecture gives for free; a random recurrent net keeps some
  memory);
- ``obs_baseline`` — the same probe on the raw observation (the ``obs`` site): what needs no memory or
  world model at all;
- ``control`` / ``selectivity`` — Hewitt & Liang (2019, "Designing and Interpreting Probes with Control
  Tasks"): the probe refitted on control labels, ``selectivity = score - control``. The control task is the
  suite's one definition (``interp_core.probes.control_labels``): each input *type* — here each distinct
  observation, the policy's input — gets the label of a random row, the same for every site;
- ``chance`` — majority-class accuracy on the test rows (0 for R^2);
- ``visible_rate`` — fraction of probed rows where the env marks the variable visible in the observation
  (0 for future values, k >= 1: they are never in the current observation).

and a ``verdict``:

- ``"constant on these rows (nothing to probe)"`` — the variable takes one value on the probed rows;
- ``"not evidence (visible in observation)"`` — the variable is visible on most probed rows;
- ``"not decodable"`` — the score is within ``margin`` of chance (for accuracies, ``margin`` widens to twice
  the binomial standard error of the held-out rows when they are few: a difference the test set cannot
  resolve is no finding);
- ``"not evidence (decodable from observation)"`` — the observation probe does as well (within ``margin``);
- ``"evidence of memory, not learned (random-init twin decodes it too)"`` — hidden from the observation and
  decoded above the observation baseline, so the site carries information over time, but the untrained
  twin does as well (in a small deterministic task a random recurrent net keeps the cue too): the
  information is there by architecture, and only the causal check can say whether the agent uses it;
- ``"evidence of memory / world model (learned: above the random-init twin)"`` — hidden from the
  observation, decoded above the observation baseline and above the random-init twin.

Only the last two are findings about memory; the first ones say why a high probe score proves nothing.

All the probes of one variable (every site, the observation baseline, the twin's sites, the control task)
are fitted together by ``interp_core.probes.fit_and_score``, the routine ``probe_sites`` runs.

:func:`causal_check` then asks whether the agent *uses* the direction: it edits the site's activation
along the probe's direction so the decoded variable takes a target value, runs closed-loop episodes with
the edit, and compares the behavioural effect (outcome flips, action-distribution shift, value change)
with an edit of the same norm along a random direction, with confidence intervals over seeds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from interp_core.errors import InputError, SiteError
from interp_core.results import Result, jsonable

from .rollouts import Rollout, collect, replay

log = logging.getLogger(__name__)

VERDICT_VISIBLE = "not evidence (visible in observation)"
VERDICT_OBS = "not evidence (decodable from observation)"
VERDICT_CHANCE = "not decodable"
VERDICT_CONSTANT = "constant on these rows (nothing to probe)"
VERDICT_TWIN = "evidence of memory, not learned (random-init twin decodes it too)"
VERDICT_EVIDENCE = "evidence of memory / world model (learned: above the random-init twin)"


# ---------------------------------------------------------------------------------------------- probes
def make_probe(task: str, l2: float = 1.0) -> Any:
    """The linear probe used for a task: ``"classification"`` -> multinomial logistic regression,
    ``"regression"`` -> ridge (``interp_core.probes.LinearProbe``; standardised features, ``l2`` strength)."""
    from interp_core.probes import LinearProbe

    kind = "logistic" if task == "classification" else "ridge"
    return LinearProbe(kind=kind, l2=l2, standardize=True, constant_features="ignore", max_iter=500)


def _task_of(variable: Any, y: np.ndarray, ordinal_as: str, max_classes: int) -> str:
    if variable.kind == "categorical":
        return "classification"
    if variable.kind == "continuous":
        return "regression"
    if ordinal_as == "classes" or (ordinal_as == "auto" and np.unique(y).size <= max_classes):
        return "classification"
    return "regression"


def _chance(task: str, y_tr: np.ndarray, y_te: np.ndarray) -> float:
    if task == "regression":
        return 0.0
    vals, counts = np.unique(y_tr, return_counts=True)
    return float(np.mean(y_te == vals[np.argmax(counts)]))


@dataclass
class WorldModelProbeResult(Result):
    """Probe scores per site x variable x horizon with controls and verdicts.

    Attributes:
        rows: one dict per (site, variable, k): ``site``, ``variable``, ``k`` (steps ahead), ``kind``,
            ``task`` (classification / regression), ``metric`` (accuracy / r2), ``score``,
            ``random_init``, ``obs_baseline``, ``control``, ``selectivity``, ``chance``, ``visible_rate``,
            ``verdict``, ``n_train``, ``n_test``.
        breakdown: ``{"site|variable|k": {value of the `by` variable: {"score", "random_init",
            "obs_baseline", "n"}}}`` — held-out accuracy per group (e.g. per corridor step).
        probes: ``{(site, variable, k): fitted probe}`` (trained agent, training split).
        config: how it was computed.
    """

    rows: list[dict[str, Any]]
    breakdown: dict[str, dict[Any, dict[str, float]]]
    probes: dict[tuple[str, str, int], Any] = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict)

    def row(self, site: str, variable: str, k: int = 0) -> dict[str, Any]:
        for r in self.rows:
            if r["site"] == site and r["variable"] == variable and r["k"] == k:
                return r
        raise SiteError(f"no row for site={site!r}, variable={variable!r}, k={k}; have "
                       f"{sorted({(r['site'], r['variable'], r['k']) for r in self.rows})}")

    def probe_of(self, site: str, variable: str, k: int = 0) -> Any:
        return self.probes[(site, variable, k)]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": jsonable(self.rows), "breakdown": jsonable(self.breakdown), "config": jsonable(self.config)}

    def table(self) -> str:
        """A plain-text table of the rows."""
        cols = ["site", "variable", "k", "metric", "score", "random_init", "obs_baseline", "control",
                "selectivity", "chance", "visible_rate", "verdict"]
        fmt = [[(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])) for c in cols] for r in self.rows]
        widths = [max(len(c), *(len(f[i]) for f in fmt)) if fmt else len(c) for i, c in enumerate(cols)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(f, widths)) for f in fmt]
        return "\n".join(lines)

    def plot(self, variables: Sequence[str] | None = None, k: int = 0) -> Any:
        """One panel per variable: held-out score per site (in site order) for the trained agent, the
        random-init twin and the control task, with the observation baseline and chance as lines."""
        import matplotlib.pyplot as plt

        variables = list(variables or dict.fromkeys(r["variable"] for r in self.rows))
        # at most three panels a row, so the figure fits a report page (about 1100 px) at full size
        ncols = min(3, len(variables))
        nrows = -(-len(variables) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.3 * nrows + 0.6), squeeze=False)
        for ax in axes.flat[len(variables):]:
            ax.set_axis_off()
        for ax, var in zip(axes.flat, variables):
            rows = [r for r in self.rows if r["variable"] == var and r["k"] == k]
            x = np.arange(len(rows))
            ax.plot(x, [r["score"] for r in rows], "o-", label="trained")
            ax.plot(x, [r["random_init"] for r in rows], "s--", label="random-init twin")
            ax.plot(x, [r["control"] for r in rows], "^:", label="control task")
            if rows:
                ax.axhline(rows[0]["obs_baseline"], color="k", lw=1, ls="--", label="observation probe")
                ax.axhline(rows[0]["chance"], color="grey", lw=1, ls=":", label="chance")
                vis = np.mean([r["visible_rate"] for r in rows])
                ax.set_title(f"{var}{f' (+{k})' if k else ''}\nvisible {vis:.0%}", fontsize=9)
                ax.set_ylabel(rows[0]["metric"])
            ax.set_xticks(x)
            ax.set_xticklabels([r["site"] for r in rows], rotation=60, ha="right", fontsize=7)
            ax.set_ylim(min(0.0, *(r["score"] for r in rows)) if rows else 0, 1.05)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(labels), frameon=False)
        fig.tight_layout(rect=(0, 0.6 / (3.3 * nrows + 0.6), 1, 1))
        return fig


def _verdict(score: float, obs: float, twin: float | None, chance: float, visible_rate: float,
             margin: float, constant: bool = False) -> str:
    if constant:
        return VERDICT_CONSTANT
    if visible_rate >= 0.5:
        return VERDICT_VISIBLE
    if score <= chance + margin:
        return VERDICT_CHANCE
    if obs >= score - margin:
        return VERDICT_OBS
    if twin is not None and twin >= score - margin:
        return VERDICT_TWIN
    return VERDICT_EVIDENCE


def _margin(margin: float, task: str, n_test: int) -> float:
    """The verdict's tolerance: ``margin``, widened for accuracies on few held-out rows to twice the largest
    binomial standard error (``2 sqrt(0.25 / n_test)``: 0.18 on 30 rows, 0.06 on 300), so that a difference
    the test set cannot resolve is not called a finding."""
    return max(margin, 2 * math.sqrt(0.25 / n_test)) if task == "classification" else margin


def _twin_of(agent: Any) -> Any:
    """The random-init twin of ``agent`` (``rl.agents.random_twin``: the zoo twin of a zoo agent, a rebuilt
    SB3 policy or a re-initialised plain module), or an error that says how to pass one."""
    from interp_core.errors import InterpError

    from . import agents as agents_mod

    build = getattr(agents_mod, "random_twin", None)
    if build is not None:
        try:
            return build(agent)
        except InterpError as e:
            raise InputError(f"twin: cannot build a random-init twin of {getattr(agent, 'name', agent)!r} "
                             f"({e}); pass twin=<an Agent of the same architecture at random init> (e.g. "
                             f"rl.agents.wrap(PPO(same settings).policy)), or twin=None for no twin column") from e
    from . import zoo

    try:
        base, seed, _ = zoo.parse_name(agent.name or "")
    except InputError:
        base = None
    if base is None or base not in zoo.names():
        raise InputError(f"twin: {agent.name!r} is not a zoo agent, so there is no zoo twin to load; pass "
                         f"twin=<an Agent of the same architecture at random init> (e.g. rl.agents.wrap(PPO(same "
                         f"settings).policy)), or twin=None for no twin column")
    return zoo.load(base, seed=seed, random_init=True)


_UNSET = object()


def probe(agent: Any, env: Any = None, variables: Sequence[str] | None = None,
          sites: Sequence[str] | None = None, *, episodes: int = 200, steps: int | None = None, seed: int = 0,
          n_envs: int = 8, rollout: Rollout | None = None, twin: Any = _UNSET, random_twin: Any = "auto",
          future: int = 0, when: Callable[[Rollout], np.ndarray] | np.ndarray | None = None, by: str | None = None,
          test_size: float = 0.3, l2: float = 1.0, margin: float = 0.05, ordinal_as: str = "auto",
          max_classes: int = 12, control: bool = True, threads: int | None = 1,
          progress: bool | None = None) -> WorldModelProbeResult:
    """Probe world variables at sites, with controls and a verdict (see the module docstring).

    Args:
        agent: an :class:`rl.agents.Agent`, or anything the boundary turns into one (an SB3 algorithm or
            policy: ``interp_core.boundary.as_hooked``).
        env: env id / instance for the rollouts (default: the agent's env).
        variables: world variables to probe (default: all the env records).
        sites: sites to probe (default: the agent's canonical sites except ``obs``, ``logits``, ``value``).
        episodes / steps: size of the rollout (complete episodes, or time steps).
        rollout: probe an existing rollout instead (it must hold the sites and ``obs``).
        twin: the random-init twin: an Agent of the same architecture at random init, ``"auto"`` (default:
            ``rl.agents.random_twin`` — the zoo twin of a zoo agent, a rebuilt SB3 policy, a re-initialised
            plain module; a clear error when none can be built) or ``None`` (no twin column).
            ``random_twin=`` is the same argument under its older name.
        future: also probe each variable ``k = 1..future`` steps ahead (rows whose episode has that step).
        when: rows to probe: a boolean ``[N]`` mask or ``fn(rollout) -> mask`` (e.g. corridor steps only).
        by: a world variable whose values split the held-out accuracy in ``breakdown`` (e.g. ``"position"``).
        test_size: fraction of episodes held out.
        l2: probe regularisation; margin: tolerance of the verdict comparisons.
        ordinal_as: ``"auto"`` (classes when <= ``max_classes`` levels, else regression), ``"classes"`` or
            ``"regression"``.
        control: compute the Hewitt & Liang control task (types = distinct observations).
        threads: torch intra-op threads while fitting (the probes here are small: on a loaded machine more
            threads mostly add synchronisation); ``None`` leaves torch's setting.
        progress: a progress bar over the variables (``None``: only on a terminal).
    """
    from interp_core.boundary import as_hooked

    from .agents import _threads

    if twin is not _UNSET and not (isinstance(random_twin, str) and random_twin == "auto"):
        raise InputError("twin and random_twin are the same argument; give one of them")
    chosen = twin if twin is not _UNSET else random_twin
    agent = as_hooked(agent, argument="agent")
    with _threads(threads):
        return _probe(agent, env, variables, sites, episodes, steps, seed, n_envs, rollout, chosen, future,
                      when, by, test_size, l2, margin, ordinal_as, max_classes, control, progress)


def _probe(agent, env, variables, sites, episodes, steps, seed, n_envs, rollout, random_twin, future, when, by,
           test_size, l2, margin, ordinal_as, max_classes, control, progress) -> WorldModelProbeResult:
    from interp_core.boundary import as_hooked
    from interp_core.probes import control_labels, fit_and_score, input_types, train_test_split_by_group
    from interp_core.progress import progress_bar

    if not 0 < test_size < 1:
        raise InputError(f"test_size: must be in (0, 1), got {test_size}")
    if sites is None:
        sites = [s for s in agent.default_sites if s not in ("obs", "logits", "value")]
    sites = list(sites)
    want = list(dict.fromkeys(["obs", *sites]))
    if rollout is None:
        if steps is None:
            rollout = collect(agent, env, episodes=episodes, sites=want, seed=seed, n_envs=n_envs)
        else:
            rollout = collect(agent, env, steps=steps, sites=want, seed=seed, n_envs=n_envs)
    variables = list(variables or [v.name for v in rollout.variables])
    for v in variables:
        rollout.variable(v)
    twin = _twin_of(agent) if isinstance(random_twin, str) and random_twin == "auto" else random_twin
    if isinstance(twin, str):
        raise InputError(f"twin: expected an Agent, 'auto' or None, got {twin!r}")
    if twin is not None:
        twin = as_hooked(twin, argument="twin")
    twin_acts = replay(twin, rollout, sites) if twin is not None else None
    base_mask = np.ones(len(rollout), dtype=bool)
    if when is not None:
        base_mask &= np.asarray(when(rollout) if callable(when) else when, dtype=bool)
    tr_all, te_all = train_test_split_by_group(len(rollout), rollout.episode, test_size, seed)
    is_test = np.zeros(len(rollout), dtype=bool)
    is_test[te_all] = True
    feats = {s: rollout.features(s).float() for s in want}
    twin_feats = {s: twin_acts[s].reshape(len(rollout), -1).float() for s in sites} if twin_acts else {}
    # Hewitt & Liang control task by input type: the input of a policy step is its observation
    obs_types = input_types(np.asarray(rollout.obs)) if control else None
    rows, probes_, breakdown = [], {}, {}
    plan = [(v, k) for v in variables for k in range(future + 1)]
    for var_name, k in progress_bar(plan, desc="world-model probes", progress=progress,
                                    leave=False):
        var = rollout.variable(var_name)
        y_all, valid = rollout.future(var_name, k) if k else (rollout.world[var_name], np.ones(len(rollout), bool))
        mask = base_mask & valid
        tr, te = np.flatnonzero(mask & ~is_test), np.flatnonzero(mask & is_test)
        if tr.size < 2 or te.size < 1:
            log.warning("variable %s (k=%d): too few rows (%d train, %d test); skipped", var_name, k,
                        tr.size, te.size)
            continue
        y = np.asarray(y_all)
        task = _task_of(var, y[mask], ordinal_as, max_classes)
        if task == "regression":
            y = y.astype(np.float64)
        chance = _chance(task, y[tr], y[te])
        verdict_margin = _margin(margin, task, te.size)
        tr_t, te_t = torch.as_tensor(tr), torch.as_tensor(te)
        jobs: dict[tuple[str, str], Any] = {("obs", "obs"): (feats["obs"][tr_t], y[tr], feats["obs"][te_t], y[te])}
        yc = control_labels(y, obs_types, seed=seed) if control else None
        for site in sites:
            X = feats[site]
            jobs[("site", site)] = (X[tr_t], y[tr], X[te_t], y[te])
            if twin_feats:
                jobs[("twin", site)] = (twin_feats[site][tr_t], y[tr], twin_feats[site][te_t], y[te])
            if control:
                jobs[("control", site)] = (X[tr_t], yc[tr], X[te_t], yc[te])
        done = fit_and_score(make_probe(task, l2), jobs)
        obs_probe, _, obs_score = done[("obs", "obs")]
        # a future value is never in the current observation
        vis_rate = float(rollout.visible[var_name][mask].mean()) if k == 0 else 0.0
        constant = np.unique(y[mask]).size < 2
        for site in sites:
            p, _, score = done[("site", site)]
            twin_probe, _, twin_score = done[("twin", site)] if twin_feats else (None, None, None)
            ctrl = done[("control", site)][2] if control else None
            rows.append({
                "site": site, "variable": var_name, "k": k, "kind": var.kind, "task": task,
                "metric": "accuracy" if task == "classification" else "r2", "score": score,
                "random_init": twin_score, "obs_baseline": obs_score, "control": ctrl,
                "selectivity": None if ctrl is None else score - ctrl, "chance": chance,
                "visible_rate": vis_rate,
                "verdict": _verdict(score, obs_score, twin_score, chance, vis_rate, verdict_margin, constant),
                "n_train": int(tr.size), "n_test": int(te.size)})
            probes_[(site, var_name, k)] = p
            if by is not None and task == "classification" and p is not None:
                groups = rollout.world[by][te]

                def predict(q: Any, X: torch.Tensor) -> np.ndarray:
                    return q.predict(X) if q is not None else np.full(te.size, y[tr][0])

                pred = predict(p, feats[site][te_t])
                tw = predict(twin_probe, twin_feats[site][te_t]) if twin_feats else None
                op = predict(obs_probe, feats["obs"][te_t])
                table = {}
                for g in np.unique(groups):
                    sel = groups == g
                    table[g.item() if hasattr(g, "item") else g] = {
                        "score": float(np.mean(pred[sel] == y[te][sel])),
                        "random_init": None if tw is None else float(np.mean(tw[sel] == y[te][sel])),
                        "obs_baseline": float(np.mean(op[sel] == y[te][sel])), "n": int(sel.sum())}
                breakdown[f"{site}|{var_name}|{k}"] = table
    config = {"agent": getattr(agent, "name", None), "random_twin": getattr(twin, "name", None),
              "rollout": rollout.config, "rows": len(rollout), "episodes": rollout.num_episodes,
              "variables": variables, "sites": sites, "future": future, "test_size": test_size, "l2": l2,
              "margin": margin, "split": "by episode", "seed": seed, "by": by,
              "control": "Hewitt & Liang by input type (distinct observations)" if control else None,
              "probe": "interp_core.probes.LinearProbe (logistic for classes, ridge for regression), fitted "
                       "together by interp_core.probes.fit_and_score"}
    return WorldModelProbeResult(rows, breakdown, probes_, config)


# ---------------------------------------------------------------------------------------------- causal check
@dataclass
class CausalCheckResult(Result):
    """Behavioural effect of editing a site along a probe direction vs a random direction of equal norm.

    Attributes:
        summary: ``{"probe" | "random": {metric: {"mean", "low", "high", "values"}}}`` over units (agent x
            seed); metrics: ``outcome_flip_rate`` (fraction of episodes whose success differs from the
            paired unedited episode), ``final_action_change_rate``, ``success_rate``, ``action_tv`` (mean
            total-variation distance between the edited and unedited action distributions at edited steps),
            ``value_change`` (mean edited - unedited value at edited steps), ``decoded_target_rate``
            (fraction of edited steps the probe decodes as the target after the edit).
        baseline_success_rate: success of the unedited episodes (mean over units).
        units: per (agent, seed) raw numbers.
        config: site, variable, target, strength, confidence level, ...
    """

    summary: dict[str, dict[str, dict[str, Any]]]
    baseline_success_rate: float
    units: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def plot(self, metrics: Sequence[str] = ("outcome_flip_rate", "action_tv")) -> Any:
        """Bars with confidence intervals: probe-direction edit vs random-direction edit."""
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.3), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            means = [self.summary[k][m]["mean"] for k in ("probe", "random")]
            err = [[means[i] - self.summary[k][m]["low"] for i, k in enumerate(("probe", "random"))],
                   [self.summary[k][m]["high"] - means[i] for i, k in enumerate(("probe", "random"))]]
            ax.bar([0, 1], means, yerr=err, color=["C0", "C7"], capsize=4)
            ax.set_xticks([0, 1])
            ax.set_xticklabels(["probe direction", "random direction"], fontsize=8)
            ax.set_title(CAUSAL_LABELS.get(m, m.replace("_", " ")), fontsize=9)
        fig.suptitle(f"editing {self.config.get('site')} so the probe reads the other "
                     f"{self.config.get('variable')} (bars: mean, whiskers: {self.config.get('level', 0.95):.0%} "
                     f"interval)", fontsize=9)
        fig.tight_layout()
        return fig


# plain words for the causal check's measures, used as figure titles
CAUSAL_LABELS = {
    "outcome_flip_rate": "episodes whose outcome flips",
    "final_action_change_rate": "episodes whose last action changes",
    "success_rate": "success rate with the edit",
    "action_tv": "change of the action distribution\n(total variation, edited steps)",
    "value_change": "change of the value estimate",
    "decoded_target_rate": "edited steps the probe reads as the target",
}


def _ci(values: Sequence[float], level: float, rate: bool = False) -> dict[str, Any]:
    """Mean and Student-t confidence interval of the mean (``scipy.stats.ttest_1samp(...).confidence_interval``;
    clipped to [0, 1] for rates). Fewer than two values, or values that are all equal, give a zero-width
    interval."""
    from scipy.stats import ttest_1samp

    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    if v.size < 2 or float(v.std()) == 0.0:
        return {"mean": mean, "low": mean, "high": mean, "values": v.tolist()}
    ci = ttest_1samp(v, 0.0).confidence_interval(confidence_level=level)
    low, high = float(ci.low), float(ci.high)
    if rate:
        low, high = max(0.0, low), min(1.0, high)
    return {"mean": mean, "low": low, "high": high, "values": v.tolist()}


def _success(info: Mapping[str, Any], reward: float, terminated: bool, truncated: bool, env_id: str | None) -> bool:
    if "success" in info:
        return bool(info["success"])
    if env_id is not None and env_id.startswith("CartPole"):
        return bool(truncated and not terminated)
    return bool(terminated and reward > 0)


def _episodes(agent: Any, env_seeds: Sequence[int], site: str | None, edit: Callable | None,
              when: Callable[[Mapping[str, Any]], bool] | None, reset_options: Mapping[str, Any] | None,
              max_steps: int) -> dict[str, Any]:
    """Run one episode per env seed in parallel (deterministic actions), optionally editing ``site`` with
    ``edit(act, worlds, active_rows) -> new act`` at steps where ``when(world)`` holds."""
    from interp_core.interventions import Replace

    envs_ = [agent.make_env() for _ in env_seeds]
    obs, worlds = [], []
    for e, s in zip(envs_, env_seeds):
        o, info = e.reset(seed=int(s), options=dict(reset_options) if reset_options else None)
        obs.append(o)
        worlds.append(info["world"])
    n = len(envs_)
    state = agent.initial_state(n)
    alive = np.ones(n, dtype=bool)
    success = np.zeros(n, dtype=bool)
    returns = np.zeros(n)
    last_action = np.full(n, -1)
    tv, dv, decoded = [], [], []
    batch_dim = 1 if type(agent.model).__name__ == "SB3PolicyModule" else 0
    with torch.no_grad():
        for _ in range(max_steps):
            idx = np.flatnonzero(alive)
            if idx.size == 0:
                break
            st = None if state is None else tuple(s.index_select(batch_dim, torch.as_tensor(idx)) for s in state)
            x = np.stack([obs[i] for i in idx])
            edit_rows = np.array([when(worlds[i]) if when is not None else True for i in idx], dtype=bool)
            if edit is not None and edit_rows.any():
                box: dict[str, Any] = {}

                def fn(act: torch.Tensor) -> torch.Tensor:
                    new, info = edit(act, [worlds[i] for i in idx], edit_rows)
                    box.update(info)
                    return new

                with agent.intervene({site: Replace(fn)}):
                    out = agent.model(x, st, None)
                ref = agent.model(x, st, None)
                p, q = torch.softmax(out.logits, -1), torch.softmax(ref.logits, -1)
                rows_t = torch.as_tensor(edit_rows)
                tv.extend((0.5 * (p - q).abs().sum(-1))[rows_t].tolist())
                dv.extend((out.value - ref.value)[rows_t].tolist())
                decoded.extend(box.get("decoded_target", []))
            else:
                out = agent.model(x, st, None)
            actions = out.logits.argmax(-1).numpy()
            if state is not None:
                state = tuple(s.clone() for s in state)
                for full, new in zip(state, out.state):
                    full.index_copy_(batch_dim, torch.as_tensor(idx), new)
            for j, i in enumerate(idx):
                o2, r, term, trunc, info = envs_[i].step(int(actions[j]))
                returns[i] += float(r)
                last_action[i] = int(actions[j])
                obs[i], worlds[i] = o2, info["world"]
                if term or trunc:
                    alive[i] = False
                    success[i] = _success(info, float(r), term, trunc, agent.env_id)
    return {"success": success, "returns": returns, "last_action": last_action, "tv": tv, "dv": dv,
            "decoded": decoded}


def _check_binary(rollout: Rollout, variable: str, y: np.ndarray) -> None:
    """Refuse a variable that is not binary on the probe rows, saying what it is (never listing thousands of
    values) and what to do instead."""
    classes = np.unique(y)
    if classes.size == 2:
        return
    kind = rollout.variable(variable).kind
    if classes.size < 2:
        raise InputError(f"variable: {variable!r} takes a single value ({classes[0]!r}) on the {len(y)} probe rows; "
                         f"nothing to edit — choose probe_when= rows where it varies, or another variable")
    shown = f" ({classes.tolist()})" if classes.size <= 10 else ""
    what = "a continuous variable" if kind == "continuous" else f"a {kind} variable"
    raise InputError(f"variable: causal_check edits binary variables; {variable!r} is {what} with {classes.size} "
                     f"distinct values on the probe rows{shown}; bin it into two classes (e.g. a wrapper that "
                     f"records {variable} > threshold as its own world variable) or choose a binary categorical "
                     f"variable")


def causal_check(agents: Any, site: str, variable: str, *, target: Any = "flip", strength: float = 1.0,
                 direction: str = "probe", episodes: int = 100, seeds: Sequence[int] = (0, 1, 2),
                 probe_episodes: int = 200, probe_when: Callable[[Rollout], np.ndarray] | None = None,
                 when: Callable[[Mapping[str, Any]], bool] | None = None, l2: float = 1.0,
                 reset_options: Mapping[str, Any] | None = None, max_steps: int = 1000,
                 level: float = 0.95) -> CausalCheckResult:
    """Edit ``site`` along a probe direction for ``variable`` in closed loop; compare with a random direction.

    For each agent (e.g. the three zoo seeds) a logistic probe for the (binary categorical) ``variable`` is
    fitted at ``site`` on a fresh rollout (``probe_episodes`` episodes, rows selected by ``probe_when``), on
    the raw activations (not standardised, so its weight vector ``w`` lives in the space being edited;
    ``direction="mean_diff"`` uses the difference of the class means instead). With ``u = w / ||w||`` and
    ``m_c`` the mean projection ``x·u`` of the probe rows of class ``c``, the **probe edit** sets the
    projection of each activation to that of the target class:
    ``x' = x + (m_src + strength (m_tgt - m_src) - x·u) u`` (``src`` = the episode's true value,
    ``target="flip"`` = the other class; an explicit class may be given). The **random edit** adds, to each
    edited row, a vector of the same norm ``||x' - x||`` along a random unit direction (one per seed). Edits
    apply at every step where ``when(info["world"])`` holds (default: all steps).

    Then, for each seed, ``episodes`` episodes run three times from the same env seeds: unedited, with the
    probe edit and with the random edit (deterministic actions). Confidence intervals: mean ± t quantile x
    standard error over the (agent, seed) units.
    """
    from interp_core.probes import LinearProbe

    if direction not in ("probe", "mean_diff"):
        raise InputError(f"direction must be 'probe' or 'mean_diff', got {direction!r}")
    from interp_core.boundary import as_hooked

    agent_list = [as_hooked(a, argument="agents")
                  for a in (list(agents) if isinstance(agents, (list, tuple)) else [agents])]
    units = []
    base_success = []
    for agent in agent_list:
        ro = collect(agent, episodes=probe_episodes, sites=[site], seed=10_000)
        mask = np.ones(len(ro), dtype=bool) if probe_when is None else np.asarray(probe_when(ro), dtype=bool)
        X = ro.features(site)[mask].float()
        y = np.asarray(ro.world[variable])[mask]
        _check_binary(ro, variable, y)
        p = LinearProbe(kind="logistic", l2=l2, standardize=False, max_iter=1000).fit(X, y)
        neg, pos = p.classes_.tolist()
        if direction == "probe":
            w = p.coef_[0].float()
        else:
            w = X[torch.as_tensor(y == pos)].mean(0) - X[torch.as_tensor(y == neg)].mean(0)
        u = w / w.norm()
        proj = X @ u
        m = {c: float(proj[torch.as_tensor(y == c)].mean()) for c in (neg, pos)}
        coef, b = p.coef_[0].float(), float(p.intercept_[0])

        def goal(world: Mapping[str, Any]) -> tuple[float, bool]:
            src = world[variable]
            src = src if src in m else (neg if abs(src - neg) < abs(src - pos) else pos)
            tgt = (pos if src == neg else neg) if target == "flip" else target
            if tgt not in m:
                raise InputError(f"target {tgt!r} is not a class of {variable!r} ({[neg, pos]})")
            return m[src] + strength * (m[tgt] - m[src]), tgt == pos

        d_site = u.numel()
        for seed in seeds:
            env_seeds = [seed * 100_003 + i for i in range(episodes)]
            rand = torch.randn(d_site, generator=torch.Generator().manual_seed(seed))
            rand = rand / rand.norm()

            def probe_edit(act, worlds, rows, _u=u):
                flat = act.reshape(act.shape[0], -1)
                goals = [goal(wd) for wd in worlds]
                tgt_proj = torch.tensor([g[0] for g in goals], dtype=flat.dtype)
                delta = (tgt_proj - flat @ _u)[:, None] * _u[None, :]
                delta[~torch.as_tensor(rows)] = 0
                new = flat + delta
                want_pos = torch.tensor([g[1] for g in goals])
                hit = ((new @ coef + b > 0) == want_pos)[torch.as_tensor(rows)].tolist()
                return new.reshape(act.shape), {"decoded_target": hit, "norm": delta.norm(dim=1)}

            def random_edit(act, worlds, rows, _r=rand):
                flat = act.reshape(act.shape[0], -1)
                _, info = probe_edit(act, worlds, rows)
                new = flat + info["norm"][:, None] * _r[None, :]
                want_pos = torch.tensor([goal(wd)[1] for wd in worlds])
                hit = ((new @ coef + b > 0) == want_pos)[torch.as_tensor(rows)].tolist()
                return new.reshape(act.shape), {"decoded_target": hit}

            base = _episodes(agent, env_seeds, None, None, when, reset_options, max_steps)
            base_success.append(float(base["success"].mean()))
            for kind, fn in (("probe", probe_edit), ("random", random_edit)):
                run = _episodes(agent, env_seeds, site, fn, when, reset_options, max_steps)
                units.append({
                    "agent": agent.name, "seed": seed, "edit": kind,
                    "outcome_flip_rate": float(np.mean(run["success"] != base["success"])),
                    "final_action_change_rate": float(np.mean(run["last_action"] != base["last_action"])),
                    "success_rate": float(run["success"].mean()),
                    "action_tv": float(np.mean(run["tv"])) if run["tv"] else 0.0,
                    "value_change": float(np.mean(run["dv"])) if run["dv"] else 0.0,
                    "decoded_target_rate": float(np.mean(run["decoded"])) if run["decoded"] else float("nan"),
                })
    metrics = ["outcome_flip_rate", "final_action_change_rate", "success_rate", "action_tv", "value_change",
               "decoded_target_rate"]
    names = list(dict.fromkeys(u["agent"] for u in units))

    def values(kind: str, m: str) -> list[float]:
        """One value per agent (the mean over its env seeds) when there are several agents, else per seed: the
        interval speaks about agents, not about correlated runs of one agent."""
        if len(names) < 2:
            return [u[m] for u in units if u["edit"] == kind]
        return [float(np.mean([u[m] for u in units if u["edit"] == kind and u["agent"] == a])) for a in names]

    summary = {kind: {m: _ci(values(kind, m), level, m.endswith("_rate")) for m in metrics}
               for kind in ("probe", "random")}
    config = {"site": site, "variable": variable, "target": target, "strength": strength, "episodes": episodes,
              "direction": direction, "seeds": list(seeds), "agents": [a.name for a in agent_list],
              "probe_episodes": probe_episodes,
              "l2": l2, "level": level,
              "ci": (f"mean ± t_{{n-1}} x SE over the {len(names)} agents, each the mean over its env seeds"
                     if len(names) > 1 else "mean ± t_{n-1} x SE over env seeds")}
    return CausalCheckResult(summary, float(np.mean(base_success)), units, config)
