"""The README's Python examples run as written (each in a fresh namespace, in a temporary folder)."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from readme_figures import readme_blocks  # noqa: E402

BLOCKS = readme_blocks()


def test_readme_has_the_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], "README.md", "exec"), {"__name__": "__readme__"})
    saved = [p for p in os.listdir(tmp_path) if p.endswith(".png")]
    assert all((tmp_path / p).stat().st_size > 10_000 for p in saved)
