"""One self-contained HTML report per run, built from result objects and their figures.

``Report(title, description=..., command=...)`` collects sections — text, a figure (saved as PNG beside the
report and embedded), a table of rows (list of dicts), and the numbers (any result's ``to_dict()``) — then
``write(folder)`` writes ``report.html`` (no external files needed to view it), ``results.json`` and
``figures/*.png`` atomically.

The page explains itself: an opening says what was analysed, a table of contents links every section, the run
metadata (package versions, seeds, date, machine, the command that reproduces it) and a glossary of every
column and verdict the tables use (:data:`GLOSSARY`) close it. Every string from the caller (titles, class and
site names, paths) is escaped. A rerun into the same folder replaces the figures the earlier report recorded as
its own (``figures/.report-figures.json``) and leaves every other file alone.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .results import jsonable, save_json

OWN_FIGURES = ".report-figures.json"  # the figures a report wrote, so a rerun removes exactly those

# Definitions of the columns and verdicts the suite's tables use; a report lists those that its tables show.
GLOSSARY: dict[str, str] = {
    "site": "a named place in the model whose activation is read or replaced (a layer's output, a head, a "
            "recurrent state)",
    "test_score": "the probe's score on held-out inputs (accuracy for classes, R² for continuous targets)",
    "train_score": "the probe's score on the inputs it was fitted on",
    "control_score": "the score of the same probe on a control task (Hewitt & Liang 2019): labels re-assigned at "
                     "random per input type, so only memorisation can fit them",
    "control": "the control task's score (see control_score)",
    "selectivity": "test_score minus control_score: how much of the probe's score the representation, not the "
                   "probe's capacity, explains (Hewitt & Liang 2019)",
    "metric": "what a score measures (accuracy, R², a logit difference, ...)",
    "n_train": "number of rows the probe was fitted on", "n_test": "number of held-out rows",
    "d": "width of the activation rows (features, heads x features)",
    "k": "how many steps ahead a future-state probe predicts (0: the present state)",
    "visible_rate": "share of the probed steps on which the variable is visible in the agent's own observation",
    "obs_baseline": "the score of the same probe on the raw observation: what needs no memory or computation",
    "twin": "the score of the same probe on the random-init twin (same architecture, never trained)",
    "random_init": "the score of the same probe on the random-init twin (same architecture, never trained)",
    "chance": "the score of always predicting the most frequent class",
    "verdict": "what the probe scores allow one to say, given the controls (visible variables are never "
               "evidence of memory; a score the random-init twin also reaches is not evidence of learning)",
    "effect": "normalised patching effect: 0 = the corrupted run's metric, 1 = the clean run's",
    "normalised effect": "(metric after patching - corrupted metric) / (clean metric - corrupted metric)",
    "accuracy": "share of inputs whose top class is the label",
    "cka": "centred kernel alignment (Kornblith et al. 2019): 1 = the same representation up to rotation and "
           "scale, 0 = unrelated",
    "cka_depth": "linear CKA between sites at the same relative depth of two models",
    "cka_depth_baseline": "the same CKA with model B replaced by its random-init twin",
    "outcome_flip_rate": "share of episodes whose outcome changes when the activation is edited",
    "action_tv": "total-variation distance between the action distributions before and after the edit",
    "ci": "95% confidence interval over agents or seeds",
    "fvu": "fraction of variance unexplained by an SAE's reconstruction: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2",
    "l0": "active SAE latents per row (mean)",
    "firing rate": "share of rows on which an SAE latent is non-zero",
    "patching effect": "normalised effect of patching the unit from the clean run into the corrupted one: 0 = "
                       "corrupted metric, 1 = clean metric",
    "label (top exemplars)": "the class most common among the inputs that activate the latent most",
    "label share": "share of the latent's top exemplars that carry that label",
    "EAP score": "edge attribution patching (Syed et al. 2023): first-order estimate of the metric change when the "
                 "edge alone is fed from the corrupted run",
    "score": "the method's score for the row (a probe's held-out accuracy or R², an edge's effect, ...)",
    "top-k by EAP-IG": "faithfulness of the circuit made of the k edges with the largest EAP-IG scores",
    "random (mean)": "mean faithfulness of random circuits with the same number of edges",
    "random (std)": "standard deviation of that faithfulness over the random circuits",
    "top-k": "faithfulness of the circuit made of the k best-scored edges",
    "faithfulness": "(metric of the model restricted to the circuit - corrupted metric) / (clean metric - "
                    "corrupted metric); 1 = the circuit does all the work",
    "success rate": "share of episodes whose final reward is positive",
    "features represented": "toy-model features whose column of W has norm above 0.5",
    "mean dimensionality": "mean over features of D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 (Elhage et al. 2022)",
}


@dataclass
class Section:
    title: str
    text: str = ""
    figure_png: bytes | None = None
    table: list[dict[str, Any]] | None = None
    numbers: Any = None
    caption: str = ""


@dataclass
class Report:
    """A report: ``title``, an opening ``description`` and the ``command`` that reproduces it; ``meta`` adds rows
    to the run metadata (seeds, data, ...)."""

    title: str
    sections: list[Section] = field(default_factory=list)
    description: str = ""
    command: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, title: str, text: str = "", figure: Any = None, table: list[dict[str, Any]] | None = None,
            numbers: Any = None, caption: str = "") -> Section:
        """Add a section; ``figure`` is a matplotlib Figure (closed after rendering)."""
        png = None
        if figure is not None:
            import matplotlib.pyplot as plt

            buf = io.BytesIO()
            figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            plt.close(figure)
            png = buf.getvalue()
        s = Section(title, text, png, table, numbers, caption)
        self.sections.append(s)
        return s

    def metadata(self) -> dict[str, str]:
        """Run metadata: date, machine, Python and package versions, the command, and ``meta``."""
        from importlib import metadata as md

        rows = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
                "python": platform.python_version()}
        for pkg in ("interp-suite", "torch", "torchvision", "timm", "scikit-learn", "captum", "gymnasium",
                    "stable-baselines3"):
            try:
                rows[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                continue
        if self.command:
            rows["command"] = self.command
        rows.update({str(k): str(v) for k, v in self.meta.items()})
        return rows

    def write(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        (folder / "figures").mkdir(parents=True, exist_ok=True)
        esc = html.escape
        anchors = [f"s{i}-" + (re.sub(r"[^a-z0-9]+", "-", s.title.lower()).strip("-")[:40] or "section")
                   for i, s in enumerate(self.sections)]
        parts = [f"<h1>{esc(self.title)}</h1>"]
        if self.description:
            parts.append(f'<p class="lead">{esc(self.description)}</p>')
        toc = "".join(f'<li><a href="#{a}">{esc(s.title)}</a></li>' for a, s in zip(anchors, self.sections))
        parts.append(f'<nav id="contents"><h2>Contents</h2><ol>{toc}'
                     f'<li><a href="#glossary">Glossary</a></li><li><a href="#run">About this run</a></li></ol></nav>')
        written: set[str] = set()
        columns: set[str] = set()
        for i, (anchor, s) in enumerate(zip(anchors, self.sections)):
            parts.append(f'<section id="{anchor}"><h2>{esc(s.title)}</h2>')
            if s.text:
                parts.append("".join(f"<p>{esc(p)}</p>" for p in s.text.split("\n\n")))
            if s.figure_png is not None:
                slug = re.sub(r"[^a-z0-9]+", "-", s.title.lower()).strip("-")[:60] or f"figure-{i}"
                name = f"{i:02d}-{slug}.png"
                (folder / "figures" / name).write_bytes(s.figure_png)
                written.add(name)
                b64 = base64.b64encode(s.figure_png).decode()
                cap = f"<figcaption>{esc(s.caption)}</figcaption>" if s.caption else ""
                parts.append(f'<figure><img alt="{esc(s.title)}" src="data:image/png;base64,{b64}">{cap}</figure>')
            if s.table:
                cols = list(dict.fromkeys(k for row in s.table for k in row))
                columns.update(str(c) for c in cols)
                head = "".join(f"<th>{esc(str(c))}</th>" for c in cols)
                body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in cols) + "</tr>" for r in s.table)
                parts.append(f'<div class="table"><table><tr>{head}</tr>{body}</table></div>')
            parts.append("</section>")
        used = {k: v for k, v in GLOSSARY.items() if k in columns or k.replace("_", " ") in columns}
        terms = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in sorted(used.items()))
        parts.append(f'<section id="glossary"><h2>Glossary</h2><dl>{terms or "<dd>no table columns</dd>"}</dl>'
                     f"</section>")
        meta = "".join(f"<tr><th>{esc(k)}</th><td class='text'>{esc(v)}</td></tr>" for k, v in self.metadata().items())
        parts.append(f'<section id="run"><h2>About this run</h2><div class="table"><table>{meta}</table></div>'
                     f"</section>")
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.4}"
                 "img{max-width:100%;height:auto}figure{margin:1em 0}figcaption{font-size:13px;color:#444}"
                 ".lead{font-size:1.1em}.table{overflow-x:auto}table{border-collapse:collapse;font-size:13px;"
                 "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}"
                 "th{background:#f3f3f3}td.text,th:first-child{text-align:left}dt{font-weight:bold}"
                 "dd{margin:0 0 .5em 1.5em}td,th,p,dd,h1,h2{overflow-wrap:anywhere}")
        doc = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(self.title)}</title>"
               f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
        # figures an earlier report wrote here (and recorded as its own) that this one does not write again;
        # any other file in the folder is the user's and is never touched
        own = folder / "figures" / OWN_FIGURES
        try:
            earlier = json.loads(own.read_text()) if own.exists() else []
        except (OSError, ValueError):
            earlier = []
        for name in earlier if isinstance(earlier, list) else []:
            old = folder / "figures" / str(name)
            if str(name) not in written and old.parent == folder / "figures" and old.is_file():
                old.unlink()
        save_json(sorted(written), own)
        out = folder / "report.html"
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(doc)
        os.replace(tmp, out)
        save_json({s.title: {"text": s.text, "table": s.table, "numbers": jsonable(s.numbers)}
                   for s in self.sections}, folder / "results.json")
        return out


def _cell(v: Any) -> str:
    """A table cell: numbers right-aligned, text left-aligned, everything escaped."""
    numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
    return f"<td{'' if numeric else ' class=text'}>{html.escape(_fmt(v))}</td>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "" if v is None else str(v)
