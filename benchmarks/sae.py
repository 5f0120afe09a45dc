"""Benchmark: TopK / BatchTopK SAE training throughput, sparse decode vs a plain dense PyTorch loop.

What is compared (rows of training per CPU second, ``time.process_time``, one torch thread):

- ``dense_loop``: a plain PyTorch TopK SAE step written the usual way (as in most SAE codebases): full
  pre-activations, ``topk``, the latents scattered into a dense ``[batch, n]`` matrix, ``f @ W_dec``, MSE,
  ``backward``, gradient projection for unit-norm decoder rows, Adam, renormalisation;
- ``ours_dense``: :class:`interp_core.features.SparseAutoencoder`'s own training step with
  ``sparse_decode=False`` (the same dense computation inside the suite's trainer);
- ``ours_sparse``: the default, ``sparse_decode=True``: only the ``k`` active latents are decoded
  (``embedding_bag``) and the encoder's backward touches only their rows; the gradients equal the dense ones
  (tested in ``tests/interp_core/test_features_sae.py``).

Each round runs every variant for ``--steps`` steps on the same pre-generated batches, variants interleaved
within the round in a rotating order; the reported speed-up is the median over rounds of the paired ratio
``rows/s(variant) / rows/s(dense_loop)``. Sizes: ``d = 256``, ``n = 4096`` latents (16x), ``k = 32``,
batch 1024 by default. Results go to ``benchmarks/results/sae.json``.

Run: ``python benchmarks/sae.py [--rounds 5 --steps 10 --d 256 --n 4096 --k 32 --batch 1024]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from interp_core.features import SparseAutoencoder
from interp_core.features.train import _Trainer


def dense_loop(d: int, n: int, k: int, sample: torch.Tensor, lr: float = 3e-3):
    """A plain dense TopK SAE training step (the baseline)."""
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(n, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_dec.requires_grad_(True)
    W_enc = W_dec.detach().clone().requires_grad_(True)
    b_enc = torch.zeros(n, requires_grad=True)
    b_dec = sample.mean(0).clone().requires_grad_(True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=lr)

    def step(x: torch.Tensor) -> None:
        pre = (x - b_dec) @ W_enc.T + b_enc
        vals, idx = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        xhat = f @ W_dec + b_dec
        loss = (xhat - x).pow(2).sum(-1).mean() / d
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))

    return step


def ours(variant: str, sparse: bool, d: int, n: int, k: int, sample: torch.Tensor):
    sae = SparseAutoencoder(n, variant=variant, k=k, sparse_decode=sparse, normalize=None, dead=None, lr=3e-3)
    trainer = _Trainer("rows", sae, sample)
    return trainer.train_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sae.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d, n, k, b = args.d, args.n, args.k, args.batch
    batches = [torch.randn(b, d) for _ in range(args.steps)]
    sample = torch.cat(batches[:2])
    makers = {
        "dense_loop": lambda: dense_loop(d, n, k, sample),
        "topk_ours_dense": lambda: ours("topk", False, d, n, k, sample),
        "topk_ours_sparse": lambda: ours("topk", True, d, n, k, sample),
        "batchtopk_ours_dense": lambda: ours("batchtopk", False, d, n, k, sample),
        "batchtopk_ours_sparse": lambda: ours("batchtopk", True, d, n, k, sample),
    }
    names = list(makers)
    steps = {name: makers[name]() for name in names}
    for name in names:  # warm-up
        steps[name](batches[0])
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = time.process_time()
            for x in batches:
                steps[name](x)
            rates[name].append(len(batches) * b / (time.process_time() - t0))
    ratios = {name: statistics.median(a / base for a, base in zip(rates[name], rates["dense_loop"]))
              for name in names if name != "dense_loop"}
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "setup": {"d": d, "n_latents": n, "k": k, "batch": b, "steps_per_round": args.steps, "rounds": args.rounds,
                  "measure": "training rows per CPU second (process_time), one torch thread"},
        "rows_per_cpu_second": rates,
        "median_rows_per_cpu_second": {name: statistics.median(v) for name, v in rates.items()},
        "median_paired_ratio_vs_dense_loop": ratios,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    for name in names:
        extra = f"  {ratios[name]:.2f}x dense_loop" if name in ratios else ""
        print(f"{name:24s} {statistics.median(rates[name]):10.0f} rows/CPU s{extra}")


if __name__ == "__main__":
    main()
