"""The vision part of ``interp demo``: an end-to-end analysis of the zoo's image classifiers.

:func:`stages` lists the sections as named stages ``(name, fn(report))`` that ``interp demo`` runs, times and
caches one by one (each stage loads what it needs, so a cached stage is never needed by a later one);
:func:`add_to_report` runs them all into an :class:`interp_core.report.Report`:

1. logit lens and attention rollout of the digits ViT;
2. activation patching "3" -> "8" over every residual token of the digits ViT, exact (batched) and by
   attribution patching, with the scatter of one against the other (Spearman);
3. probes per layer for the ground-truth factors of the synthetic shapes (shape, size, x position, mark), with
   the control-task selectivity of Hewitt & Liang;
4. shortcut finding on ``shapes-cnn-shortcut``: integrated-gradient mass on the planted corner mark,
   patching the corner cells from the no-mark twin, and a probe for the mark;
5. features of the shortcut model: the channel the mark drives most, its top exemplars on data where the
   mark is uninformative, and the steering curve along the mark direction (difference of means);
6. feature visualisation: an input optimised for each class logit of the digits CNN;
7. sparse autoencoders on the digits CNN (:mod:`vision.demo_features`) and the digits ViT's 3-vs-8 circuit
   (:mod:`vision.demo_circuits`);
8. universality: linear CKA between digits CNN and ViT seeds, each against a random-init twin.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from interp_core import metrics
from interp_core.patching import attribution_patching, patch_sweep
from interp_core.plots import agreement_scatter, image_row
from interp_core.probes import probe_sites
from interp_core.steering import diff_means, steering_sweep

from . import featvis, zoo
from .attribution import attention_rollout, attribution_map, spearman
from .data import DIGITS_MEAN, DIGITS_STD, shapes
from .exemplars import top_exemplars
from .lens import logit_lens


def _sizes(quick: bool) -> tuple[int, int]:
    """``(pairs, shapes)``: contrast pairs and synthetic shapes per analysis."""
    return (16, 300) if quick else (64, 1200)


def _lens(report: Any, quick: bool) -> None:
    vit = zoo.load("digits-vit")
    x, y = zoo.test_data("digits-vit")
    lens = logit_lens(vit, (x, y))
    report.add("Vision: logit lens of the digits ViT", text=(
        "The CLS residual after each block, decoded through the final LayerNorm and the head, on the digits "
        f"test split (n = {lens.n}). Accuracy rises layer by layer to the model's own "
        f"{lens.final_accuracy:.1%}."), figure=lens.plot(),
        table=[{"site": s, "accuracy": float(a), "agreement": float(g), "kl_to_final": float(k)}
               for s, a, g, k in zip(lens.sites, lens.accuracy, lens.agreement, lens.kl_to_final)])
    images = torch.cat([x[y == c][:1] for c in (0, 3, 8, 9)])
    roll = attention_rollout(vit, images)
    report.add("Vision: attention rollout of the digits ViT", text=(
        "Attention rollout (Abnar & Zuidema 2020): the head-averaged attention of every block, with the residual "
        "connection as 0.5 A + 0.5 I, multiplied through the blocks; the CLS row over the 4x4 patch tokens, "
        "upsampled to the 8x8 image. It shows where information flows to CLS by attention alone, not what the "
        "MLPs or the values do with it, so it is a view of routing, not an attribution."),
        figure=roll.plot(n=len(images)), caption="Each panel: a test digit with the rollout map over it, one "
                                                  "shared colour scale (colour bar).")


def _patching(report: Any, quick: bool) -> None:
    n_pairs, _ = _sizes(quick)
    vit = zoo.load("digits-vit")
    x, y = zoo.test_data("digits-vit")
    clean, corrupted = x[y == 3][:n_pairs], x[y == 8][:n_pairs]
    n = min(len(clean), len(corrupted))
    clean, corrupted = clean[:n], corrupted[:n]
    sites = [s for s in vit.sites.names if s.endswith("resid_pre")] + ["final_norm"]
    metric = metrics.logit_diff(3, 8)
    exact = patch_sweep(vit, clean, corrupted, sites, metric, progress=False)
    approx = attribution_patching(vit, clean, corrupted, sites, metric)
    e = torch.cat([exact.effects[s].flatten() for s in sites])
    a = torch.cat([approx.effects[s].flatten() for s in sites])
    rho = float(spearman(e[None], a[None])[0])
    report.add("Vision: where does the ViT decide 3 vs 8? (activation patching)", text=(
        f"Denoising patches of each residual token from {n} images of a 3 into images of an 8 (pairs), metric "
        "logit(3) - logit(8), normalised 0 = corrupted, 1 = clean. Early layers: the effect sits on the patch "
        "tokens that differ; later, it moves to the CLS token that the head reads. Attribution patching "
        f"(one forward + one backward) ranks the {len(e)} units with Spearman {rho:.2f} against exact patching."),
        figure=exact.plot(title="exact patching, 3 -> 8, residual tokens"),
        table=[{**r, "unit": str(r["unit"])} for r in exact.top(8)],
        numbers={"spearman_attribution_vs_exact": rho, "clean_metric": exact.clean_metric,
                 "corrupted_metric": exact.corrupted_metric})
    report.add("Vision: attribution patching against exact patching", text=(
        "Each point is one residual token of one site: its normalised effect by exact patching (x) and by "
        "attribution patching, the linear estimate from one forward and one backward (y). Points on the dashed "
        "line are estimated exactly; the estimate is first-order, so it misses where LayerNorm and attention "
        "saturate (Kramár et al. 2024), which is why the ranking, not the values, is what to trust."),
        figure=agreement_scatter(e, a, xlabel="exact patching effect", ylabel="attribution patching estimate",
                                 title="digits ViT, 3 -> 8, residual tokens"),
        numbers={"spearman": rho, "units": len(e)})


def _shapes_probes(report: Any, quick: bool) -> None:
    _, n_shapes = _sizes(quick)
    cnn = zoo.load("shapes-cnn-shortcut")
    ds = shapes(n=n_shapes, seed=11, shortcut=0.5)
    xs, _ = ds.tensors()
    factors = ds.factors()
    sites = [s for s in ("stem", "layer1.0", "layer2.0", "layer3.0", "logits") if s in cnn.sites]
    rows, fig = [], None
    for name in ("shape", "size", "x", "mark"):
        labels = factors[name]
        if len(labels.unique()) > 5:  # continuous factors -> 3 equal-count bins (a classification probe)
            labels = torch.bucketize(labels, labels.float().quantile(torch.tensor([1 / 3, 2 / 3])))
        sweep = probe_sites(cnn, xs, labels.long().numpy(), sites=sites, pool="mean", seed=0)
        rows += [{"factor": name, **{k: r[k] for k in ("site", "test_score", "control_score", "selectivity")}}
                 for r in sweep.table]
        if name == "mark":
            fig = sweep.plot()
    report.add("Vision: what do the shapes CNN's layers encode? (probes with control tasks)", text=(
        f"Linear probes on mean-pooled channels of {n_shapes} synthetic shapes whose factors are known (the "
        "mark is drawn independently of the class here). Selectivity = test accuracy - accuracy on the "
        "control task (random labels per input type); size and x position are binned into thirds (chance "
        "1/3). Mean pooling over cells discards most of where a shape is, so x position is "
        "decoded only weakly (border effects leak some): probe unpooled cells to find it. The figure shows the "
        "probe for the corner mark."),
        figure=fig, table=rows)


def _twins(n_pairs: int) -> tuple[Any, ...]:
    """The shortcut model with marked and unmarked twins of the same shapes, and the corner patch."""
    cnn = zoo.load("shapes-cnn-shortcut")
    on = shapes(n=n_pairs, seed=7, shortcut=True, force_mark=True)
    off = shapes(n=n_pairs, seed=7, shortcut=True, force_mark=False)
    (x_on, y_sh), (x_off, _) = on.tensors(), off.tensors()
    return cnn, on, x_on, y_sh, x_off


def _shortcut(report: Any, quick: bool) -> None:
    from interp_core.interventions import Patch
    from interp_core.probes import LinearProbe

    n_pairs, n_shapes = _sizes(quick)
    cnn, on, x_on, y_sh, x_off = _twins(n_pairs)
    mask = on.mark_mask()
    target = torch.zeros(len(x_on), dtype=torch.long)
    ig = attribution_map(cnn, x_on, "integrated_gradients", target=target, n_steps=16, abs=True)
    share = float(ig.mass_in(mask).mean())
    _, src = cnn.run_with_cache(x_off, sites=["layer2.0"])
    other = y_sh != 0
    corner = [(0, 0), (0, 1), (1, 0), (1, 1)]
    with torch.no_grad():
        p_on = cnn(x_on).softmax(1)[other, 0].mean()
        p_patched = cnn.run_with_interventions(x_on, {"layer2.0": Patch(src, positions=corner)}).softmax(1)[other, 0]
    ds = shapes(n=n_shapes, seed=11, shortcut=0.5)
    _, cache = cnn.run_with_cache(ds.tensors()[0], sites=["layer2.0"], pool="mean")
    feats, mark = cache.features("layer2.0"), ds.factors()["mark"].long().numpy()
    half = len(mark) // 2
    mark_acc = float(LinearProbe(kind="logistic").fit(feats[:half], mark[:half]).score(feats[half:], mark[half:]))
    report.add("Vision: finding the planted shortcut", text=(
        "shapes-cnn-shortcut was trained on shapes where class 0 always carries a 3x3 corner mark. Three views "
        f"find it: integrated gradients put {share:.0%} of their mass on the mark's 9 of 1024 pixels "
        f"({share / float(mask.float().mean()):.0f}x its area); the mark pulls other shapes to class 0 "
        f"(P = {float(p_on):.2f}) and patching 4 of the 64 corner cells of layer2.0 from the unmarked twin "
        f"brings that to {float(p_patched.mean()):.2f}; a linear probe on layer2.0 reads the mark at "
        f"{mark_acc:.0%} on held-out shapes."),
        figure=ig.plot(n=4), caption="Integrated gradients (|attribution|, summed over colour channels) of the "
                                     "class-0 logit for four marked shapes, on one colour scale; the mark sits in "
                                     "the top-left corner.",
        numbers={"ig_mass_on_mark": share, "p_class0_marked": float(p_on),
                 "p_class0_corner_patched": float(p_patched.mean()), "mark_probe_accuracy": mark_acc})


def _mark_feature(report: Any, quick: bool) -> None:
    n_pairs, n_shapes = _sizes(quick)
    cnn, on, x_on, y_sh, x_off = _twins(n_pairs)
    site = "layer2.0"
    other = y_sh != 0
    with torch.no_grad():
        p_on = float(cnn(x_on).softmax(1)[other, 0].mean())
    _, src = cnn.run_with_cache(x_off, sites=[site])
    _, c_on = cnn.run_with_cache(x_on, sites=[site])
    unit = int((c_on[site] - src[site]).mean(0).flatten(1).amax(1).argmax())  # the channel the mark drives most
    fresh = shapes(n=n_shapes, seed=9, shortcut=0.5)
    ex = top_exemplars(cnn, fresh, site, channels=[unit], k=8, by="cell", box="receptive")
    marked_share = float(fresh.factors()["mark"][ex.indices[0]].float().mean())
    v = diff_means(cnn, x_on, x_off, site)
    steer = steering_sweep(cnn, x_off[other], site, v, [0.0, 0.25, 0.5, 0.75, 1.0],
                           metric=lambda out: out.softmax(-1)[:, 0])
    report.add(f"Vision: the mark as a feature (channel {unit} of {site})", text=(
        f"The channel of {site} that the mark drives most, found on twins with and without it; on fresh shapes "
        f"where the mark is uninformative, {marked_share:.0%} of its top-8 cells come from marked images, "
        f"boxed by their receptive field (chance: about half). Adding the mean difference between marked "
        f"and unmarked twins at {site} to unmarked circles and triangles moves P(class 0) from "
        f"{steer.mean[0]:.2f} to {steer.mean[-1]:.2f} (the real mark: {p_on:.2f}): the direction is the "
        "model's reading of the mark."),
        figure=ex.plot(dataset=fresh), caption="Top-8 cells of the channel on fresh shapes; each panel is titled "
                                               "with the channel's activation at the cell and the image's index, "
                                               "the red box is the cell's receptive field.",
        numbers={"unit": unit, "top_cells_from_marked_images": marked_share, "steering": steer.table})
    fig = steer.plot()
    fig.axes[0].axhline(p_on, color="C3", ls=":", lw=1, label="with the real mark")
    fig.axes[0].legend(fontsize=7)
    report.add("Vision: steering along the mark direction", text=(
        f"P(class 0) of {int(other.sum())} unmarked shapes of other classes as alpha times the mark direction "
        f"(marked minus unmarked mean at {site}) is added: alpha = 1 adds the full mean difference. The curve "
        "rises monotonically towards the probability the real mark gives."),
        figure=fig, table=[{"alpha": float(a), "P(class 0)": float(m)} for a, m in zip(steer.alphas, steer.mean)])


def _featvis(report: Any, quick: bool) -> None:
    digits_cnn = zoo.load("digits-cnn")
    norm = featvis.normalizer(DIGITS_MEAN, DIGITS_STD)
    classes = range(4) if quick else range(10)
    images, hits = [], 0
    for c in classes:
        vis = featvis.visualize(digits_cnn, featvis.channel("logits", c), steps=100,
                                image_shape=(1, 8, 8), seed=0, lr=0.05, preprocess=norm)
        images.append(vis.image[0, 0])
        with torch.no_grad():
            hits += int(digits_cnn(norm(vis.image)).argmax(-1)[0]) == c
    fig = image_row(images, [f"digit {c}" for c in classes], title="inputs that maximise each class logit")
    report.add("Vision: what each digit looks like to the CNN (feature visualisation)", text=(
        "Inputs optimised (Fourier parameterisation, jitter/scale/rotate robustness, Adam) to maximise each "
        f"class logit of the digits CNN; {hits} of {len(images)} are classified as their class. The inputs are "
        "8x8 pixels, shown enlarged with nearest-neighbour upsampling (each square is one pixel)."),
        figure=fig, numbers={"classified_as_target": hits, "classes": len(images)})


def _universality(report: Any, quick: bool) -> None:
    from interp_core.universality import Comparison, universality_study

    vit = zoo.load("digits-vit")
    x, _ = zoo.test_data("digits-vit")
    seeds = (0, 1) if quick else (0, 1, 2)
    data = list(x.split(200))
    cnn_sites = ["stem", "layer1.0", "layer2.0", "logits"]
    vit_sites = ["embed", *[f"blocks.{i}.resid_post" for i in range(3)], "logits"]
    comps = [Comparison(f"digits-cnn seed 0 vs {s}", zoo.load("digits-cnn"), zoo.load(f"digits-cnn@seed{s}"), data,
                        cnn_sites, cnn_sites, baseline=zoo.load(f"digits-cnn-random@seed{s}")) for s in seeds[1:]]
    comps += [Comparison(f"digits-vit seed 0 vs {s}", vit, zoo.load(f"digits-vit@seed{s}"), data, vit_sites,
                         vit_sites, baseline=zoo.load(f"digits-vit-random@seed{s}")) for s in seeds[1:]]
    comps.append(Comparison("digits-cnn vs digits-vit", zoo.load("digits-cnn"), vit, data, cnn_sites, vit_sites,
                            baseline=zoo.load("digits-vit-random")))
    study = universality_study(comps)
    report.add("Universality: do differently seeded and built digit classifiers learn the same features?", text=(
        "Linear CKA between the sites of two models on the same digits (mean-pooled), and the correlation of "
        "units matched one-to-one (Hungarian), each beside the same comparison against a random-init model B."),
        figure=study.plot(), table=study.table)


def stages(quick: bool = False) -> list[tuple[str, Callable[[Any], None]]]:
    """The vision sections as named stages ``(name, fn(report))`` (``quick``: fewer images, same analyses)."""
    from . import demo_circuits, demo_features

    def bind(fn: Callable[[Any, bool], None]) -> Callable[[Any], None]:
        return lambda report: fn(report, quick)

    own = [("logit lens", _lens), ("3-vs-8 patching", _patching), ("shapes probes", _shapes_probes),
           ("shortcut", _shortcut), ("mark feature", _mark_feature), ("feature visualisation", _featvis)]
    return ([(name, bind(fn)) for name, fn in own] + demo_features.stages(quick) + demo_circuits.stages(quick)
            + [("universality", bind(_universality))])


def add_to_report(report: Any, quick: bool = False) -> None:
    """Add every vision section to ``report`` (``quick``: fewer images, same analyses)."""
    for _, run in stages(quick):
        run(report)
