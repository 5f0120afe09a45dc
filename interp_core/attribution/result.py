"""The result of an attribution: a tensor whose dimensions carry axis roles, and its figure."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, InputIndexError
from ..results import Result, jsonable, save_json


@dataclass
class AttributionResult(Result):
    """Attributions with axis roles.

    Attributes:
        attributions: ``[batch, ...]``: the input's shape for input methods, the site's shape for layer
            methods, the site's positions only for Grad-CAM (``[batch, *pos]``, or ``[batch, n_selected]`` when
            a subset of positions was selected; ``[batch]`` for a site without positions).
        axes: one role (``batch``, ``pos``, ``head``, ``feature``) per dimension.
        method: the canonical method name; ``site``: the site (layer methods) or ``None``.
        delta: captum's convergence delta ``[batch]`` when requested (IG-family, DeepLift, GradientShap).
        config: the settings that produced it (``config["positions"]``: the flat positions Grad-CAM kept).
    """

    attributions: torch.Tensor
    axes: tuple[str, ...]
    method: str
    site: str | None = None
    delta: torch.Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> torch.Size:
        return self.attributions.shape

    def sum_over(self, *roles: str) -> tuple[torch.Tensor, tuple[str, ...]]:
        """Sum the axes with the given roles, e.g. ``sum_over("feature")`` -> a per-position map."""
        dims = [i for i, a in enumerate(self.axes) if a in roles]
        t = self.attributions.sum(dim=dims) if dims else self.attributions
        return t, tuple(a for a in self.axes if a not in roles)

    def per_position(self) -> torch.Tensor:
        """Attributions summed over head and feature axes: ``[batch, *pos]`` (``[batch]`` without pos)."""
        return self.sum_over("head", "feature")[0]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "site": self.site, "axes": list(self.axes),
                "shape": list(self.attributions.shape), "attributions": jsonable(self.attributions),
                "delta": jsonable(self.delta), "config": jsonable(self.config)}

    def save(self, path: str | Path) -> Path:
        return save_json(self.to_dict(), path)

    def plot(self, index: int | None = None, n: int = 4, ax: Any = None) -> Any:
        """One panel per example (the first ``n``, or only example ``index``): the per-position map as an
        image for two pos axes (a CNN cell grid, an input image), as bars for one pos axis (tokens) or, without
        positions, the attributions per feature. Each panel's caption gives the example and the sum of its
        attributions (for integrated gradients: ``F(x) - F(baseline)`` by completeness); image panels share
        one symmetric colour scale and a colour bar. Returns the figure."""
        import matplotlib.pyplot as plt

        total = self.attributions.shape[0]
        if index is not None:
            if not -total <= index < total:
                raise InputIndexError(f"index: {index} is out of range for {total} examples")
            rows = [index % total]
        else:
            rows = list(range(min(n, total)))
        maps, axes = self.sum_over("head", "feature")
        n_pos = sum(a == "pos" for a in axes)
        if ax is not None and len(rows) != 1:
            raise InputError("ax: one axes object draws one example; pass index= as well")
        if ax is None:
            fig, panels = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
            panels = list(panels[0])
        else:
            fig, panels = ax.figure, [ax]
        lim = float(maps[rows].abs().max()) or 1.0
        image = None
        for p, i in zip(panels, rows):
            m = maps[i].detach().cpu().float().numpy()
            caption = f"example {i}: sum {float(self.attributions[i].sum()):.3g}"
            if n_pos == 2:
                image = p.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
                p.set_xlabel("pos (w)")
                p.set_ylabel("pos (h)")
            elif n_pos == 1:
                p.bar(np.arange(len(m)), m, color=np.where(m >= 0, "tab:red", "tab:blue"))
                p.set_xlabel("position")
            else:
                f = self.attributions[i].detach().cpu().reshape(-1).float().numpy()
                p.bar(np.arange(len(f)), f, color=np.where(f >= 0, "tab:red", "tab:blue"))
                p.set_xlabel("feature")
            p.set_title(caption, fontsize=8)
        if image is not None:
            fig.colorbar(image, ax=panels, shrink=0.8, label="attribution")
        what = self.config.get("metric") or self.config.get("target")
        fig.suptitle(f"{self.method}" + (f" at {self.site}" if self.site else "")
                     + (f" ({what})" if what is not None else ""), fontsize=9)
        return fig
