"""Causal abstraction cost: DAS training and an IIA evaluation against plain PyTorch loops doing the same work.

Models (CPU, one torch thread):

- an MLP ``64 -> 256 -> 256 -> 10`` (GELU), interchange at the first hidden layer (``1``, the activation
  module's output), ``k = 4``;
- a timm ``VisionTransformer`` at random init (32x32 images, 8x8 patches: CLS + 16 tokens, width 64, depth 4,
  10 classes), interchange of the CLS token of ``blocks.2`` (``positions="cls"``), ``k = 4``.

For each, on ``N`` (base, source) pairs:

- **DAS training**, one epoch (minibatches of 64): ``DAS(k=4, epochs=1).fit(...)`` vs a hand-written loop
  (a bias-free ``nn.Linear(d, k)`` under ``torch.nn.utils.parametrizations.orthogonal``, the source
  activations recorded once with a forward hook, then per minibatch a forward hook that returns
  ``a + (s - a) Q Q^T``, cross-entropy, Adam on the rotation only). Rows/s = pairs per second.
- **IIA evaluation** (``iia(...)`` with a fixed ``[d, k]`` subspace; it also runs the unintervened base, for
  its ``unchanged`` score) vs a loop doing the same three forwards per batch with hooks (source run recorded,
  intervened base run, plain base run) and the accuracy count.

Interleaved repetitions (``benchmarks/_timing.paired``), median of the per-repetition ratios ``suite / plain``
(1.0 = no overhead). Run ``python benchmarks/causal.py``; writes ``benchmarks/results/causal.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _timing import machine, paired, pin_threads, pools  # noqa: E402

pin_threads(1)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from interp_core import HookedModel  # noqa: E402
from interp_core.causal import DAS, iia  # noqa: E402

RESULTS = Path(__file__).parent / "results"
K = 4


def mlp() -> tuple[nn.Module, str, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10)).eval()
    return model, "1", model[1], torch.randn(1, 64)


def vit() -> tuple[nn.Module, str, nn.Module, torch.Tensor]:
    import timm

    torch.manual_seed(0)
    model = timm.models.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4,
                                         num_classes=10).eval()
    return model, "blocks.2.resid_post", model.blocks[2], torch.randn(1, 3, 32, 32)


def _interchange_rows(act: torch.Tensor, src: torch.Tensor, q: torch.Tensor, cls: bool) -> torch.Tensor:
    if not cls:
        return act + ((src - act) @ q) @ q.T
    out = act.clone()
    out[:, 0] = act[:, 0] + ((src[:, 0] - act[:, 0]) @ q) @ q.T
    return out


def plain_das(model: nn.Module, module: nn.Module, xb: torch.Tensor, xs: torch.Tensor, y: torch.Tensor, cls: bool,
              batch: int = 64, lr: float = 1e-2) -> torch.Tensor:
    """One epoch of DAS written directly with hooks."""
    box: dict[str, torch.Tensor] = {}

    def grab(m, a, out):
        box["src"] = out.detach()
    h = module.register_forward_hook(grab)
    with torch.no_grad():
        model(xs)
    h.remove()
    src = box["src"]
    d = src.shape[-1]
    rot = nn.Linear(d, K, bias=False)
    nn.utils.parametrizations.orthogonal(rot)
    opt = torch.optim.Adam(rot.parameters(), lr=lr)
    params = list(rot.parameters())
    perm = torch.randperm(len(xb), generator=torch.Generator().manual_seed(0))
    for lo in range(0, len(xb), batch):
        idx = perm[lo:lo + batch]
        q = rot.weight.T
        s = src[idx]
        h = module.register_forward_hook(lambda m, a, out, s=s, q=q: _interchange_rows(out, s, q, cls))
        try:
            loss = F.cross_entropy(model(xb[idx]), y[idx])
        finally:
            h.remove()
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        opt.step()
        opt.zero_grad(set_to_none=True)
    return rot.weight.detach()


def plain_iia(model: nn.Module, module: nn.Module, xb: torch.Tensor, xs: torch.Tensor, expected: torch.Tensor,
              q: torch.Tensor, cls: bool, batch: int) -> tuple[float, float]:
    ok = ok_clean = 0
    with torch.no_grad():
        for lo in range(0, len(xb), batch):
            box: dict[str, torch.Tensor] = {}
            h = module.register_forward_hook(lambda m, a, out: box.__setitem__("src", out.detach().clone()))
            model(xs[lo:lo + batch])
            h.remove()
            h = module.register_forward_hook(lambda m, a, out: _interchange_rows(out, box["src"], q, cls))
            try:
                pred = model(xb[lo:lo + batch]).argmax(-1)
            finally:
                h.remove()
            clean = model(xb[lo:lo + batch]).argmax(-1)
            ok += int((pred == expected[lo:lo + batch]).sum())
            ok_clean += int((clean == expected[lo:lo + batch]).sum())
    return ok / len(xb), ok_clean / len(xb)


def bench(name: str, make, n: int, reps: int) -> dict:
    model, site, module, example = make()
    hm = HookedModel(model, example_input=example)
    shape = example.shape[1:]
    g = torch.Generator().manual_seed(1)
    xb, xs = torch.randn(n, *shape, generator=g), torch.randn(n, *shape, generator=g)
    with torch.no_grad():
        y = model(xs).argmax(-1)
    cls = "resid_post" in site
    pos = "cls" if cls else None
    q = torch.linalg.qr(torch.randn(hm.sites[site].shape[-1], K, generator=g))[0]
    batch = 256

    # same numbers first: the two IIA evaluations agree exactly
    ours = iia(hm, xb, xs, site, lambda b, s: s, subspace=q, base_vars=y, source_vars=y, positions=pos,
               batch_size=batch)
    plain = plain_iia(model, module, xb, xs, y, q, cls, batch)
    assert abs(ours.accuracy - plain[0]) < 1e-9 and abs(ours.unchanged - plain[1]) < 1e-9, (ours, plain)

    das = paired({"bare": lambda: plain_das(model, module, xb, xs, y, cls),
                  "suite": lambda: DAS(k=K, epochs=1, batch_size=64, positions=pos, progress=False).fit(
                      hm, site, xb, xs, y)}, reps=reps)
    ev = paired({"bare": lambda: plain_iia(model, module, xb, xs, y, q, cls, batch),
                 "suite": lambda: iia(hm, xb, xs, site, lambda b, s: s, subspace=q, base_vars=y, source_vars=y,
                                      positions=pos, batch_size=batch)}, reps=reps)
    for r in (das, ev):
        for v in r["variants"].values():
            v["rows_per_s"] = n / v["median_wall_s"]
    return {"model": name, "site": site, "k": K, "pairs": n, "positions": pos,
            "das_epoch": das, "iia_eval": ev,
            "summary": {"das_rows_per_s_suite": das["variants"]["suite"]["rows_per_s"],
                        "das_rows_per_s_plain": das["variants"]["bare"]["rows_per_s"],
                        "das_ratio_wall": das["variants"]["suite"]["ratio_wall"],
                        "iia_rows_per_s_suite": ev["variants"]["suite"]["rows_per_s"],
                        "iia_rows_per_s_plain": ev["variants"]["bare"]["rows_per_s"],
                        "iia_ratio_wall": ev["variants"]["suite"]["ratio_wall"]}}


def claims(results: dict) -> list[dict]:
    """The claims this benchmark checks (see ``python -m benchmarks``): the suite's DAS epoch and IIA evaluation
    against the same computation written in plain PyTorch (hooks and a rotation), wall-time ratio."""
    out = []
    for r in results["runs"]:
        s = r["summary"]
        for what, key in (("DAS training epoch", "das_ratio_wall"), ("IIA evaluation", "iia_ratio_wall")):
            out.append({"claim": f"{what} vs plain PyTorch, {r['model']}, {results['pairs']} pairs", "value": s[key],
                        "unit": "x", "target": "<= 1.2", "met": s[key] <= 1.2,
                        "command": "python benchmarks/causal.py"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 256 pairs, 3 repetitions, no file written")
    args = ap.parse_args()
    n, reps = (256, 3) if args.quick else (args.pairs, args.reps)
    results = {"machine": machine(), "pools": pools(), "pairs": n, "reps": reps,
               "ratio": "suite / plain, median over interleaved repetitions of the per-repetition ratio",
               "runs": [bench("mlp 64-256-256-10", mlp, n, reps), bench("timm ViT 32px d64 x4", vit, n, reps)]}
    for r in results["runs"]:
        s = r["summary"]
        print(f"{r['model']:<24} DAS {s['das_rows_per_s_suite']:8.0f} rows/s (plain {s['das_rows_per_s_plain']:8.0f}, "
              f"ratio {s['das_ratio_wall']:.2f})   IIA {s['iia_rows_per_s_suite']:8.0f} rows/s (plain "
              f"{s['iia_rows_per_s_plain']:8.0f}, ratio {s['iia_ratio_wall']:.2f})")
    results["claims"] = claims(results)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "causal.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
