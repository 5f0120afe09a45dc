"""Exact patching against plain PyTorch: ``patch_sweep`` vs the loops anyone would write by hand.

Baselines (plain PyTorch, no interp_core on their path):

- **hook loop**: one forward per patch; a ``register_forward_hook`` (or pre-hook, for a block's input)
  writes the clean activation at one unit; the metric is computed on the output.
- **batched loop** (the compute floor): the base input's activation at the site is recorded once, ``k``
  copies are stacked with one unit of each copy set to the clean value, and only the modules *after* the
  site run on them (for a ViT: ``blocks[i+1:]`` (or ``blocks[i:]`` for a block's input), ``norm``,
  ``forward_head``; for the policy: the rest of its MLP and the action head). ``k`` is the number of patches
  per chunk ``patch_sweep`` chooses by default (equal settings: the same rows per forward).
- **class-token batched loop** (ViTs, a reference): the batched loop as a careful hand loop writes it for a
  class-token readout: the last block's keys and values from every token, then only the class token's query,
  MLP, final norm and head. ``patch_sweep`` narrows its cones to that same work
  (:mod:`interp_core.narrow`), so this ratio is the suite's overhead at equal work, and the ratio to the
  batched loop above what narrowing saves.

Both baselines, like ``patch_sweep``, first run the clean and corrupted inputs once. Sweeps (CPU, one
torch / BLAS thread, one clean/corrupted pair, every token or unit of each site):

- timm ``vit_tiny_patch16_224`` at 224x224, random init: by default the outputs of blocks 9, 10 and 11
  (``blocks.{9,10,11}``) x all 197 tokens = 591 patches (``--blocks 0-11`` for the full 12 x 197 grid; it
  costs ~30 s per variant and repetition on one free core, too long for the shared machine). The hook loop is
  timed on 4 evenly spaced tokens per site (12 forwards; it costs one full forward per patch whatever the
  unit) and compared as patches per second;
- ``vision.zoo`` ``digits-vit``: the residual stream ``blocks.{0,1,2}.resid_pre`` (block inputs) and
  ``blocks.2.resid_post`` x every token (full grid for all variants);
- ``rl.zoo`` ``cartpole-ppo``: the actor MLP ``policy.{0,1,2,3}`` x every unit (full grid), metric
  ``logit(0) - logit(1)``.

Timing (:mod:`benchmarks._timing`): variants interleaved in a shuffled order per repetition after a warm-up,
wall and process CPU time per repetition, medians of the paired per-repetition throughput ratios, load
average recorded before and after. Claims, on process CPU time (one thread, so it is the work done; wall time
is recorded beside it, but on a machine loaded past its cores it mostly measures the wait for a core):
``patch_sweep`` >= the batched loop (ratio >= 1.0), and its ratio to the hook loop; the ratio to the class-token
loop is reported beside them.

Run: ``python benchmarks/patching.py [--reps 7] [--blocks 9-11] [--skip-large]``; writes
``benchmarks/results/patching.json``.
"""

from __future__ import annotations

import os
import sys

try:
    from benchmarks._timing import machine, paired, pin_threads, pools
except ImportError:  # run as a script from the benchmarks folder
    sys.path.insert(0, os.path.dirname(__file__))
    from _timing import machine, paired, pin_threads, pools

pin_threads(1)  # before numpy / torch / sklearn create their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from interp_core import HookedModel  # noqa: E402
from interp_core.patching import AUTO_CHUNK_VALUES, AUTO_MAX_ROWS, patch_sweep  # noqa: E402

RESULTS = Path(__file__).parent / "results"
COMMAND = "python benchmarks/patching.py"


