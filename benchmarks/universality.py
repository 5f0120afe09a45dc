"""How universal are representations? CKA and matched-unit correlations within and across architectures
and domains, each against a random-init baseline (issue 4's cross-domain study).

Comparisons (every pair of the three seeds, each model B also replaced by its random-init twin as baseline):

(a) digits CNN vs digits CNN (``vision.zoo`` ``digits-cnn@seedN``);
(b) digits ViT vs digits ViT (``digits-vit@seedN``);
(c) digits CNN vs digits ViT (same seed index);
(d) RL agents across seeds on the same states (``rl.zoo`` ``cartpole-ppo@seedN`` and ``doorkey-ppo@seedN``; the
    states are the union of deterministic rollouts of the three trained agents).

Vision inputs: all 1,797 sklearn digits (train + test split of the zoo recipe). Positions are mean-pooled;
units are channels / neurons. Sites are paired by relative depth for unit matching (Hungarian).

Model stitching (Bansal et al. 2021) on the same zoo models: an affine layer from seed 0's site into seed 1's
same site (least-squares init + 3 epochs of task loss on the digits train split; accuracy on the test split),
and the same from the random-init twin of seed 0 as the baseline. For CartPole agents the "accuracy" is the
agreement with agent B's own actions on held-out states.

Run: ``python benchmarks/universality.py``; writes ``benchmarks/results/universality.json`` and
``benchmarks/results/universality/`` (``report.html``, ``figures/*.png``, ``results.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

import matplotlib
from _timing import pin_threads, pools

pin_threads(1)  # torch and every BLAS pool, before numpy / scipy / scikit-learn load theirs

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402

from interp_core.report import Report  # noqa: E402
from interp_core.results import jsonable  # noqa: E402
from interp_core.universality import Comparison, stitch, universality_study  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SEEDS = (0, 1, 2)


def pick(hm, candidates):
    """The first existing site name of each candidate group (adapters may name sites canonically)."""
    names = set(hm.sites.names)
    out = []
    for group in candidates:
        for c in (group if isinstance(group, (list, tuple)) else [group]):
            if c in names:
                out.append(c)
                break
    return out


def vision_comparisons():
    import vision.zoo as zoo
    from vision.zoo.train import load_data

    recipe = zoo.RECIPES["digits-cnn"]
    xs = [load_data(recipe, s)[0] for s in ("train", "test")]
    data = list(torch.cat(xs).split(300))
    cnn_sites = ["stem", ("layer1.0", "layer1"), ("layer2.0", "layer2"), ("logits", "fc")]
    vit_sites = [("embed", "patch_embed"), *[(f"blocks.{i}.resid_post", f"blocks.{i}") for i in range(3)],
                 ("logits", "head")]

    def load(fam, seed, random=False):
        return zoo.load(f"{fam}{'-random' if random else ''}@seed{seed}")

    comps = []
    for fam, sites, tag in (("digits-cnn", cnn_sites, "a: CNN vs CNN"), ("digits-vit", vit_sites, "b: ViT vs ViT")):
        for s, t in itertools.combinations(SEEDS, 2):
            a, b = load(fam, s), load(fam, t)
            comps.append(Comparison(f"{tag} (seed {s} vs {t})", a, b, data, pick(a, sites), pick(b, sites),
                                    baseline=load(fam, t, True)))
    for s in SEEDS:
        a, b = load("digits-cnn", s), load("digits-vit", s)
        comps.append(Comparison(f"c: CNN vs ViT (seed {s})", a, b, data, pick(a, cnn_sites), pick(b, vit_sites),
                                baseline=load("digits-vit", s, True)))
    return comps, len(torch.cat(xs))


def rl_comparisons(steps: int):
    import rl.zoo as rzoo
    from rl.rollouts import collect

    comps, rows, states = [], {}, {}
    for base, sites in (("cartpole-ppo", ["policy.1", "policy.3", "value.1", "value.3", "logits"]),
                        ("doorkey-ppo", None)):
        agents = {s: rzoo.load(f"{base}@seed{s}") for s in SEEDS}
        if sites is None:
            sites = [n for n in agents[0].default_sites if n not in ("obs", "value")]
        obs = torch.cat([torch.as_tensor(np.asarray(collect(agents[s], steps=steps, seed=100 + s).obs))
                         for s in SEEDS])
        rows[base] = len(obs)
        states[base] = obs
        data = list(obs.split(500))
        for s, t in itertools.combinations(SEEDS, 2):
            comps.append(Comparison(f"d: RL {base} (seed {s} vs {t})", agents[s], agents[t], data, sites, sites,
                                    baseline=rzoo.load(f"{base}-random@seed{t}")))
    return comps, rows, states["cartpole-ppo"]


def stitching_rows(rl_states):
    import rl.zoo as rzoo
    import vision.zoo as zoo
    from vision.zoo.train import load_data

    recipe = zoo.RECIPES["digits-cnn"]
    (xtr, ytr), (xte, yte) = load_data(recipe, "train"), load_data(recipe, "test")
    train, test = list(zip(xtr.split(128), ytr.split(128))), list(zip(xte.split(128), yte.split(128)))
    rows = []
    cnn, vit = zoo.load("digits-cnn@seed1"), zoo.load("digits-vit@seed1")
    cases = [("digits-cnn", zoo.load, site, "labels", train, test)
             for site in pick(cnn, ["stem", ("layer1.0", "layer1"), ("layer2.0", "layer2")])]
    cases += [("digits-vit", zoo.load, site, "labels", train, test)
              for site in pick(vit, [(f"blocks.{i}.resid_post", f"blocks.{i}") for i in range(3)])]
    n = len(rl_states)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    s_tr, s_te = rl_states[perm[: n * 2 // 3]], rl_states[perm[n * 2 // 3:]]
    cases += [("cartpole-ppo", rzoo.load, site, "model_b", list(s_tr.split(256)), list(s_te.split(256)))
              for site in ("policy.1", "policy.3")]
    for fam, load, site, target, tr, te in cases:
        b = load(f"{fam}@seed1")
        for which in ("trained", "random-init"):
            a = load(f"{fam}{'-random' if which != 'trained' else ''}@seed0")
            r = stitch(a, site, b, site, tr, te, target=target, epochs=3, lr=1e-3)
            rows.append({"model": fam, "site": site, "A (seed 0)": which, "target": target,
                         "accuracy_A": r.accuracy_a, "accuracy_B": r.accuracy_b,
                         "stitched_lstsq": r.accuracy_stitched_init, "stitched_trained": r.accuracy_stitched})
            logging.info("stitch %s", rows[-1])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rl-steps", type=int, default=1000, help="steps per agent for the RL state set")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    comps, n_digits = vision_comparisons()
    rl_comps, rl_rows, cartpole_states = rl_comparisons(args.rl_steps)
    result = universality_study(comps + rl_comps)
    out = RESULTS / "universality"
    report = Report("How universal are representations? (issue 4)")
    report.add("Summary", text=(
        "Linear CKA (Kornblith et al. 2019) between sites of two models on the same inputs, and the mean "
        "correlation of units matched one-to-one by the Hungarian algorithm (Li et al. 2016), for sites paired "
        "by relative depth. Every comparison is repeated with model B replaced by its random-init twin "
        "(same architecture and seed, untrained). cka_best: for each site of A, the best CKA with any site of "
        f"B, averaged. Vision inputs: {n_digits} digits; RL states: {rl_rows}."), table=result.table)
    for name in result.cka:
        sub = type(result)([r for r in result.table if r["comparison"] == name], {name: result.cka[name]},
                           {name: result.cka_baseline[name]}, {name: result.matches[name]},
                           {name: result.sites[name]})
        report.add(name, figure=sub.plot())
    report.add("Matched-unit correlations: trained vs random-init baseline", figure=summary_figure(result.table))
    stitched = stitching_rows(cartpole_states)
    report.add("Model stitching (seed 0 -> seed 1, same site)", text=(
        "Affine stitching layer (per position) from model A's site into model B's same site, B runs on. "
        "'stitched_lstsq': least-squares initialisation only; 'stitched_trained': after 3 epochs of task loss. "
        "A = the trained seed-0 model, or its random-init twin (baseline). CartPole: agreement with B's actions."),
        table=stitched)
    report.write(out)
    payload = {"pools": pools(),
               "setup": {"digits_rows": n_digits, "rl_rows": rl_rows, "pool": "mean", "method": "hungarian",
                         "seconds": time.perf_counter() - t0},
               "table": result.table, "cka": result.cka, "cka_baseline": result.cka_baseline,
               "sites": result.sites, "stitching": stitched,
               "matches": {k: v.summary() for k, v in result.matches.items()}}
    (RESULTS / "universality.json").write_text(json.dumps(jsonable(payload), indent=1))
    cols = ["comparison", "cka_depth", "cka_depth_baseline", "cka_best", "cka_best_baseline", "matched_corr",
            "matched_corr_baseline"]
    print(" | ".join(cols))
    for r in result.table:
        print(" | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    for r in stitched:
        print(" | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()))


def summary_figure(table):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 0.35 * len(table) + 1.5), sharey=True)
    y = np.arange(len(table))
    for ax, (key, label) in zip(axes, (("cka_depth", "linear CKA (depth-paired)"),
                                       ("matched_corr", "matched-unit correlation"))):
        ax.barh(y + 0.2, [r[key] for r in table], 0.4, label="trained", color="C0")
        ax.barh(y - 0.2, [r[f"{key}_baseline"] for r in table], 0.4, label="random-init B", color="0.6")
        ax.set_xlabel(label)
        ax.set_xlim(0, 1)
    axes[0].set_yticks(y, [r["comparison"] for r in table], fontsize=7)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()
