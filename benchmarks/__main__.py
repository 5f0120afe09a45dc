"""``python -m benchmarks [NAME ...]``: run every benchmark (or the named ones) and write the summary.

Each benchmark is a script in this folder that writes ``benchmarks/results/NAME.json``; each JSON carries a
``claims`` list — ``{"claim", "value", "target", "met", "unit", "command"}`` — next to its raw numbers. After
running, this command writes ``benchmarks/RESULTS.md``: date, machine, versions, thread pools, and every claim
with its measured value next to its target, met or not. ``--summary-only`` rebuilds the summary from the JSON
files already there; ``--list`` names the benchmarks; arguments after ``--`` go to every script run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SKIP = {"__main__", "__init__", "_timing", "readme_figures"}


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.stem not in SKIP)


def run(names: list[str], extra: list[str]) -> dict[str, float]:
    seconds = {}
    for name in names:
        t = time.perf_counter()
        print(f"== {name}", flush=True)
        proc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra], cwd=HERE.parent)
        seconds[name] = time.perf_counter() - t
        if proc.returncode != 0:
            print(f"!! {name} exited with {proc.returncode}", file=sys.stderr)
    return seconds


def summary(results: Path = RESULTS) -> str:
    """``RESULTS.md``: every claim of every results file, with its target and whether it is met."""
    import platform

    rows, machines, missing = [], {}, []
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        claims = data.get("claims")
        if not claims:
            missing.append(path.stem)
            continue
        machines[path.stem] = data.get("machine", {})
        for c in claims:
            value = c.get("value")
            shown = f"{value:.3g}{c.get('unit', '')}" if isinstance(value, (int, float)) else str(value)
            met = {True: "met", False: "**not met**"}.get(c.get("met"), "—")
            rows.append(f"| {path.stem} | {c.get('claim', '')} | {shown} | {c.get('target') or '—'} | {met} |")
    lines = ["# Benchmark results", "",
             f"Written by `python -m benchmarks` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{platform.machine()}, Python {platform.python_version()}. Each line is one claim of one results "
             "file (`benchmarks/results/NAME.json`, which keeps every repetition and the thread pools it ran "
             "with); ratios are medians of paired per-repetition ratios unless the claim says otherwise.", "",
             "| benchmark | claim | measured | target | |", "|---|---|---|---|---|", *rows, ""]
    if missing:
        lines += [f"Results files without recorded claims (raw numbers only): {', '.join(missing)}.", ""]
    lines += ["## Machines", ""]
    for name, m in machines.items():
        if m:
            lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in m.items() if k != "date"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(available())})")
    ap.add_argument("--summary-only", action="store_true", help="only rebuild RESULTS.md from the JSON files")
    ap.add_argument("--list", action="store_true", help="list the benchmarks")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(available()))
        return 0
    unknown = sorted(set(args.names) - set(available()))
    if unknown:
        print(f"unknown benchmarks {unknown}; available: {available()}", file=sys.stderr)
        return 2
    if not args.summary_only:
        run(args.names or available(), extra)
    (HERE / "RESULTS.md").write_text(summary())
    print(f"summary written to {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
