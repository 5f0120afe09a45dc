"""Run the README's Python examples and keep the figures they save (``benchmarks/results/readme/*.png``).

Run: ``python benchmarks/readme_figures.py``. ``tests/test_readme.py`` runs the same blocks in a temporary
folder, so the README's code and its figures cannot drift apart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results" / "readme"


def readme_blocks() -> list[str]:
    """The ```python blocks of README.md, in order."""
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    OUT.mkdir(parents=True, exist_ok=True)
    os.chdir(OUT)
    for code in readme_blocks():
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    from interp_core.features import toy

    toy.readme_figures(OUT)  # toy_geometry.png, toy_phase.png: ~200 small models, not a README block
    print("\n".join(sorted(str(p) for p in OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
