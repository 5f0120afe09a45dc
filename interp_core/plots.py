"""Small figure helpers shared by the report, the demo and the CLI (matplotlib, imported lazily).

- :func:`agreement_scatter` — one estimate against its exact value per unit (e.g. attribution patching against
  exact patching), with the identity line and the Spearman rank correlation in the title;
- :func:`image_row` — a row of small images (e.g. 8x8 digits) shown large, with nearest-neighbour
  upsampling so every input pixel stays a visible square, each with a caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["agreement_scatter", "image_row"]


def agreement_scatter(exact: Any, estimate: Any, *, xlabel: str = "exact", ylabel: str = "estimate",
                      title: str = "", ax: Any = None) -> Any:
    """Scatter of ``estimate [U]`` against ``exact [U]`` with the line ``y = x``; the title carries the
    Spearman rank correlation (``scipy.stats.spearmanr``) and the number of units. Returns the figure."""
    import matplotlib.pyplot as plt
    from scipy.stats import spearmanr

    e = np.asarray(exact, dtype=float).ravel()
    a = np.asarray(estimate, dtype=float).ravel()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.scatter(e, a, s=9, alpha=0.6, edgecolors="none")
    lo, hi = float(min(e.min(), a.min())), float(max(e.max(), a.max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--", label="y = x")
    rho = float(spearmanr(e, a).statistic) if len(e) > 1 else float("nan")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}{chr(10) if title else ''}Spearman {rho:.2f} over {len(e)} units", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.figure.tight_layout()
    return ax.figure


def image_row(images: Sequence[Any], captions: Sequence[str], *, scale: int = 12, cmap: str = "gray",
              title: str = "", per_row: int = 5) -> Any:
    """Images ``[H, W]`` (or ``[1, H, W]``) side by side, ``per_row`` to a row (so the figure keeps a report's
    width), each upsampled ``scale`` times with nearest-neighbour interpolation for display (no smoothing: an
    8x8 input stays 8x8 squares) and captioned."""
    import matplotlib.pyplot as plt

    n = len(images)
    cols = min(n, per_row)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.8 * rows + 0.2), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, im, cap in zip(axes.flat, images, captions):
        a = np.asarray(im.detach().cpu().float() if hasattr(im, "detach") else im, dtype=float)
        if a.ndim == 3:
            a = a[0]
        a = np.kron(a, np.ones((scale, scale)))  # nearest-neighbour upsampling
        ax.imshow(a, cmap=cmap, interpolation="nearest")
        ax.set_title(cap, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
