"""`python -m benchmarks`: lists the scripts, and its summary puts every claim next to its target."""

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.__main__ import available, summary

ROOT = Path(__file__).resolve().parents[1]


def test_summary_lists_every_claim_with_its_target(tmp_path):
    (tmp_path / "fast.json").write_text(json.dumps({"machine": {"torch": "x"}, "claims": [
        {"claim": "ours vs bare", "value": 1.1234, "unit": "x", "target": "<= 1.2", "met": True},
        {"claim": "ours vs sklearn", "value": 2.3, "unit": "x", "target": ">= 5", "met": False}]}))
    (tmp_path / "raw.json").write_text(json.dumps({"numbers": [1, 2]}))
    text = summary(tmp_path)
    assert "| fast | ours vs bare | 1.12x | <= 1.2 | met |" in text
    assert "| fast | ours vs sklearn | 2.3x | >= 5 | **not met** |" in text
    assert "without recorded claims (raw numbers only): raw" in text


def test_runner_lists_the_benchmarks():
    assert {"overhead", "patching", "probes"} <= set(available())
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "overhead" in out.stdout.split()
