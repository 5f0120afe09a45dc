"""``interp sae`` and ``interp circuit``: finding features and circuits in a user's model, as a report.

``interp sae MODEL --data DATA --site S [--latents N --k K]``: the inputs are split by index (the first
``1 - test_share`` train, the rest are held out); a TopK SAE (or ``--variant``) is trained on the site's rows
(:func:`~interp_core.features.train_saes`: positions folded into rows), evaluated on the held-out inputs
(:func:`~interp_core.features.evaluate_sae`), spliced into the model in place of the site
(:func:`~interp_core.features.splice_eval`), and its most frequent latents listed with the held-out inputs that
activate them most (image inputs: a contact sheet through :func:`vision.exemplars.top_exemplars`). The SAE is
saved as ``sae.pt`` beside the report.

``interp circuit MODEL --clean DATA --corrupted DATA (--metric M | --target C)``: on the model's circuit graph
(:func:`~interp_core.circuits.build_graph`; ``--layers`` for a sequential model, ``--steps`` for a recurrent
policy), edge scores by EAP / EAP-IG / exact patching, ACDC pruning at ``--threshold``, and the faithfulness
curve of the top edges against random circuits of the same size. The circuit is saved as ``circuit.json``.

Both write the suite's report format (``report.html``, ``results.json``, ``figures/``) to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["sae_report", "circuit_report"]


def _split(x: Any, y: Any, test_share: float) -> tuple[Any, Any, Any, Any]:
    if not 0 < test_share < 1:
        raise InputError(f"--test-share: a share in (0, 1), got {test_share}")
    n_test = max(1, round(len(x) * test_share))
    if len(x) - n_test < 2:
        raise InputError(f"--data: {len(x)} inputs are too few to train and hold out; give at least 4")
    cut = len(x) - n_test
    return x[:cut], x[cut:], (None if y is None else y[:cut]), (None if y is None else y[cut:])


def sae_report(args: argparse.Namespace, load_model: Callable, load_data: Callable, new_report: Callable) -> Any:
    """The ``interp sae`` report (module docstring)."""
    import torch

    from .features import SparseAutoencoder, evaluate_sae, splice_eval, train_saes

    hm = load_model(args)
    if not args.site:
        raise InputError("--site: name the site to train the SAE on (interp sites MODEL lists them)")
    site = hm.sites[args.site].name
    x, y = load_data(args, hm)
    x_train, x_test, _, y_test = _split(x, y, args.test_share)
    sae = SparseAutoencoder(args.latents, variant=args.variant, k=args.k, epochs=args.epochs, seed=args.seed)
    sae = train_saes(hm, x_train, site, sae=sae, seed=args.seed, progress=False)[site]
    with hm.analysis():
        _, cache = hm.run_with_cache(x_test, sites=[site])
    ev = evaluate_sae(sae, cache, site)
    spliced = splice_eval(hm, sae, x_test if y_test is None else (x_test, y_test), site)
    path = sae.save(Path(args.out) / "sae.pt")
    report = new_report(args, f"Sparse autoencoder at {site} of {args.model}",
                        f"A {args.variant} SAE with {sae.n_latents_} latents (k = {args.k}) trained on {site} over "
                        f"{len(x_train)} inputs, evaluated on {len(x_test)} held-out inputs; saved to {path}.")
    report.add("Reconstruction and sparsity", text=(
        "On the held-out inputs: MSE per entry, FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (fraction of "
        "variance unexplained), L0 = active latents per row, dead = never firing, dense = firing on more than 10% "
        "of rows. The figure: each latent's firing frequency."), figure=ev.plot(),
        table=[{"measure": k, "value": float(getattr(ev, k))}
               for k in ("mse", "fvu", "l0", "dead_fraction", "dense_fraction")] + [
            {"measure": "rows", "value": ev.n_rows}],
        numbers=ev.to_dict())
    report.add("The SAE spliced into the model", text=(
        f"The model run with {site} replaced by the SAE's reconstruction, beside {site} zero- and mean-ablated: "
        "the share of KL to the clean outputs (and of accuracy, with labels) that the SAE keeps."),
        figure=spliced.plot(), table=[{"condition": c, **v} for c, v in spliced.values.items()],
        numbers=spliced.to_dict())
    rows = cache.features(site)
    f = sae.encode(rows)
    per_input = rows.shape[0] // len(x_test)
    by_input = f.reshape(len(x_test), per_input, -1).amax(1)  # [inputs, latents]: max over positions
    freq = ev.firing_frequency
    top = [int(i) for i in freq.argsort(descending=True)[: args.show]]
    table = []
    for i in top:
        best = by_input[:, i].argsort(descending=True)[:5].tolist()
        table.append({"latent": i, "firing rate": float(freq[i]), "max activation": float(by_input[:, i].max()),
                      "top held-out inputs": ", ".join(str(j) for j in best)})
    figure = None
    if isinstance(x_test, torch.Tensor) and x_test.dim() == 4 and not getattr(hm, "recurrent", False):
        exemplars = importlib.import_module("vision.exemplars")
        ex = exemplars.top_exemplars(hm, x_test, site, features=sae.encode, channels=top[:8], k=6, by="image",
                                     box="stride" if per_input > 1 else None)
        ex.units = [f"latent {i}" for i in top[:8]]
        figure = ex.plot()
    report.add("The most frequent latents and the inputs that activate them", text=(
        "Each latent's firing rate over held-out rows and the held-out inputs (index within the held-out "
        "split) where it is largest (max over positions)."), figure=figure, table=table)
    return report


def circuit_report(args: argparse.Namespace, load_model: Callable, load_data: Callable, parse_metric: Callable,
                   new_report: Callable) -> Any:
    """The ``interp circuit`` report (module docstring)."""
    import matplotlib.pyplot as plt

    from .boundary import as_metric
    from .circuits import acdc, build_graph, eap, eap_ig, edge_patching, faithfulness_curve

    hm = load_model(args)
    clean, _ = load_data(args, hm, args.clean or args.data, labels=False)
    corrupted, _ = load_data(args, hm, args.corrupted, labels=False)
    n = min(len(clean), len(corrupted))
    if args.metric and args.target is not None:
        raise InputError("--metric, --target: give one (a target class c is the metric logit:c)")
    metric = parse_metric(args.metric) if args.metric or args.target is None else as_metric(target=args.target)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()] if args.layers else None
    graph = build_graph(hm, layers=layers, steps=args.steps, example_input=clean[:2] if layers else None)
    clean, corrupted = clean[:n], corrupted[:n]
    finder = {"eap": eap, "eap-ig": eap_ig, "exact": edge_patching}[args.method]
    scores = finder(hm, clean, corrupted, metric, graph=graph)
    circuit = acdc(hm, clean, corrupted, metric, threshold=args.threshold, graph=graph, progress=False)
    curve = faithfulness_curve(hm, scores, clean, corrupted, metric, n_random=args.n_random, graph=graph,
                               sizes=sorted({*range(1, graph.n_edges, max(1, graph.n_edges // 10)),
                                             len(circuit.edges) or 1, graph.n_edges}))
    path = circuit.save(Path(args.out) / "circuit.json")
    report = new_report(args, f"Circuit of {args.model} for {metric.name}",
                        f"A circuit over {graph.n_edges} edges of {args.model} for {metric.name}, from {n} clean/"
                        f"corrupted pairs: edge scores by {args.method}, ACDC pruning (threshold {args.threshold}) "
                        f"and its faithfulness against random circuits; saved to {path}.")
    report.add("The circuit (ACDC)", text=(
        f"ACDC keeps {len(circuit.edges)} of {graph.n_edges} edges. Faithfulness = (m(circuit) - m(corrupted)) / "
        f"(m(clean) - m(corrupted)), every edge outside the circuit fed from the corrupted run: "
        f"{circuit.faithfulness:.3f}."), figure=circuit.plot(ax=plt.subplots(figsize=(9.5, 3.8))[1]),
        table=[{"edge": f"{s} -> {r}", "score": float(circuit.scores.get(f"{s} -> {r}", float("nan")))}
               for s, r in circuit.edges], numbers=circuit.to_dict())
    report.add(f"Edge scores ({args.method})", text="The edges with the largest scores: the change of the metric "
               "when the edge alone is fed from the corrupted run (estimated for EAP / EAP-IG).",
               figure=scores.plot(), table=[{"edge": f"{s} -> {r}", "score": float(v)} for (s, r), v in scores.top(20)])
    report.add("Faithfulness against random circuits", text=(
        f"Faithfulness of the top-k edges by {args.method} for growing k, beside {args.n_random} random circuits "
        "of each size (mean and one standard deviation). With every edge, the model is the clean model (1)."),
        figure=curve.plot(),
        table=[{"edges": int(s), "top-k": float(f), "random (mean)": float(r), "random (std)": float(d)}
               for s, f, r, d in zip(curve.sizes, curve.faithfulness, curve.random_mean, curve.random_std)],
        numbers=curve.to_dict())
    return report
