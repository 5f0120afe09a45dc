"""``interp demo``: the richest end-to-end analysis the suite runs on its embedded models, as one report.

Each domain package contributes sections through ``add_to_report(report, quick)`` in its ``demo`` module
(:mod:`vision.demo`: logit lens, patching with attribution-patching agreement, probes with control tasks,
shortcut finding, universality across seeds and architectures; :mod:`rl.demo`: world-model probes with
controls, the causal check, DoorKey's "not evidence" verdicts, CartPole's sanity check). They are imported
by name, so :mod:`interp_core` does not depend on them, and a missing domain (e.g. installed without the
``rl`` extra) is reported in the output instead of failing the whole run.

The report is written atomically to ``out/`` (``report.html`` with every figure embedded, ``results.json``
with every number, ``figures/*.png``). Everything runs on the CPU with the shipped models, offline.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from pathlib import Path

import torch

from .report import Report

log = logging.getLogger(__name__)

DOMAINS = ("vision.demo", "rl.demo")


def run_demo(out: str | os.PathLike = "interp-demo", quick: bool = False, domains: tuple[str, ...] = DOMAINS,
             ) -> Path:
    """Run every domain's demo sections and write the report to ``out``; returns the ``report.html`` path."""
    import matplotlib

    matplotlib.use("Agg")
    report = Report("interp-suite demo: vision models and RL agents, one toolkit")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the embedded models are tiny: one thread is faster and reproducible
    try:
        for name in domains:
            t0 = time.perf_counter()
            try:
                module = importlib.import_module(name)
            except ImportError as e:
                report.add(f"{name}: not run", text=f"{e}. Install the extra that provides it, e.g. "
                                                    "pip install 'interp-suite[rl]'.")
                continue
            module.add_to_report(report, quick=quick)
            log.info("%s: %.1f s", name, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return report.write(out)
