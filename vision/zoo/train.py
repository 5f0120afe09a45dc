"""Train a zoo model, deterministically, and write its checkpoint and model card.

Usage::

    python -m vision.zoo.train digits-cnn --seed 1          # -> checkpoints/digits-cnn-seed1.{safetensors,json}
    python -m vision.zoo.train all                          # every recipe, seeds 0 1 2 (shapes: seed 0)

Determinism: one CPU thread, ``torch.use_deterministic_algorithms(True)``, the model initialised from
``torch.manual_seed(seed)`` and batches / augmentations drawn from a ``torch.Generator`` seeded with ``seed``.
The same command on the same torch version gives bit-identical weights (tested).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from interp_core.errors import InputError, SiteError

from .models import CHECKPOINT_DIR, DEFAULT_SEEDS, RECIPES, Recipe, build, checkpoint_paths

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def deterministic(threads: int | None = 1) -> Iterator[None]:
    """Deterministic algorithms (and optionally a thread count) for the block; previous settings restored."""
    old_det = torch.are_deterministic_algorithms_enabled()
    old_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det)
        torch.set_num_threads(old_threads)


def load_data(recipe: Recipe, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` of a recipe's dataset; ``split`` is ``"train"``, ``"test"`` or another key of ``data``."""
    from .. import data as vdata

    d = recipe.data
    if d["kind"] == "digits":
        if split not in ("train", "test"):
            raise InputError(f"digits recipes have splits 'train' and 'test', got {split!r}")
        return vdata.digits_tensors(split, size=d["size"])
    if d["kind"] == "shapes":
        if split not in d:
            raise InputError(f"recipe {recipe.name!r} has no shapes split {split!r}; splits: "
                             f"{[k for k in d if isinstance(d[k], dict)]}")
        return vdata.shapes(image_size=d["image_size"], **d[split]).tensors()
    raise InputError(f"unknown data kind {d['kind']!r}")


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]², filling with the image minimum."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    fill = x.amin(dim=(1, 2, 3), keepdim=True)
    s = max_shift
    padded = F.pad(x - fill, (s, s, s, s)) + fill
    offs = torch.randint(0, 2 * s + 1, (b, 2), generator=gen)
    out = torch.empty_like(x)
    for dy in range(2 * s + 1):
        for dx in range(2 * s + 1):
            sel = (offs[:, 0] == dy) & (offs[:, 1] == dx)
            if sel.any():
                out[sel] = padded[sel, :, dy:dy + h, dx:dx + w]
    return out


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[int, int]:
    """``(correct, n)`` of ``argmax(model(x)) == y`` in eval mode (the model's mode is restored)."""
    was = model.training
    model.eval()
    try:
        correct = 0
        for i in range(0, len(y), batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
    finally:
        model.train(was)
    return correct, len(y)


def train_model(family: str, seed: int = 0, epochs: int | None = None,
                max_train: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train one model of a zoo family. Returns ``(model in eval mode, info)``; writes nothing.

    Args:
        family: a key of :data:`~vision.zoo.models.RECIPES`.
        seed: initialisation and data-order seed.
        epochs: override the recipe's number of epochs (short runs for tests).
        max_train: use only the first ``max_train`` training examples (short runs for tests).
    """
    if family not in RECIPES:
        raise SiteError(f"unknown zoo family {family!r}; known: {sorted(RECIPES)}")
    recipe = RECIPES[family]
    n_epochs = recipe.epochs if epochs is None else int(epochs)
    xtr, ytr = load_data(recipe, "train")
    if max_train is not None:
        xtr, ytr = xtr[:max_train], ytr[:max_train]
    t0 = time.perf_counter()
    with deterministic(threads=1):
        torch.manual_seed(seed)
        model = build(recipe)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        steps_per_epoch = -(-len(ytr) // recipe.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=n_epochs * steps_per_epoch,
                                                    pct_start=0.15)
        model.train()
        for epoch in range(n_epochs):
            order = torch.randperm(len(ytr), generator=gen)
            total = 0.0
            for i in range(0, len(ytr), recipe.batch_size):
                idx = order[i:i + recipe.batch_size]
                xb = _shift(xtr[idx], recipe.augment_shift, gen)
                loss = F.cross_entropy(model(xb), ytr[idx], label_smoothing=recipe.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            if (epoch + 1) % 10 == 0 or epoch + 1 == n_epochs:
                logger.info("%s seed %d epoch %d/%d loss %.4f", family, seed, epoch + 1, n_epochs,
                            total / len(ytr))
        model.eval()
    train_time = time.perf_counter() - t0
    info = {"family": family, "seed": seed, "epochs": n_epochs, "train_time_s": round(train_time, 2),
            "n_train": len(ytr)}
    return model, info


def model_card(model: nn.Module, family: str, seed: int, info: dict[str, Any], command: str) -> dict[str, Any]:
    """The JSON model card: recipe, data, metrics (recomputable from the checkpoint), environment."""
    import platform

    import timm

    recipe = RECIPES[family]
    xte, yte = load_data(recipe, "test")
    xtr, ytr = load_data(recipe, "train")
    correct, n = evaluate(model, xte, yte)
    train_correct, n_train = evaluate(model, xtr, ytr)
    card: dict[str, Any] = {
        "name": f"{family}@seed{seed}", "family": family, "seed": seed,
        "arch": recipe.arch, "arch_kwargs": recipe.arch_kwargs,
        "data": recipe.data, "epochs": info["epochs"], "batch_size": recipe.batch_size, "lr": recipe.lr,
        "weight_decay": recipe.weight_decay, "augment_shift": recipe.augment_shift,
        "label_smoothing": recipe.label_smoothing, "optimizer": "AdamW + OneCycleLR(pct_start=0.15)",
        "n_params": sum(p.numel() for p in model.parameters()),
        "test_correct": correct, "n_test": n, "test_accuracy": correct / n,
        "train_accuracy": train_correct / n_train,
        "train_time_s": info["train_time_s"], "threads": 1,
        "torch_version": torch.__version__, "timm_version": timm.__version__,
        "python_version": platform.python_version(), "command": command,
    }
    if recipe.data["kind"] == "shapes":
        card["shortcut_metrics"] = shortcut_metrics(model, recipe)
    return card


def shortcut_metrics(model: nn.Module, recipe: Recipe) -> dict[str, float]:
    """How much a shapes model relies on the planted mark.

    - ``acc_uninformative``: accuracy when the mark is independent of the label (p = 0.5);
    - ``acc_class0_mark_off``: accuracy on shortcut-class images with the mark removed;
    - ``rate_pred0_mark_on_other``: fraction of other-class images predicted as the shortcut class once the
      mark is added (0 for a model that ignores the mark, 1 for one that only reads the mark).
    """
    from .. import data as vdata

    d = recipe.data
    sc = d["test"].get("shortcut_class", 0)
    xu, yu = vdata.shapes(image_size=d["image_size"], **d["test_uninformative"]).tensors()
    c, n = evaluate(model, xu, yu)
    base = {k: v for k, v in d["test"].items() if k != "shortcut"}
    xoff, yoff = vdata.shapes(image_size=d["image_size"], force_mark=False, **base).tensors()
    xon, yon = vdata.shapes(image_size=d["image_size"], force_mark=True, **base).tensors()
    with torch.no_grad():
        model.eval()
        pred_off = model(xoff).argmax(-1)
        pred_on = model(xon).argmax(-1)
    cls0 = yoff == sc
    return {"acc_uninformative": c / n,
            "acc_class0_mark_off": float((pred_off[cls0] == sc).float().mean()),
            "acc_other_mark_off": float((pred_off[~cls0] == yoff[~cls0]).float().mean()),
            "rate_pred0_mark_on_other": float((pred_on[~cls0] == sc).float().mean())}


def save(model: nn.Module, card: dict[str, Any], family: str, seed: int, directory: Path | None = None) -> Path:
    """Write ``<family>-seed<seed>.safetensors`` and ``.json`` (the card, with the weights' sha256)."""
    from safetensors.torch import save_file

    weights, card_path = checkpoint_paths(family, seed, directory)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"name": card["name"]})
    weights.chmod(0o644)  # package data: readable by everyone
    card = dict(card, checkpoint=weights.name,
                sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
                size_bytes=weights.stat().st_size)
    card_path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vision.zoo.train", description=__doc__.split("\n")[0])
    parser.add_argument("name", help=f"zoo family ({', '.join(RECIPES)}) or 'all'")
    parser.add_argument("--seed", type=int, action="append", help="seed (repeatable); default 0, or the "
                        "standard seeds for 'all'")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--out", type=Path, default=None, help=f"output directory (default {CHECKPOINT_DIR})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    families = list(RECIPES) if args.name == "all" else [args.name]
    for fam in families:
        if fam not in RECIPES:
            parser.error(f"unknown zoo family {fam!r}; known: {', '.join(RECIPES)}")
        seeds = args.seed or (DEFAULT_SEEDS[fam] if args.name == "all" else (0,))
        for seed in seeds:
            model, info = train_model(fam, seed, epochs=args.epochs)
            command = f"python -m vision.zoo.train {fam} --seed {seed}" + (
                f" --epochs {args.epochs}" if args.epochs is not None else "")
            card = model_card(model, fam, seed, info, command)
            path = save(model, card, fam, seed, args.out)
            logger.info("%s@seed%d: test accuracy %.4f (%d/%d), %.1f s -> %s", fam, seed, card["test_accuracy"],
                        card["test_correct"], card["n_test"], info["train_time_s"], path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
