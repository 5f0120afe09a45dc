"""Report: one self-contained HTML file, the numbers as JSON, the figures as PNG; reruns leave no stale files."""

import json

import matplotlib.pyplot as plt
import numpy as np

from interp_core.report import Report


def figure():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    return fig


def test_report_writes_html_json_and_figures_and_replaces_an_earlier_one(tmp_path):
    r = Report("a <test>")
    r.add("first", text="para one\n\npara two", figure=figure(), table=[{"x": 1.23456, "y": "<b>"}])
    r.add("second", figure=figure(), numbers={"arr": np.arange(3)})
    out = r.write(tmp_path)
    doc = out.read_text()
    assert doc.count("<img") == 2 and "data:image/png;base64," in doc  # viewable with no other file
    assert "a &lt;test&gt;" in doc and "&lt;b&gt;" in doc and "<p>para two</p>" in doc and "1.235" in doc
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["second"]["numbers"] == {"arr": [0, 1, 2]} and results["first"]["table"][0]["x"] == 1.23456
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == ["00-first.png", "01-second.png"]
    assert not list(tmp_path.glob("*.tmp"))

    mine = tmp_path / "figures" / "my-own-plot.png"  # a file the user put there: never the report's to delete
    mine.write_bytes(b"not the report's")
    again = Report("rerun")
    again.add("only", figure=figure())
    again.write(tmp_path)
    assert sorted(p.name for p in (tmp_path / "figures").glob("*.png")) == ["00-only.png", "my-own-plot.png"]
    assert mine.read_bytes() == b"not the report's"
    assert list(json.loads((tmp_path / "results.json").read_text())) == ["only"]
