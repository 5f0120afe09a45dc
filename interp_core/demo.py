"""``interp demo``: the richest end-to-end analysis the suite runs on its embedded models, as one report.

Each domain package contributes named stages through ``stages(quick) -> [(name, fn(report)), ...]`` in its
``demo`` module (:mod:`vision.demo`: logit lens and attention rollout, patching with the attribution-patching
scatter, probes with control tasks, shortcut finding, the mark as a feature with its steering curve, feature
visualisation, a sparse autoencoder on the digits CNN with its latents as sites (:mod:`vision.demo_features`),
the digits ViT's 3-vs-8 circuit (:mod:`vision.demo_circuits`), universality across seeds and architectures;
:mod:`interp_core.demo_toy`: toy models of superposition; :mod:`rl.demo`: world-model probes with controls,
the causal check, a sparse autoencoder on the T-maze agent's memory (:mod:`rl.demo_features`), DoorKey's
"not evidence" verdicts, CartPole's sanity check); a module with only ``add_to_report(report, quick)`` is one
stage. They are imported by name, so :mod:`interp_core`
does not depend on them, and a missing domain (e.g. installed without the ``rl`` extra) is reported in the
output instead of failing the whole run.

Progress: ``on_stage(i, n, name, seconds, cached)`` is called after each stage (the CLI prints one line per
stage). Resuming: each finished stage's sections are saved atomically under ``out/.stages/`` (keyed by the
stage, ``quick`` and the suite's version), so a run that was interrupted continues where it stopped;
``fresh=True`` recomputes everything.

The report is written atomically to ``out/`` (``report.html`` with every figure embedded, ``results.json``
with every number, ``figures/*.png``). Everything runs on the CPU with the shipped models, offline.
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .report import Report, Section
from .results import jsonable, save_json

log = logging.getLogger(__name__)

DOMAINS = ("vision.demo", "interp_core.demo_toy", "rl.demo")
StageHook = Callable[[int, int, str, float, bool], None]


def _stages(module: Any, quick: bool) -> list[tuple[str, Callable[[Report], None]]]:
    if hasattr(module, "stages"):
        return list(module.stages(quick))
    return [(module.__name__, lambda report: module.add_to_report(report, quick=quick))]


def _key(domain: str, name: str, quick: bool) -> str:
    from . import __version__

    slug = re.sub(r"[^a-z0-9]+", "-", f"{domain}-{name}".lower()).strip("-")
    return f"{slug}{'-quick' if quick else ''}-v{__version__}"


def _save_stage(path: Path, sections: list[Section]) -> None:
    save_json([{"title": s.title, "text": s.text, "table": s.table, "numbers": jsonable(s.numbers),
                "caption": s.caption,
                "figure_png": base64.b64encode(s.figure_png).decode() if s.figure_png else None}
               for s in sections], path)


def _load_stage(path: Path) -> list[Section] | None:
    try:
        items = json.loads(path.read_text())
        return [Section(i["title"], i["text"], base64.b64decode(i["figure_png"]) if i["figure_png"] else None,
                        i["table"], i["numbers"], i.get("caption", "")) for i in items]
    except (OSError, ValueError, KeyError, TypeError):  # a damaged cache file: recompute the stage
        return None


def run_demo(out: str | os.PathLike = "interp-demo", quick: bool = False, domains: tuple[str, ...] = DOMAINS,
             fresh: bool = False, on_stage: StageHook | None = None) -> Path:
    """Run every domain's demo stages and write the report to ``out``; returns the ``report.html`` path."""
    import matplotlib
    import torch

    matplotlib.use("Agg")
    out = Path(out)
    cache = out / ".stages"
    report = Report("interp-suite demo: vision models and RL agents, one toolkit",
                    description="Every analysis the suite runs, on the models it trained and ships: where a ViT "
                                "decides, what CNN layers encode, a planted shortcut found four ways, the features "
                                "a sparse autoencoder finds, the circuit behind a decision, superposition in toy "
                                "models, how universal features are across seeds and architectures, and whether RL "
                                "agents remember — and use — what probes find.",
                    command=f"interp demo --out {out}{' --quick' if quick else ''}",
                    meta={"quick": quick, "torch threads": 1, "seeds": "fixed in each analysis (0 unless stated)"})
    plan: list[tuple[str, str, Callable[[Report], None] | None, str]] = []
    for name in domains:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            plan.append((name, "not run", None, f"{e}. Install the extra that provides it, e.g. "
                                                  f"pip install 'interp-suite[rl]'."))
            continue
        plan.extend((name, stage, fn, "") for stage, fn in _stages(module, quick))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the embedded models are tiny: one thread is faster and reproducible
    try:
        for i, (domain, stage, fn, note) in enumerate(plan):
            t0 = time.perf_counter()
            if fn is None:
                report.add(f"{domain}: not run", text=note)
                continue
            path = cache / f"{_key(domain, stage, quick)}.json"
            sections = None if fresh else (_load_stage(path) if path.exists() else None)
            cached = sections is not None
            if sections is None:
                before = len(report.sections)
                fn(report)
                _save_stage(path, report.sections[before:])
            else:
                report.sections.extend(sections)
            seconds = time.perf_counter() - t0
            log.info("[%d/%d] %s: %s %.1f s%s", i + 1, len(plan), domain, stage, seconds, " (cached)" if cached else "")
            if on_stage is not None:
                on_stage(i + 1, len(plan), f"{domain}: {stage}", seconds, cached)
    finally:
        torch.set_num_threads(threads)
    return report.write(out)
