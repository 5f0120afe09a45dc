"""``interp report``: the standard analysis of one model, chosen by its domain, as one report.

For a classifier (any model with a batch of inputs): the site table; the logit lens when the ``vision``
adapter's ViT sites are there; linear probes with control tasks at the default sites when labels are given;
an exact patching sweep when a clean/corrupted contrast is given (for a ViT also its circuit, by ACDC);
attribution maps (integrated gradients) for image inputs. For an agent (a model that can act in its
environment): the site table and the world-model probes with their controls (random-init twin, observation
probe, control task). Each step is one of the
suite's public methods, entered through the boundary like any other call; the domain packages are imported by
name.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["standard_report"]


def _site_rows(hm: Any) -> list[dict[str, Any]]:
    rows = []
    for name in hm.default_sites:
        s = hm.sites[name]
        rows.append({"site": name, "axes": ",".join(s.axes or ()), "shape": "x".join(map(str, s.shape or ())),
                     "description": s.description})
    return rows


def standard_report(args: argparse.Namespace, load_model: Callable, load_data: Callable, pick_sites: Callable,
                    parse_metric: Callable, new_report: Callable) -> Any:
    hm = load_model(args)
    is_agent = hasattr(hm, "make_env")
    report = new_report(args, f"Analysis of {args.model}",
                        f"The standard {'agent' if is_agent else 'classifier'} analysis of {args.model} "
                        f"({type(hm.model).__name__}, {hm.adapter.name} adapter, {len(hm.sites)} sites).")
    report.add("Sites", text="The sites the analyses below use by default: their axes (batch, pos, head, "
               "feature) and the per-example shape. `interp sites MODEL` lists every site.", table=_site_rows(hm))
    if is_agent:
        return _agent_sections(hm, args, report)
    x, y = load_data(args, hm)
    sites = pick_sites(args, hm)
    if hm.adapter.name == "vit":
        lens = importlib.import_module("vision").logit_lens(hm, (x, y) if y is not None else x)
        report.add("Logit lens", text="The CLS residual stream after each block, decoded through the final norm "
                   "and the classifier head: where the prediction forms.", figure=lens.plot(),
                   numbers=lens.to_dict())
    if y is not None:
        from .probes import probe_sites

        probes = probe_sites(hm, x, y, sites=sites, pool=getattr(args, "pool", "mean") or "mean")
        report.add("Probes with control tasks", text="A linear probe per site for the labels, on held-out inputs, "
                   "beside a control task of the same label frequencies (Hewitt & Liang 2019).",
                   figure=probes.plot(), table=probes.table)
    if getattr(args, "clean", None) and getattr(args, "corrupted", None):
        from .patching import patch_sweep

        clean, _ = load_data(args, hm, args.clean, labels=False)
        corrupted, _ = load_data(args, hm, args.corrupted, labels=False)
        n = min(len(clean), len(corrupted))
        metric = parse_metric(getattr(args, "metric", None))
        patching = patch_sweep(hm, clean[:n], corrupted[:n], sites, metric)
        report.add("Activation patching", text=f"Exact denoising patching of {metric.name}: each unit of each site "
                   f"set to its clean value in the corrupted run; 1 = the clean metric is restored.",
                   figure=patching.plot(), table=patching.top(15))
        if hm.adapter.name == "vit":
            _circuit_section(hm, clean[:n], corrupted[:n], metric, report)
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        from .attribution import attribute

        images = x[:6]
        target = y[:6] if y is not None else hm(images).argmax(-1)
        attr = attribute(hm, images, "integrated_gradients", target=target, n_steps=32)
        report.add("Attribution maps", text="Integrated gradients (Sundararajan et al. 2017) of each image's "
                   "target logit, against a black baseline.", figure=attr.plot())
    return report


def _circuit_section(hm: Any, clean: Any, corrupted: Any, metric: Any, report: Any) -> None:
    """The ViT's circuit for the contrast: ACDC on the graph of heads and MLPs, with its faithfulness."""
    import matplotlib.pyplot as plt

    from .circuits import acdc, build_graph

    graph = build_graph(hm)
    circuit = acdc(hm, clean, corrupted, metric, threshold=0.01, graph=graph, progress=False)
    report.add("Circuit (ACDC)", text=f"ACDC (Conmy et al. 2023, threshold 0.01) on the graph of embedding, heads, "
               f"MLPs and logits keeps {len(circuit.edges)} of {graph.n_edges} edges for {metric.name}; run alone, "
               f"every other edge fed from the corrupted run, they recover {circuit.faithfulness:.0%} of the "
               "clean-minus-corrupted metric. `interp circuit` adds edge scores and the faithfulness curve.",
               figure=circuit.plot(ax=plt.subplots(figsize=(9.5, 3.8))[1]), numbers=circuit.to_dict())


def _agent_sections(agent: Any, args: argparse.Namespace, report: Any) -> Any:
    worldmodel = importlib.import_module("rl.worldmodel")
    episodes = int(getattr(args, "limit", None) or 60)
    result = worldmodel.probe(agent, episodes=episodes)
    report.add("World-model probes", text="For each world variable and site, a probe on held-out episodes beside "
               "its controls: the random-init twin, a probe on the raw observation, and the control task. A "
               "variable visible in the observation is not evidence of memory, whatever the score.",
               figure=result.plot(), table=importlib.import_module("rl.demo").report_rows(result))
    return report
