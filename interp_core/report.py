"""One self-contained HTML report per run, built from result objects and their figures.

``Report(title)`` collects sections — text, a figure (saved as PNG beside the report and embedded), a table
of rows (list of dicts), and the numbers (any result's ``to_dict()``) — then ``write(folder)`` writes
``report.html`` (no external files needed to view it), ``results.json`` and ``figures/*.png`` atomically.
A rerun into the same folder replaces the figures the earlier report recorded as its own
(``figures/.report-figures.json``) and leaves every other file alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .results import jsonable, save_json

OWN_FIGURES = ".report-figures.json"  # the figures a report wrote, so a rerun removes exactly those


@dataclass
class Section:
    title: str
    text: str = ""
    figure_png: bytes | None = None
    table: list[dict[str, Any]] | None = None
    numbers: Any = None


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)

    def add(self, title: str, text: str = "", figure: Any = None, table: list[dict[str, Any]] | None = None,
            numbers: Any = None) -> Section:
        """Add a section; ``figure`` is a matplotlib Figure (closed after rendering)."""
        png = None
        if figure is not None:
            import matplotlib.pyplot as plt

            buf = io.BytesIO()
            figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            plt.close(figure)
            png = buf.getvalue()
        s = Section(title, text, png, table, numbers)
        self.sections.append(s)
        return s

    def write(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        (folder / "figures").mkdir(parents=True, exist_ok=True)
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        written = set()
        for i, s in enumerate(self.sections):
            parts.append(f"<h2>{html.escape(s.title)}</h2>")
            if s.text:
                parts.append("".join(f"<p>{html.escape(p)}</p>" for p in s.text.split("\n\n")))
            if s.figure_png is not None:
                slug = re.sub(r"[^a-z0-9]+", "-", s.title.lower()).strip("-")[:60] or f"figure-{i}"
                name = f"{i:02d}-{slug}.png"
                (folder / "figures" / name).write_bytes(s.figure_png)
                written.add(name)
                b64 = base64.b64encode(s.figure_png).decode()
                parts.append(f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,{b64}">')
            if s.table:
                cols = list(dict.fromkeys(k for row in s.table for k in row))
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                               for r in s.table)
                parts.append(f"<table><tr>{head}</tr>{body}</table>")
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
                 "img{max-width:100%}table{border-collapse:collapse;font-size:13px;margin:1em 0}"
                 "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}")
        doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "" if v is None else str(v)
