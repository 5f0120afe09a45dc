"""The sparse-autoencoder stage of ``interp demo`` on the digits CNN (the vision half of issue 12's demo).

A TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders") is trained on the cells of the
digits CNN's ``layer2.0`` (``[batch, 32, 4, 4]``: every cell of every training image is a row of 32 features)
with :func:`interp_core.features.train_saes`, then:

- evaluated on the test split (:func:`~interp_core.features.evaluate_sae`: FVU, L0, dead and dense latents);
- spliced into the model's forward in place of ``layer2.0`` (:func:`~interp_core.features.splice_eval`: the
  share of accuracy and of KL kept against zero- and mean-ablating the site);
- its latents made a site (:func:`~interp_core.features.with_latents`) and patched one by one from images of
  a 3 into images of an 8 (exact denoising patching, metric logit(3) - logit(8)): the latents that carry the
  decision;
- those latents shown by their top exemplar cells (:func:`vision.exemplars.top_exemplars` with the SAE encoder
  as the feature map), each labelled with the digit class most common among its exemplars.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

SITE = "layer2.0"


def sae_stage(report: Any, quick: bool = False) -> None:
    """Train, evaluate, splice and read a TopK SAE on the digits CNN; adds two sections to ``report``."""
    from interp_core.features import SparseAutoencoder, evaluate_sae, splice_eval, train_saes, with_latents
    from interp_core.metrics import logit_diff
    from interp_core.patching import patch_sweep

    from . import zoo
    from .data import digits_tensors
    from .exemplars import top_exemplars

    n_latents, k, epochs = (64, 4, 3) if quick else (128, 4, 8)
    cnn = zoo.load("digits-cnn")
    x_train, _ = digits_tensors("train")
    x, y = zoo.test_data("digits-cnn")
    sae = train_saes(cnn, x_train, SITE, sae=SparseAutoencoder(n_latents, variant="topk", k=k, epochs=epochs,
                                                                 seed=0), progress=False)[SITE]
    _, cache = cnn.run_with_cache(x, sites=[SITE])
    ev = evaluate_sae(sae, cache, SITE)
    spliced = splice_eval(cnn, sae, (x, y), SITE)
    acc = spliced.values["spliced"].get("accuracy", float("nan"))
    report.add(f"Features: a sparse autoencoder on the digits CNN ({SITE})", text=(
        f"A TopK SAE with {n_latents} latents, k = {k} active per row (Gao et al. 2024), trained on every "
        f"4x4 cell of {SITE} over {len(x_train)} training digits ({len(x_train) * 16} rows of 32 features). On "
        f"the {len(x)} test digits it leaves {ev.fvu:.1%} of the variance unexplained (FVU) with {ev.l0:.1f} "
        f"active latents per cell; {ev.dead_fraction:.0%} of latents never fire. Spliced into the forward in "
        f"place of {SITE}, the model keeps {acc:.1%} accuracy (clean "
        f"{spliced.values['clean']['accuracy']:.1%}, {SITE} zero-ablated "
        f"{spliced.values['zero']['accuracy']:.1%}): {spliced.kept['kl']['zero']:.1%} of the KL divergence that "
        "zero-ablation causes is recovered."),
        figure=spliced.plot(), caption="Share kept by the spliced SAE (1 = the clean model) against zero- and "
                                       "mean-ablating the site, for accuracy and for KL to the clean outputs.",
        table=[{"measure": m, "clean": spliced.values["clean"].get(m), "spliced": spliced.values["spliced"].get(m),
                "zero-ablated": spliced.values["zero"].get(m), "mean-ablated": spliced.values["mean"].get(m)}
               for m in spliced.values["clean"]],
        numbers={"fvu": ev.fvu, "l0": ev.l0, "mse": ev.mse, "dead_fraction": ev.dead_fraction,
                 "dense_fraction": ev.dense_fraction, "splice": spliced.to_dict()})

    hm = with_latents(cnn, {SITE: sae})
    latents = f"{SITE}.latents"
    three, eight = x[y == 3], x[y == 8]
    n = min(len(three), len(eight), 16 if quick else 32)
    sweep = patch_sweep(hm, three[:n], eight[:n], [latents], logit_diff(3, 8), per="feature", progress=False)
    effects = sweep.effects[latents].flatten()
    top = [int(i) for i in effects.abs().argsort(descending=True)[:4 if quick else 6]]
    ex = top_exemplars(cnn, x, SITE, features=sae.encode, channels=top, k=6, by="cell", box="receptive")
    rows = []
    for r, latent in enumerate(top):
        classes = [int(y[i]) for i in ex.indices[r].tolist() if i >= 0]
        label, count = Counter(classes).most_common(1)[0] if classes else (None, 0)
        rows.append({"latent": latent, "patching effect": float(effects[latent]),
                     "firing rate": float(ev.firing_frequency[latent]), "label (top exemplars)": f"digit {label}",
                     "label share": count / max(len(classes), 1)})
    ex.units = [f"latent {i}\n(digit {row['label (top exemplars)'][6:]})" for i, row in zip(top, rows)]
    report.add("Features: which SAE latents decide 3 vs 8? (latents as sites)", text=(
        f"The SAE's latents become a site of the model ({latents}: [batch, latent, h, w]; editing a latent "
        "changes the model's activation by the decoder's column, the SAE's error kept). Each latent is patched "
        f"from {n} images of a 3 into paired images of an 8 (all cells at once, exact denoising patching, "
        "logit(3) - logit(8), 0 = corrupted, 1 = clean). The latents with the largest effects, each shown by the "
        "test cells that activate it most and labelled with the digit most common among them."),
        figure=ex.plot(), caption="One row per latent: its top-6 test cells, titled with the latent's activation "
                                  "and the test image's index; the red box is the cell's receptive field.",
        table=rows, numbers={"effects": effects.tolist(), "top": top})


def stages(quick: bool = False) -> list[tuple[str, Callable[[Any], None]]]:
    """The SAE stage as ``(name, fn(report))``."""
    return [("sparse autoencoder", lambda report: sae_stage(report, quick))]
