"""The ``interp`` command line: the suite's analyses on the shipped models and on a user's own.

Commands (``interp COMMAND --help`` for each):

- ``interp sites MODEL [--canonical] [--match PATTERN]`` — a model's site table;
- ``interp zoo`` — the shipped models with their cards;
- ``interp demo`` — the end-to-end analysis of the shipped models, as one report;
- ``interp report MODEL --data DATA`` — the standard analysis for the model's domain (sites, logit lens for a
  ViT, probes with control tasks for given labels, a patching sweep for a given contrast, attribution maps;
  for an agent the world-model probes), or ``interp report --config analysis.toml``;
- single steps: ``interp probe | patch | attribute | collect | compare``;
- discovery: ``interp sae MODEL --data DATA --site S [--latents N --k K]`` (a sparse autoencoder, evaluated,
  spliced in and read) and ``interp circuit MODEL --clean DATA --corrupted DATA --metric M`` (EAP / ACDC and
  the faithfulness curve), see :mod:`interp_core.cli_discovery`.

MODEL and DATA are specs (:mod:`interp_core.specs`): ``timm:NAME``, ``torchvision:NAME``, ``vision:NAME``,
``rl:NAME``, ``sb3:ALGO:PATH.zip`` (pickles: needs ``--trust-pickle``), ``py:MODULE:FACTORY``; data is an image
folder, a tensor file (``.pt``, ``.safetensors``, ``.npy``, ``.npz``) or ``env:ID``. Every analysis command
writes the same report format (``report.html``, ``results.json``, ``figures/``) to ``--out``.

This module imports nothing heavy at start-up, so ``interp --help`` answers without loading torch; the
domain adapters are imported by name when a spec needs them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .errors import InputError, InterpError

SPEC_HELP = ("timm:NAME, torchvision:NAME, vision:NAME (zoo), rl:NAME (zoo), sb3:ALGO:PATH.zip (a pickle: needs "
             "--trust-pickle), py:MODULE:FACTORY")
DATA_HELP = "an image folder (class sub-folders), a .pt/.safetensors/.npy/.npz file (x, y), or env:ID"


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("interp-suite")
    except metadata.PackageNotFoundError:  # running from a source tree
        from . import __version__

        return __version__


# ---------------------------------------------------------------------------------------------- helpers
def _model(args: argparse.Namespace, spec: str | None = None) -> Any:
    from .specs import load_model, parse_kwargs

    return load_model(spec or args.model, weights=getattr(args, "weights", None),
                      model_kwargs=parse_kwargs(getattr(args, "model_kwargs", None)),
                      trust_pickle=getattr(args, "trust_pickle", False), env=getattr(args, "env", None))


def _data(args: argparse.Namespace, hm: Any, spec: str | None = None, labels: bool = True) -> tuple[Any, Any]:
    """``(inputs, labels)`` for a data spec, both ``None``-able, cut to ``--limit`` examples."""
    from .boundary import as_inputs
    from .specs import load_array, load_data

    spec = spec or args.data
    if spec is None:
        raise InputError("--data: no data given; pass an image folder, a tensor file or env:ID")
    data = load_data(spec, hm, image_size=getattr(args, "image_size", None))
    y = load_array(args.labels, "labels") if labels and getattr(args, "labels", None) else None
    x, y_in = as_inputs(data, y, model=hm, argument="--data")
    limit = getattr(args, "limit", None)
    if limit:
        x = x[:limit]
        y_in = None if y_in is None else y_in[:limit]
    return x, y_in


def _sites(args: argparse.Namespace, hm: Any, attr: str = "sites") -> list[str]:
    given = getattr(args, attr, None)
    if not given:
        return list(hm.default_sites)
    names: list[str] = []
    for part in given:
        for name in filter(None, (p.strip() for p in part.split(","))):
            names.extend(hm.sites.matching(name) if any(c in name for c in "*?[") else [hm.sites[name].name])
    return names


def _metric(text: str | None, default_classes: tuple[int, int] = (0, 1)) -> Any:
    """``logit_diff:3,8`` | ``logit:3`` | ``prob:3`` | ``log_prob:3`` -> a metric."""
    from . import metrics

    name, _, rest = (text or f"logit_diff:{default_classes[0]},{default_classes[1]}").partition(":")
    values = [int(v) for v in rest.split(",") if v.strip()] if rest else []
    table = {"logit_diff": 2, "logit": 1, "prob": 1, "log_prob": 1}
    if name not in table or len(values) != table[name]:
        raise InputError(f"--metric: {text!r} is not understood; use logit_diff:A,B, logit:C, prob:C or log_prob:C")
    return getattr(metrics, name)(*values)


def _report(args: argparse.Namespace, title: str, what: str) -> Any:
    from .report import Report

    return Report(title, description=what, command="interp " + " ".join(sys.argv[1:]) if args.argv is None
                  else "interp " + " ".join(args.argv))


def _finish(report: Any, args: argparse.Namespace) -> int:
    path = report.write(args.out)
    print(f"report written to {path}")
    return 0


# ---------------------------------------------------------------------------------------------- commands
def _cmd_sites(args: argparse.Namespace) -> int:
    from .sites import SiteTable

    hm = _model(args)
    table = hm.sites
    names = table.names
    if args.canonical:
        generic = {s.name for s in _generic_sites(hm)}
        names = [n for n in names if n not in generic or n in hm.default_sites]
    if args.match:
        names = [n for n in table.matching(args.match) if n in names]
    print(SiteTable([table[n] for n in names]).table())
    print(f"\n{len(names)} of {len(table)} sites ({hm.adapter.name} adapter)")
    return 0


def _generic_sites(hm: Any) -> list[Any]:
    from .sites import GenericAdapter

    return GenericAdapter(include_root=False).sites(hm.model)


def _cmd_zoo(args: argparse.Namespace) -> int:
    import importlib

    for domain, module, lister in (("vision", "vision.zoo", "names"), ("rl", "rl.zoo", "available")):
        try:
            zoo = importlib.import_module(module)
        except ImportError as e:
            print(f"{domain}: not installed ({e})")
            continue
        print(f"{domain} zoo ({module}.load(NAME); CLI: {domain}:NAME)")
        for name in getattr(zoo, lister)():
            card = _card(zoo, name)
            print(f"  {name:28s} {card}")
    return 0


def _card(zoo: Any, name: str) -> str:
    try:
        card = zoo.card(name) if hasattr(zoo, "card") else {}
    except Exception:  # a card that cannot be read does not stop the listing
        return ""
    keys = ("test_accuracy", "success_rate", "mean_return", "env", "architecture", "arch")
    return ", ".join(f"{k}={card[k]}" for k in keys if k in card)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    def line(i: int, n: int, name: str, seconds: float, cached: bool) -> None:
        print(f"[{i}/{n}] {name}: {'cached' if cached else f'{seconds:.1f} s'}", file=sys.stderr, flush=True)

    report = run_demo(args.out, quick=args.quick, fresh=args.fresh, on_stage=line)
    print(f"report written to {report}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from .probes import probe_sites

    hm = _model(args)
    x, y = _data(args, hm)
    if y is None:
        raise InputError("--labels: probing needs labels: an image folder's classes, y in the data file, or --labels")
    sites = _sites(args, hm)
    result = probe_sites(hm, x, y, sites=sites, pool=args.pool)
    report = _report(args, f"Probes on {args.model}", f"Linear probes with Hewitt & Liang control tasks at "
                                                      f"{len(sites)} sites of {args.model}, {len(x)} inputs.")
    report.add("Probe accuracy per site", text="Held-out accuracy of a linear probe per site, beside the control "
               "task's accuracy; selectivity is their difference.", figure=result.plot(), table=result.table)
    return _finish(report, args)


def _cmd_patch(args: argparse.Namespace) -> int:
    from .patching import patch_sweep

    hm = _model(args)
    clean, _ = _data(args, hm, args.clean, labels=False)
    corrupted, _ = _data(args, hm, args.corrupted, labels=False)
    n = min(len(clean), len(corrupted))
    metric = _metric(args.metric)
    result = patch_sweep(hm, clean[:n], corrupted[:n], _sites(args, hm), metric, mode=args.mode)
    report = _report(args, f"Activation patching on {args.model}", f"Exact {args.mode} patching of {metric.name} "
                     f"over {n} clean/corrupted pairs.")
    report.add("Patching effects", text="Normalised effect of patching each unit: 0 = the corrupted run's metric, "
               "1 = the clean run's.", figure=result.plot(), table=result.top(20))
    return _finish(report, args)


def _cmd_attribute(args: argparse.Namespace) -> int:
    from .attribution import attribute

    hm = _model(args)
    x, y = _data(args, hm)
    x = x[: args.limit or 8]
    target = args.target if args.target is not None else (y[: len(x)] if y is not None else 0)
    result = attribute(hm, x, args.method, site=args.site, target=target)
    report = _report(args, f"Attribution on {args.model}", f"{args.method} for {len(x)} inputs.")
    report.add(f"{args.method} attributions", text="Attribution of the target's logit to each input (or site) "
               "unit.", figure=result.plot())
    return _finish(report, args)


def _cmd_collect(args: argparse.Namespace) -> int:
    from .store import ActivationStore

    hm = _model(args)
    x, y = _data(args, hm)
    store = ActivationStore.collect(hm, (x, y) if y is not None else x, _sites(args, hm), args.out,
                                    pool=args.pool)
    print(f"stored {store.num_rows(store.site_names[0])} rows of {len(store.site_names)} sites in {args.out}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .similarity import similarity_matrix

    a, b = _model(args, args.model), _model(args, args.model_b)
    x, _ = _data(args, a, labels=False)
    result = similarity_matrix(a, b, x, _sites(args, a), _sites(args, b, "sites_b"), measure=args.measure,
                               name_a=args.model, name_b=args.model_b)
    report = _report(args, f"{args.model} vs {args.model_b}", f"{args.measure} between every pair of sites over "
                     f"{len(x)} shared inputs.")
    report.add("Layer-by-layer similarity", figure=result.plot(), numbers=result.to_dict())
    return _finish(report, args)


def _cmd_sae(args: argparse.Namespace) -> int:
    from .cli_discovery import sae_report

    return _finish(sae_report(args, _model, _data, _report), args)


def _cmd_circuit(args: argparse.Namespace) -> int:
    from .cli_discovery import circuit_report

    if not args.corrupted:
        raise InputError("--corrupted: a circuit needs corrupted inputs paired with the clean ones (a data spec)")
    if not (args.clean or args.data):
        raise InputError("--clean: give the clean inputs (a data spec; --data is used when --clean is not given)")
    return _finish(circuit_report(args, _model, _data, _metric, _report), args)


def _cmd_report(args: argparse.Namespace) -> int:
    from .analysis import standard_report

    if args.config:
        _apply_config(args)
    if not args.model:
        raise InputError("MODEL: give a model spec or a --config file that names one")
    report = standard_report(args, _model, _data, _sites, _metric, _report)
    return _finish(report, args)


def _apply_config(args: argparse.Namespace) -> None:
    from pathlib import Path

    import tomllib

    path = Path(args.config)
    try:
        config = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"--config: '{path}' cannot be read as TOML ({e})") from None
    known = {"model", "data", "labels", "out", "sites", "pool", "clean", "corrupted", "metric", "weights",
             "model_kwargs", "env", "limit", "image_size", "trust_pickle", "method"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise InputError(f"--config: unknown keys {unknown} in '{path}'; known: {sorted(known)}")
    for key, value in config.items():
        if key == "sites" and isinstance(value, str):
            value = [value]
        if key == "model_kwargs" and isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        setattr(args, key, value)


# ---------------------------------------------------------------------------------------------- parser
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interp", description="interp-suite: mechanistic interpretability for vision models and RL agents.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--threads", type=int, help="torch CPU threads for this command (default: torch's own "
                                                     "choice); 1 is fastest for small models and on busy machines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--weights", help="a local weights file: safetensors, a state dict or a checkpoint dict")
    model.add_argument("--model-kwargs", help="constructor keyword arguments, e.g. num_classes=10,img_size=64")
    model.add_argument("--trust-pickle", action="store_true",
                       help="allow files that hold pickles (whole saved models, stable-baselines3 zips): loading "
                            "them runs code from the file")
    model.add_argument("--env", help="the environment id of an sb3: agent")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data", help=DATA_HELP)
    data.add_argument("--labels", help="a file of labels, one per input (default: the data's own)")
    data.add_argument("--limit", type=int, help="use at most this many inputs")
    data.add_argument("--image-size", type=int, help="resize images of a folder to this size (default: the model's)")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--out", default="interp-out", help="output folder (default: ./interp-out)")
    sites = argparse.ArgumentParser(add_help=False)
    sites.add_argument("--sites", action="append", help="site names or patterns, comma-separated "
                                                        "(default: the adapter's default sites)")

    p = sub.add_parser("sites", parents=[model], help="print the site table of a model",
                       description=f"Print every site of MODEL with its kind, module, axes and shape. "
                                   f"MODEL: {SPEC_HELP}.")
    p.add_argument("model", help="e.g. timm:vit_tiny_patch16_224, torchvision:resnet18, vision:digits-cnn")
    p.add_argument("--match", help="only sites matching this shell pattern, e.g. 'blocks.*.attn.z'")
    p.add_argument("--canonical", action="store_true", help="only the adapter's named sites, not every module path")
    p.set_defaults(fn=_cmd_sites)

    z = sub.add_parser("zoo", help="list the shipped models with their cards")
    z.set_defaults(fn=_cmd_zoo)

    d = sub.add_parser("demo", help="run the end-to-end analysis on the embedded models and write a report",
                       description="Runs every analysis the suite has on its embedded models (vision and RL) "
                                   "and writes an HTML report with figures and a JSON file of all numbers.")
    d.add_argument("--out", default="interp-demo", help="output folder (default: ./interp-demo)")
    d.add_argument("--quick", action="store_true", help="smaller datasets, for a fast look")
    d.add_argument("--fresh", action="store_true", help="recompute every stage (default: finished stages of an "
                                                        "interrupted run in the same --out are reused)")
    d.set_defaults(fn=_cmd_demo)

    r = sub.add_parser("report", parents=[model, data, out, sites], help="the standard analysis of a model",
                       description="The standard analysis for the model's domain, as one report: the site table, "
                                   "the logit lens (ViTs), probes with control tasks (with labels), a patching "
                                   "sweep (with --clean/--corrupted), attribution maps (images); for an agent, "
                                   "world-model probes.")
    r.add_argument("model", nargs="?", help=SPEC_HELP)
    r.add_argument("--config", help="a TOML file with any of these options (model, data, labels, sites, ...)")
    r.add_argument("--pool", default="mean", help="how positions are pooled for probes (mean, max, cls, ...)")
    r.add_argument("--clean", help="clean inputs for a patching sweep (a data spec)")
    r.add_argument("--corrupted", help="corrupted inputs for a patching sweep (a data spec)")
    r.add_argument("--metric", help="logit_diff:A,B | logit:C | prob:C | log_prob:C")
    r.set_defaults(fn=_cmd_report)

    pr = sub.add_parser("probe", parents=[model, data, out, sites], help="probe sites for labels (with controls)")
    pr.add_argument("model", help=SPEC_HELP)
    pr.add_argument("--pool", default="mean", help="mean, max, cls, first, last or a position")
    pr.set_defaults(fn=_cmd_probe)

    pa = sub.add_parser("patch", parents=[model, data, out, sites], help="exact activation patching sweep")
    pa.add_argument("model", help=SPEC_HELP)
    pa.add_argument("--clean", required=True, help="clean inputs (a data spec)")
    pa.add_argument("--corrupted", required=True, help="corrupted inputs (a data spec)")
    pa.add_argument("--metric", help="logit_diff:A,B (default 0,1) | logit:C | prob:C | log_prob:C")
    pa.add_argument("--mode", default="denoising", choices=["denoising", "noising"])
    pa.set_defaults(fn=_cmd_patch)

    at = sub.add_parser("attribute", parents=[model, data, out], help="input or site attribution maps")
    at.add_argument("model", help=SPEC_HELP)
    at.add_argument("--method", default="integrated_gradients", help="integrated_gradients, saliency, gradcam, ...")
    at.add_argument("--target", type=int, help="class index (default: the labels, else 0)")
    at.add_argument("--site", help="a site for layer methods (gradcam, layer_integrated_gradients)")
    at.set_defaults(fn=_cmd_attribute)

    co = sub.add_parser("collect", parents=[model, data, sites], help="stream activations to an ActivationStore")
    co.add_argument("model", help=SPEC_HELP)
    co.add_argument("--out", required=True, help="the store folder (resumes if interrupted)")
    co.add_argument("--pool", help="pool positions inside the hook (mean, max, cls, ...); default: keep all")
    co.set_defaults(fn=_cmd_collect)

    sa = sub.add_parser("sae", parents=[model, data, out], help="train a sparse autoencoder on a site and read it",
                        description="Train a sparse autoencoder on one site's rows (positions folded into rows), "
                                    "evaluate it on held-out inputs, splice it into the model, list its latents "
                                    "with their top inputs; the SAE is saved as OUT/sae.pt.")
    sa.add_argument("model", help=SPEC_HELP)
    sa.add_argument("--site", required=True, help="the site, e.g. layer2.0, blocks.1.resid_post, memory.h")
    sa.add_argument("--latents", type=int, default=None, help="dictionary size (default: 4x the site's width)")
    sa.add_argument("--k", type=int, default=8, help="active latents per row (TopK / BatchTopK; default 8)")
    sa.add_argument("--variant", default="topk", choices=["topk", "batchtopk", "relu", "jumprelu"])
    sa.add_argument("--epochs", type=int, default=10, help="passes over the training rows (default 10)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--test-share", type=float, default=0.2, help="share of inputs held out (the last ones)")
    sa.add_argument("--show", type=int, default=12, help="latents listed in the report (default 12)")
    sa.set_defaults(fn=_cmd_sae)

    ci = sub.add_parser("circuit", parents=[model, data, out], help="find a circuit (EAP, ACDC) and its faithfulness",
                        description="Score every edge of the model's circuit graph for a clean/corrupted contrast, "
                                    "prune with ACDC, and draw the faithfulness curve against random circuits; the "
                                    "circuit is saved as OUT/circuit.json.")
    ci.add_argument("model", help=SPEC_HELP)
    ci.add_argument("--clean", help="clean inputs (a data spec; default: --data)")
    ci.add_argument("--corrupted", help="corrupted inputs paired row by row with the clean ones (a data spec)")
    ci.add_argument("--metric", help="logit_diff:A,B | logit:C | prob:C | log_prob:C (default logit_diff:0,1)")
    ci.add_argument("--target", type=int, help="a class index: the metric is its logit")
    ci.add_argument("--method", default="eap-ig", choices=["eap", "eap-ig", "exact"], help="edge scores")
    ci.add_argument("--threshold", type=float, default=0.01, help="ACDC threshold (normalised metric change)")
    ci.add_argument("--layers", help="module paths of a sequential model's graph, comma-separated, in forward order")
    ci.add_argument("--steps", type=int, help="time steps to unroll a recurrent policy (inputs [batch, steps, ...])")
    ci.add_argument("--n-random", type=int, default=10, help="random circuits per size (default 10)")
    ci.set_defaults(fn=_cmd_circuit)

    cm = sub.add_parser("compare", parents=[model, data, out, sites], help="layer-by-layer similarity of two models")
    cm.add_argument("model", help=SPEC_HELP)
    cm.add_argument("model_b", help="the second model spec")
    cm.add_argument("--sites-b", action="append", help="sites of the second model (default: its default sites)")
    cm.add_argument("--measure", default="linear_cka", help="linear_cka, rbf_cka, svcca, pwcca, procrustes, rsa, ...")
    cm.set_defaults(fn=_cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 0
    threads = None
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise InputError(f"--threads: a positive number of threads, got {args.threads}")
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(args.threads)
        return args.fn(args)
    except (InterpError, ValueError, KeyError, OSError) as e:  # the suite's refusals and file problems: no traceback
        print(f"interp: error: {e}", file=sys.stderr)
        return 2
    finally:
        if threads is not None:  # in-process callers (tests, notebooks) get their setting back
            import torch

            torch.set_num_threads(threads)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
