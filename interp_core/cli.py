"""The ``interp`` command line.

``interp sites MODEL`` prints the site table of a model; ``interp demo`` runs the end-to-end analysis on the
embedded models. MODEL is ``timm:NAME`` or ``torchvision:NAME`` (random init, or ``--weights PATH``),
``vision:NAME`` (a model of ``vision.zoo``) or ``rl:NAME`` (an agent of ``rl.zoo``).

The adapters are imported lazily by name (``importlib``), so :mod:`interp_core` never depends on them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .errors import InputError, InterpError
from .hooked import HookedModel

PREFIXES = {"timm": "vision", "torchvision": "vision", "vision": "vision.zoo", "rl": "rl.zoo"}


def load(spec: str, weights: str | None = None) -> HookedModel:
    """A :class:`HookedModel` from a model spec such as ``timm:vit_tiny_patch16_224`` (see module doc)."""
    prefix, sep, name = spec.partition(":")
    if not sep or prefix not in PREFIXES or not name:
        raise InputError(f"model spec {spec!r} is not understood; use one of "
                         + ", ".join(f"'{p}:NAME'" for p in PREFIXES))
    module = importlib.import_module(PREFIXES[prefix])
    if prefix in ("timm", "torchvision"):
        return module.load(spec, weights=weights)
    if weights is not None:
        raise InputError("--weights applies to timm: and torchvision: models; zoo models ship their own")
    loaded = module.load(name)
    return loaded if isinstance(loaded, HookedModel) else loaded.hooked


def _cmd_sites(args: argparse.Namespace) -> int:
    hm = load(args.model, weights=args.weights)
    table = hm.sites
    if args.match:
        from .sites import SiteTable

        table = SiteTable([table[n] for n in table.matching(args.match)])
    print(table.table())
    print(f"\n{len(table)} sites ({hm.adapter.name} adapter)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(args.out, quick=args.quick)
    print(f"report written to {report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="interp", description="interp-suite: mechanistic interpretability for vision models and RL agents.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("sites", help="print the site table of a model",
                       description="Print every site of MODEL with its kind, module, axes and shape. MODEL is "
                                   "timm:NAME, torchvision:NAME, vision:NAME (zoo) or rl:NAME (zoo).")
    p.add_argument("model", help="e.g. timm:vit_tiny_patch16_224, torchvision:resnet18, vision:digits-cnn")
    p.add_argument("--match", help="only sites matching this shell pattern, e.g. 'blocks.*.attn.z'")
    p.add_argument("--weights", help="a local safetensors or torch checkpoint to load (timm/torchvision)")
    p.set_defaults(fn=_cmd_sites)
    d = sub.add_parser("demo", help="run the end-to-end analysis on the embedded models and write a report",
                       description="Runs every analysis the suite has on its embedded models (vision and RL) "
                                   "and writes an HTML report with figures and a JSON file of all numbers.")
    d.add_argument("--out", default="interp-demo", help="output folder (default: ./interp-demo)")
    d.add_argument("--quick", action="store_true", help="smaller datasets, for a fast look")
    d.set_defaults(fn=_cmd_demo)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.fn(args)
    except (InterpError, ValueError, KeyError, OSError) as e:  # the suite's refusals and file problems: no traceback
        print(f"interp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
