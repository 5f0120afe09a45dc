"""The vision model zoo: tiny models trained by this project, with checkpoints and model cards in the package.

Names: ``"digits-cnn"``, ``"digits-vit"`` (seeds 0, 1, 2) and ``"shapes-cnn-shortcut"`` (seed 0). A seed is
chosen with ``@seedN`` (``"digits-cnn@seed1"``); the bare name means seed 0. Random-initialisation
controls: ``load(name, random_init=True)`` or the suffix ``-random`` (``"digits-cnn-random@seed1"``) give the
exact initial weights the trained model started from (``torch.manual_seed(seed)`` then construction), so
"trained vs untrained" comparisons differ only by training.

>>> hm = vision.zoo.load("digits-vit@seed2")            # HookedModel (vision.wrap when available)
>>> net = vision.zoo.load("digits-cnn", hooked=False)   # the plain nn.Module, eval mode
>>> vision.zoo.card("digits-cnn")["test_accuracy"]

Every checkpoint was written by ``python -m vision.zoo.train NAME --seed N`` (the exact command is in the
card) and is reproducible bit for bit on the same torch version.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from interp_core.errors import SiteError

from .models import DEFAULT_SEEDS, RECIPES, Recipe, build, checkpoint_paths

__all__ = ["load", "card", "names", "parse_name", "test_data", "RECIPES"]

_NAME = re.compile(r"^(?P<family>[a-z0-9-]+?)(?P<random>-random)?(?:@seed(?P<seed>\d+))?$")


def parse_name(name: str) -> tuple[str, int, bool]:
    """``"digits-cnn-random@seed1"`` → ``("digits-cnn", 1, True)``; raises a helpful error otherwise."""
    m = _NAME.match(name) if isinstance(name, str) else None
    if m is None or m.group("family") not in RECIPES:
        fam = m.group("family") if m else name
        import difflib

        close = difflib.get_close_matches(str(fam), list(RECIPES), n=2, cutoff=0.4)
        raise SiteError(f"unknown zoo model {name!r}; known families: {', '.join(RECIPES)} (add '@seedN' for a "
                       f"seed, '-random' for the untrained twin)" + (f"; closest: {close}" if close else ""))
    return m.group("family"), int(m.group("seed") or 0), m.group("random") is not None


def names() -> list[str]:
    """Names of all trained checkpoints shipped with the package."""
    return [f"{fam}@seed{s}" for fam, seeds in DEFAULT_SEEDS.items() for s in seeds
            if checkpoint_paths(fam, s)[0].exists()]


def card(name: str, checkpoint_dir: str | Path | None = None) -> dict[str, Any]:
    """The model card (JSON) of a trained checkpoint: data, seed, epochs, accuracy, train time, command."""
    family, seed, _ = parse_name(name)
    path = checkpoint_paths(family, seed, Path(checkpoint_dir) if checkpoint_dir else None)[1]
    if not path.exists():
        raise FileNotFoundError(f"no model card for {family}@seed{seed} at {path}; train it with "
                                f"`python -m vision.zoo.train {family} --seed {seed}`")
    return json.loads(path.read_text())


def test_data(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` of the test split the card's ``test_accuracy`` was measured on."""
    from .train import load_data

    return load_data(RECIPES[parse_name(name)[0]], "test")


def _input_shape(recipe: Recipe) -> tuple[int, int, int]:
    d = recipe.data
    if d["kind"] == "digits":
        return (1, d["size"], d["size"])
    return (3, d["image_size"], d["image_size"])


def load(name: str, *, hooked: bool = True, random_init: bool = False,
         checkpoint_dir: str | Path | None = None) -> Any:
    """A zoo model in eval mode: a hooked model (default) or the raw ``nn.Module`` (``hooked=False``).

    Args:
        name: ``family[-random][@seedN]``, e.g. ``"digits-cnn@seed1"``; see :func:`names`.
        hooked: wrap with ``vision.wrap`` (the vision adapter's canonical sites) when it exists, else with
            :class:`interp_core.HookedModel`.
        random_init: the untrained twin (same architecture and seed, the initial weights).
        checkpoint_dir: read checkpoints from here instead of the package's ``checkpoints/``.
    """
    family, seed, rand = parse_name(name)
    recipe = RECIPES[family]
    with torch.random.fork_rng(devices=[]):  # the caller's RNG state is untouched
        torch.manual_seed(seed)
        model = build(recipe)
    if not (rand or random_init):
        from safetensors.torch import load_file

        weights = checkpoint_paths(family, seed, Path(checkpoint_dir) if checkpoint_dir else None)[0]
        if not weights.exists():
            raise FileNotFoundError(f"no checkpoint for {family}@seed{seed} at {weights}; train it with "
                                    f"`python -m vision.zoo.train {family} --seed {seed}` or pass "
                                    f"random_init=True for the untrained model")
        model.load_state_dict(load_file(str(weights)), strict=True)
    model.eval()
    if not hooked:
        return model
    return _wrap(model, torch.zeros(1, *_input_shape(recipe)))


def _wrap(model: nn.Module, example: torch.Tensor) -> Any:
    try:
        import vision

        wrap = getattr(vision, "wrap", None)
    except ImportError:  # pragma: no cover - vision is this package's parent
        wrap = None
    if wrap is not None:
        import inspect

        try:
            takes_example = "example_input" in inspect.signature(wrap).parameters
        except (TypeError, ValueError):
            takes_example = False
        return wrap(model, example_input=example) if takes_example else wrap(model)
    from interp_core import HookedModel

    return HookedModel(model, example_input=example)
