"""The shape every analysis result shares: numbers + the configuration that made them.

A result is a dataclass; ``to_dict()`` turns tensors and arrays into lists, ``save(path)`` writes JSON
atomically, and ``plot()`` draws the result's standard figure (matplotlib, imported lazily).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def jsonable(x: Any) -> Any:
    """Tensors, arrays and numpy scalars as plain Python; dataclasses and mappings recursively."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and (x != x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``jsonable(obj)`` to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=1))
    os.replace(tmp, path)
    return path


class Result:
    """Base of every result dataclass: ``to_dict`` (numbers and configuration as JSON types), ``save`` (atomic
    JSON) and ``plot`` (the result's standard figure; each result class defines its own)."""

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)

    def save(self, path: str | os.PathLike) -> Path:
        return save_json(self, path)

    def plot(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no standard figure yet")