def chunk_patches(site_shape, batch: int) -> int:
    """Patches per stacked forward that ``patch_sweep`` chooses by default (its module docstring)."""
    rows = min(AUTO_MAX_ROWS, AUTO_CHUNK_VALUES // max(1, math.prod(site_shape)))
    return max(1, rows // batch)


# ---------------------------------------------------------------------------------------------- plain loops
def record(targets, x, model):
    """Each target module's output (or first input) on ``x``, recorded by plain hooks in one forward."""
    got, handles = {}, []
    for i, (module, kind) in enumerate(targets):
        if kind == "output":
            handles.append(module.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(i, o.detach().clone())))
        else:
            handles.append(module.register_forward_pre_hook(
                lambda m, a, i=i: got.__setitem__(i, a[0].detach().clone())))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return [got[i] for i in range(len(targets))]


def hook_loop(model, clean, corrupted, targets, diff, units_per_site=None):
    """One forward per patch. ``targets``: ``[(module, kind, n_units)]``; a unit is index 1 of the activation
    (a token of ``[B, pos, d]``, a unit of ``[B, d]``). Returns the number of patches run."""
    n = 0
    with torch.no_grad():
        sources = record([t[:2] for t in targets], clean, model)
        for (module, kind, count), src in zip(targets, sources):
            units = range(count) if units_per_site is None else \
                torch.linspace(0, count - 1, units_per_site).long().tolist()
            for u in units:
                if kind == "output":
                    def patch(m, a, o, u=u):
                        o = o.clone()
                        o[:, u] = src[:, u]
                        return o
                    h = module.register_forward_hook(patch)
                else:
                    def patch(m, a, u=u):
                        x = a[0].clone()
                        x[:, u] = src[:, u]
                        return (x, *a[1:])
                    h = module.register_forward_pre_hook(patch)
                try:
                    float(diff(model(corrupted)).mean())
                finally:
                    h.remove()
                n += 1
    return n


def batched_loop(model, clean, corrupted, targets, diff, k):
    """The compute floor: ``targets`` ``[(module, kind, n_units, rest)]`` where ``rest(h)`` runs everything
    after the site on ``h``; ``k`` patches per chunk. Returns the batch-mean metric per patch."""
    values = []
    with torch.no_grad():
        sources = record([t[:2] for t in targets], clean, model)
        bases = record([t[:2] for t in targets], corrupted, model)
        for (module, kind, count, rest), src, base in zip(targets, sources, bases):
            B = base.shape[0]
            for lo in range(0, count, k):
                units = list(range(lo, min(count, lo + k)))
                h = base.repeat(len(units), *([1] * (base.dim() - 1)))
                for j, u in enumerate(units):
                    h[j * B:(j + 1) * B, u] = src[:, u]
                values.append(diff(rest(h)).reshape(len(units), B).mean(1))
    return torch.cat(values)


def vit_rest(vit, start):
    """Everything of a timm VisionTransformer after its block ``start - 1``: blocks ``start..``, norm, head."""
    def run(h):
        for blk in vit.blocks[start:]:
            h = blk(h)
        return vit.forward_head(vit.norm(h))
    return run


def cls_attention(attn, x):
    """A timm ``Attention`` on ``x`` ``[B, N, C]`` from the class token's query only (to every key): its
    output for token 0, ``[B, C]``."""
    assert attn.gate is None and attn.fused_attn
    B, N, _ = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    o = F.scaled_dot_product_attention(attn.q_norm(q)[:, :, :1], attn.k_norm(k), v)
    return attn.proj_drop(attn.proj(attn.norm(o.reshape(B, attn.attn_dim))))


def vit_rest_cls(vit, start):
    """``vit_rest`` as a careful hand loop writes it for a class-token readout: the last block's keys and values
    from every token, then only the class token's query, MLP, norm and head (what ``patch_sweep``'s narrowed
    cones compute: the same work)."""
    assert vit.global_pool == "token"
    last = vit.blocks[-1]

    def run(h):
        for blk in vit.blocks[start:-1]:
            h = blk(h)
        if start < len(vit.blocks):
            h = h[:, 0] + last.drop_path1(last.ls1(cls_attention(last.attn, last.norm1(h))))
            h = h + last.drop_path2(last.ls2(last.mlp(last.norm2(h))))
        else:
            h = h[:, 0]
        return vit.head(vit.head_drop(vit.fc_norm(vit.norm(h))))
    return run


# ---------------------------------------------------------------------------------------------- one sweep
def ratios(timing, num, den, n_num, n_den, clock):
    """Median over repetitions of (patches/s of ``num``) / (patches/s of ``den``)."""
    a, b = timing["variants"][num][f"{clock}_s"], timing["variants"][den][f"{clock}_s"]
    return statistics.median((n_num / x) / (n_den / y) for x, y in zip(a, b))


def bench(name, hm, clean, corrupted, sites, metric, floor_targets, loop_targets, k, reps, loop_units=None,
          warmup=1, cls_targets=None):
    """``patch_sweep`` vs the batched loop (and, given ``cls_targets``, the class-token one) and the hook loop,
    interleaved; checks they agree first."""
    model = hm.model
    hm.trace(clean)
    res = patch_sweep(hm, clean, corrupted, sites, metric, progress=False)
    n_grid = sum(res.metric_values[s].numel() for s in sites)
    suite = torch.cat([res.metric_values[s].reshape(-1) for s in sites])
    floors = {"batched_loop": floor_targets} | ({"batched_loop_cls": cls_targets} if cls_targets else {})
    max_diff = {}
    for v, targets in floors.items():
        floor = batched_loop(model, clean, corrupted, targets, metric, k)
        max_diff[v] = float((floor.double() - suite.double()).abs().max())
        assert max_diff[v] < 1e-4, f"{name}: {v} and patch_sweep disagree by {max_diff[v]}"
    n_loop = sum(c for _, _, c in loop_targets) if loop_units is None else loop_units * len(loop_targets)
    runners = {
        "patch_sweep": lambda: patch_sweep(hm, clean, corrupted, sites, metric, progress=False),
        **{v: lambda t=t: batched_loop(model, clean, corrupted, t, metric, k) for v, t in floors.items()},
        "hook_loop": lambda: hook_loop(model, clean, corrupted, loop_targets, metric, loop_units),
    }
    load_before = os.getloadavg()
    timing = paired(runners, reps, baseline="batched_loop", warmup=warmup)
    n = {v: n_grid for v in runners} | {"hook_loop": n_loop}
    out = {"model": name, "sites": list(sites), "patches_in_grid": n_grid, "patches_per_chunk": k,
           "hook_loop_patches": n_loop, "reps": reps, "warmup": warmup,
           "max_abs_diff_patch_sweep_vs": max_diff,
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "patches_per_s_median_wall": {v: n[v] / timing["variants"][v]["median_wall_s"] for v in runners},
           "patches_per_s_median_cpu": {v: n[v] / timing["variants"][v]["median_cpu_s"] for v in runners},
           "timing": timing}
    for clock in ("wall", "cpu"):
        out[f"patch_sweep_vs_batched_loop_{clock}"] = ratios(timing, "patch_sweep", "batched_loop", n_grid,
                                                             n_grid, clock)
        out[f"patch_sweep_vs_hook_loop_{clock}"] = ratios(timing, "patch_sweep", "hook_loop", n_grid, n_loop,
                                                          clock)
        out[f"batched_loop_vs_hook_loop_{clock}"] = ratios(timing, "batched_loop", "hook_loop", n_grid, n_loop,
                                                           clock)
        if cls_targets:
            out[f"patch_sweep_vs_batched_loop_cls_{clock}"] = ratios(timing, "patch_sweep", "batched_loop_cls",
                                                                     n_grid, n_grid, clock)
    return out


def plain_diff(a, b):
    """``logit a - logit b`` per example, written directly on the output (a policy's ``.logits``)."""
    def diff(out):
        out = getattr(out, "logits", out)
        return out[:, a] - out[:, b]
    return diff


def vit_sweep(name, hm, clean, corrupted, sites, classes, reps, loop_units=None, warmup=1):
    """``sites``: ``blocks.{i}`` (block output), ``blocks.{i}.resid_pre`` (block input) or
    ``blocks.{i}.resid_post`` (block output) of a timm VisionTransformer; metric ``logit a - logit b``."""
    vit = hm.model
    hm.trace(clean)
    floor, cls = [], []
    for s in sites:
        i = int(s.split(".")[1])
        kind = "input" if s.endswith("resid_pre") else "output"
        start = i if kind == "input" else i + 1
        floor.append((vit.blocks[i], kind, hm.sites[s].shape[0], vit_rest(vit, start)))
        cls.append((*floor[-1][:3], vit_rest_cls(vit, start)))
    k = chunk_patches(hm.sites[sites[0]].shape, clean.shape[0])
    return bench(name, hm, clean, corrupted, sites, plain_diff(*classes), floor, [f[:3] for f in floor], k, reps,
                 loop_units, warmup, cls)


# ---------------------------------------------------------------------------------------------- claims
def claims(results):
    """Claims on process CPU time (one thread: the work done, whatever else the shared machine runs; wall time
    beside it, which on a machine loaded past its cores mostly measures the wait for a core)."""
    out = []
    for r in results["sweeps"]:
        grid = f"{r['model']}, {len(r['sites'])} sites ({', '.join(r['sites'])}), {r['patches_in_grid']} patches"
        v = r["patch_sweep_vs_batched_loop_cpu"]
        out.append({"claim": f"patch_sweep vs plain batched loop starting after the site, equal chunk "
                             f"({r['patches_per_chunk']} patches), {grid} (CPU time; wall "
                             f"{r['patch_sweep_vs_batched_loop_wall']:.3f})",
                    "value": v, "unit": "x", "target": ">= 1.0", "met": v >= 1.0, "command": r["command"]})
        if "patch_sweep_vs_batched_loop_cls_cpu" in r:  # the same work as the narrowed cones: the suite's overhead
            v = r["patch_sweep_vs_batched_loop_cls_cpu"]
            out.append({"claim": f"reference: patch_sweep vs the batched loop running only the class token's query "
                                 f"and MLP in the last block (the same work), {grid} (CPU time; wall "
                                 f"{r['patch_sweep_vs_batched_loop_cls_wall']:.3f})",
                        "value": v, "unit": "x", "target": None, "met": None, "command": r["command"]})
        v = r["patch_sweep_vs_hook_loop_cpu"]
        target = 1.7 if r["model"].startswith("timm") else 5.0
        out.append({"claim": f"patch_sweep vs plain one-forward-per-patch hook loop, {grid} (patches/s, CPU time; "
                             f"wall {r['patch_sweep_vs_hook_loop_wall']:.3f}; hook loop timed on "
                             f"{r['hook_loop_patches']} patches)",
                    "value": v, "unit": "x", "target": f">= {target}", "met": v >= target, "command": r["command"]})
    return out


def parse_blocks(text):
    if "-" in text:
        lo, hi = (int(t) for t in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(t) for t in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--blocks", default="9-11", help="vit_tiny blocks to sweep, e.g. 9-11, 0-11 or 0,6,11")
    ap.add_argument("--loop-tokens", type=int, default=4, help="tokens per site the vit_tiny hook loop runs")
    ap.add_argument("--skip-large", action="store_true", help="skip vit_tiny_patch16_224")
    args = ap.parse_args()
    torch.manual_seed(0)
    logging.getLogger("interp_core.patching").setLevel(logging.ERROR)  # no-op patch notices, once per sweep

    import rl.zoo
    import vision.zoo

    results = {"machine": machine(), "threads": pools(), "sweeps": []}
    hm = vision.zoo.load("digits-vit")
    X, y = vision.zoo.test_data("digits-vit")
    j = int((y != y[0]).nonzero()[0, 0])
    sites = [f"blocks.{i}.resid_pre" for i in range(3)] + ["blocks.2.resid_post"]
    r = vit_sweep("vision.zoo:digits-vit", hm, X[:1], X[j][None], sites, (int(y[0]), int(y[j])), args.reps * 3,
                  warmup=2)
    r["command"] = COMMAND + " --skip-large"
    results["sweeps"].append(r)
    print(r["model"], round(r["patch_sweep_vs_batched_loop_cpu"], 3), round(r["patch_sweep_vs_hook_loop_cpu"], 2))

    agent = rl.zoo.load("cartpole-ppo")  # an rl Agent is a HookedModel over SB3PolicyModule
    net = agent.model.net
    actor = net.mlp_extractor.policy_net
    obs = torch.tensor([[0.0, 0.1, 0.02, -0.1], [0.1, -0.3, -0.05, 0.2]])
    psites = [f"policy.{i}" for i in range(4)]
    agent.trace(obs[:1])
    assert all(agent.model.get_submodule(agent.sites[s].module_path) is actor[i] for i, s in enumerate(psites))
    floor = [(actor[i], "output", agent.sites[s].shape[0],
              lambda h, i=i: net.action_net(actor[i + 1:](h))) for i, s in enumerate(psites)]
    r = bench("rl.zoo:cartpole-ppo", agent, obs[:1], obs[1:], psites, plain_diff(0, 1), floor, [f[:3] for f in floor],
              chunk_patches(agent.sites[psites[0]].shape, 1), args.reps * 3, warmup=2)
    r["command"] = COMMAND + " --skip-large"
    results["sweeps"].append(r)
    print(r["model"], round(r["patch_sweep_vs_batched_loop_cpu"], 3), round(r["patch_sweep_vs_hook_loop_cpu"], 2))

    if not args.skip_large:
        big = timm.create_model("vit_tiny_patch16_224").eval()
        hb = HookedModel(big)
        g = torch.Generator().manual_seed(0)
        c, k = torch.randn(1, 3, 224, 224, generator=g), torch.randn(1, 3, 224, 224, generator=g)
        r = vit_sweep("timm:vit_tiny_patch16_224", hb, c, k, [f"blocks.{i}" for i in parse_blocks(args.blocks)],
                      (0, 1), args.reps, loop_units=args.loop_tokens)
        r["command"] = COMMAND + (f" --blocks {args.blocks}" if args.blocks != "9-11" else "")
        results["sweeps"].append(r)
        print(r["model"], round(r["patch_sweep_vs_batched_loop_cpu"], 3),
              round(r["patch_sweep_vs_hook_loop_cpu"], 2))
    results["claims"] = claims(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "patching.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
