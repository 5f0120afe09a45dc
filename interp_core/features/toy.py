"""Toy models of superposition (Elhage et al. 2022, "Toy Models of Superposition", Anthropic).

``n`` features ``x [n]``, each 0 with probability ``S`` (the sparsity) and otherwise uniform on ``[0, 1]``,
are squeezed into ``m < n`` hidden dimensions and read back with the transpose::

    h = W x            W: [m, n]   (column W_i is feature i's direction)
    x' = ReLU(W^T h + b)

trained with the importance-weighted squared error ``L = E_x sum_i I_i (x_i - x'_i)^2 / n`` (Adam, the
paper's batch 1024 and learning rate 1e-3). :func:`train_toy_models` trains many instances at once, one per
combination of sparsity and importance (and ``n_init`` random starts of each, keeping the lowest loss),
vectorised as one batched model ``W [instances, m, n]``.

Analyses on the result (:class:`ToyModels`), per instance and feature:

- ``feature_norms``: ``||W_i||`` (about 1 when the feature is represented, 0 when it is dropped);
- ``interference``: ``sum_{j != i} (W_i_hat . W_j)^2``, with ``W_i_hat = W_i / ||W_i||``;
- ``dimensionality``: ``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2`` (sum over all features, ``i`` included): 1 for
  a dedicated dimension, 1/2 for an antipodal pair, 2/5 for a pentagon in 2 dimensions, 0 for a dropped one.

``ToyModels.plot()`` draws the paper's geometry plot (columns of ``W`` as arrows) for ``m = 2`` and ``W^T W``
otherwise; :func:`phase_diagram` trains the ``n = 2, m = 1`` models over sparsity and the second feature's
relative importance and classifies each as the paper's phase diagram does: the extra feature not
represented, given the dimension alone, or stored in superposition (an antipodal pair ``w_1 w_2 < 0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..progress import progress_bar
from ..results import Result

__all__ = ["ToyModels", "PhaseDiagram", "train_toy_models", "phase_diagram", "PHASES", "readme_figures"]

PHASES = ("not represented", "dedicated", "superposition")
REPRESENTED = 0.5


@dataclass
class ToyModels(Result):
    """Trained toy models: ``W [K, m, n]``, ``b [K, n]``, each instance's ``sparsity [K]``, ``importance [K, n]``
    and final ``loss [K]``; ``grid`` is ``(len(sparsities), len(importances))``, instances in row-major order."""

    W: torch.Tensor
    b: torch.Tensor
    sparsity: torch.Tensor
    importance: torch.Tensor
    loss: torch.Tensor
    grid: tuple
    config: dict = field(default_factory=dict)

    def feature_norms(self) -> torch.Tensor:
        """``[K, n]``: ``||W_i||``."""
        return self.W.norm(dim=1)

    def _overlaps(self) -> torch.Tensor:
        norms = self.feature_norms().clamp_min(1e-12)
        w_hat = self.W / norms[:, None, :]
        return torch.einsum("kmi,kmj->kij", w_hat, self.W) ** 2  # [K, n, n]: (W_i_hat . W_j)^2

    def interference(self) -> torch.Tensor:
        """``[K, n]``: ``sum_{j != i} (W_i_hat . W_j)^2``."""
        ov = self._overlaps()
        return ov.sum(-1) - torch.diagonal(ov, dim1=1, dim2=2)

    def dimensionality(self) -> torch.Tensor:
        """``[K, n]``: ``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2`` (0 for a feature with ``W_i = 0``)."""
        num = self.feature_norms() ** 2
        den = self._overlaps().sum(-1)
        return torch.where(num > 1e-8, num / den.clamp_min(1e-12), torch.zeros_like(num))

    def n_represented(self, threshold: float = REPRESENTED) -> torch.Tensor:
        """``[K]``: features with ``||W_i|| > threshold``."""
        return (self.feature_norms() > threshold).sum(-1)

    def plot(self, instances: Sequence[int] | None = None) -> Any:
        """The geometry plot for ``m = 2`` (each feature's column of ``W`` as an arrow, darker = more important),
        ``W^T W`` heatmaps otherwise; one panel per instance (default: all, at most 12)."""
        import matplotlib.pyplot as plt

        idx = list(instances) if instances is not None else list(range(min(len(self.W), 12)))
        fig, axes = plt.subplots(1, len(idx), figsize=(2.4 * len(idx), 2.6), squeeze=False)
        m, n = self.W.shape[1:]
        for ax, k in zip(axes[0], idx):
            w = self.W[k].detach().cpu().numpy()
            if m == 2:
                imp = self.importance[k].cpu().numpy()
                shade = plt.cm.viridis(imp / max(float(imp.max()), 1e-12))
                ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="0.8"))
                for i in range(n):
                    ax.plot([0, w[0, i]], [0, w[1, i]], color=shade[i])
                    ax.scatter([w[0, i]], [w[1, i]], color=shade[i], s=12)
                ax.set_xlim(-1.4, 1.4)
                ax.set_ylim(-1.4, 1.4)
                ax.set_aspect("equal")
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                g = w.T @ w
                lim = max(float(np.abs(g).max()), 1e-6)
                ax.imshow(g, cmap="RdBu", vmin=-lim, vmax=lim)
            ax.set_title(f"S={float(self.sparsity[k]):.3g}", fontsize=9)
        fig.tight_layout()
        return fig


def _importances(importance: Any, n: int) -> torch.Tensor:
    if importance is None:
        return torch.ones(1, n)
    if isinstance(importance, (int, float)):
        if not importance > 0:
            raise InputError(f"importance: a decay factor must be > 0, got {importance!r}")
        return (float(importance) ** torch.arange(n, dtype=torch.float32))[None]
    t = torch.as_tensor(np.asarray(importance), dtype=torch.float32)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[1] != n:
        raise InputError(f"importance: expected a decay factor, [n={n}] or [R, n={n}] importances, got shape "
                         f"{tuple(t.shape)}")
    if bool((t < 0).any()) or not bool(torch.isfinite(t).all()):
        raise InputError("importance: importances must be finite and >= 0")
    return t


def train_toy_models(n_features: int = 5, n_hidden: int = 2, sparsity: Sequence[float] | float = (0.0,),
                     importance: Any = None, *, n_init: int = 1, n_steps: int = 10_000, batch_size: int = 1024,
                     lr: float = 1e-3, seed: int = 0, progress: bool | None = None) -> ToyModels:
    """Train ``len(sparsity) x len(importance) x n_init`` toy models at once; keep the best start of each.

    Args:
        n_features, n_hidden: ``n`` and ``m``.
        sparsity: the probability ``S`` that a feature is 0, one value or several.
        importance: ``None`` (all 1), a decay ``r`` (``I_i = r^i``, the paper's 0.9 for n = 5, m = 2), a vector
            ``[n]`` or several rows ``[R, n]``.
        n_init: random starts per combination; the one with the lowest final loss is kept.
        n_steps, batch_size, lr: Adam steps, examples per step, learning rate.
    """
    for name, v in (("n_features", n_features), ("n_hidden", n_hidden), ("n_init", n_init), ("n_steps", n_steps),
                    ("batch_size", batch_size)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise InputError(f"{name}: must be a positive integer, got {v!r}")
    sp = torch.as_tensor(np.atleast_1d(np.asarray(sparsity, dtype=np.float32)))
    if sp.dim() != 1 or bool(((sp < 0) | (sp >= 1)).any()):
        raise InputError(f"sparsity: values in [0, 1) expected, got {sparsity!r}")
    imp = _importances(importance, n_features)
    n_s, n_r = len(sp), len(imp)
    k = n_s * n_r * n_init
    s_k = sp.repeat_interleave(n_r * n_init)  # instance order: sparsity, importance, start
    i_k = imp.repeat_interleave(n_init, 0).repeat(n_s, 1)
    g = torch.Generator().manual_seed(int(seed))
    std = (2.0 / (n_hidden + n_features)) ** 0.5  # Xavier normal, as in the paper's code
    W = (torch.randn(k, n_hidden, n_features, generator=g) * std).requires_grad_(True)
    b = torch.zeros(k, n_features, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=lr)

    def batch() -> torch.Tensor:
        x = torch.rand(k, batch_size, n_features, generator=g)
        keep = torch.rand(k, batch_size, n_features, generator=g) >= s_k[:, None, None]
        return x * keep

    def losses(x: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("kbn,kmn->kbm", x, W)
        out = torch.relu(torch.einsum("kbm,kmn->kbn", h, W) + b[:, None, :])
        return (i_k[:, None, :] * (x - out) ** 2).mean((1, 2))

    for _ in progress_bar(range(n_steps), desc="toy models", progress=progress):
        loss = losses(batch()).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = torch.stack([losses(batch()) for _ in range(8)]).mean(0)
    best = final.reshape(n_s * n_r, n_init).argmin(1) + torch.arange(n_s * n_r) * n_init
    return ToyModels(W=W.detach()[best], b=b.detach()[best], sparsity=s_k[best], importance=i_k[best],
                     loss=final[best], grid=(n_s, n_r),
                     config={"n_features": n_features, "n_hidden": n_hidden, "n_init": n_init, "n_steps": n_steps,
                             "batch_size": batch_size, "lr": lr, "seed": seed})


@dataclass
class PhaseDiagram(Result):
    """``phase [len(sparsity), len(relative_importance)]``: index into :data:`PHASES` for each ``n = 2, m = 1``
    model (feature 1 of importance 1, feature 2 of ``relative_importance``), plus the trained ``models``."""

    sparsity: torch.Tensor
    relative_importance: torch.Tensor
    phase: torch.Tensor
    models: ToyModels
    config: dict = field(default_factory=dict)

    def plot(self, ax: Any = None) -> Any:
        """The phase diagram: relative importance (log x axis) against feature density ``1 - S`` (log y axis)."""
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap

        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 3.5))
        cmap = ListedColormap(["#4c72b0", "#dddddd", "#c44e52"])
        r = self.relative_importance.numpy()
        dens = 1 - self.sparsity.numpy()
        ax.pcolormesh(_log_edges(r), _log_edges(dens), self.phase.numpy(), cmap=cmap, vmin=-0.5, vmax=2.5,
                      shading="flat")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.minorticks_off()  # the log axes' minor labels overlap; label the grid's own values
        ax.set_xticks(r, [f"{v:g}" for v in r])
        ax.set_yticks(dens, [f"{v:.2g}" for v in dens])
        ax.set_xlabel("relative importance of feature 2")
        ax.set_ylabel("feature density 1 - S")
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(3)]
        ax.legend(handles, PHASES, fontsize=7, loc="lower right")
        return ax.figure


def _log_edges(v: np.ndarray) -> np.ndarray:
    """Cell edges around sorted positive centres ``v`` at geometric midpoints (for a log-scaled mesh)."""
    v = np.asarray(v, dtype=np.float64)
    if len(v) == 1:
        return np.array([v[0] / 2, v[0] * 2])
    mid = np.sqrt(v[1:] * v[:-1])
    return np.concatenate([[v[0] ** 2 / mid[0]], mid, [v[-1] ** 2 / mid[-1]]])


def phase_diagram(sparsity: Sequence[float] = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99),
                  relative_importance: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 10.0), *,
                  n_init: int = 3, n_steps: int = 5_000, batch_size: int = 1024, lr: float = 1e-3, seed: int = 0,
                  progress: bool | None = None) -> PhaseDiagram:
    """Train ``n = 2, m = 1`` toy models over sparsity x relative importance and classify each:
    ``0`` the extra feature (2) not represented (``|w_2| < 0.5``), ``1`` it has the dimension alone (``|w_1| <
    0.5``), ``2`` both stored in superposition (both ``> 0.5``, antipodal ``w_1 w_2 < 0``)."""
    r = torch.as_tensor(np.asarray(relative_importance, dtype=np.float32))
    if r.dim() != 1 or bool((r <= 0).any()):
        raise InputError(f"relative_importance: positive values expected, got {relative_importance!r}")
    imp = torch.stack([torch.ones_like(r), r], 1)
    models = train_toy_models(2, 1, sparsity, imp, n_init=n_init, n_steps=n_steps, batch_size=batch_size, lr=lr,
                              seed=seed, progress=progress)
    w = models.W[:, 0, :]  # [K, 2]
    on = w.abs() > REPRESENTED
    phase = torch.zeros(len(w), dtype=torch.long)
    phase[on[:, 1] & ~on[:, 0]] = 1
    phase[on[:, 0] & on[:, 1] & (w[:, 0] * w[:, 1] < 0)] = 2
    return PhaseDiagram(sparsity=models.sparsity.reshape(models.grid)[:, 0], relative_importance=r,
                        phase=phase.reshape(models.grid), models=models,
                        config={"n_init": n_init, "n_steps": n_steps, "batch_size": batch_size, "lr": lr,
                                "seed": seed})


def readme_figures(out_dir: str | Path = ".", *, n_steps: int = 1500, seed: int = 0,
                   progress: bool | None = None) -> list[Path]:
    """Write the README's toy-model figures to ``out_dir`` and return their paths:

    - ``toy_geometry.png``: ``n = 5`` features of importance ``0.9^i`` in ``m = 2`` dimensions at sparsity 0,
      0.7, 0.9 and 0.97 (the paper's Figure 2: 2 dedicated features when dense, then an antipodal pair and a
      pentagon as sparsity grows);
    - ``toy_phase.png``: the ``n = 2, m = 1`` phase diagram over sparsity and relative importance.
    A few seconds on one CPU core with the defaults (Adam at ``lr = 1e-2``)."""
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geo = train_toy_models(5, 2, sparsity=(0.0, 0.7, 0.9, 0.97), importance=0.9, n_init=3, n_steps=n_steps,
                           batch_size=512, lr=1e-2, seed=seed, progress=progress)
    fig = geo.plot()
    fig.savefig(out / "toy_geometry.png", dpi=110)
    plt.close(fig)
    pd = phase_diagram(sparsity=(0.0, 0.5, 0.8, 0.9, 0.95, 0.98), relative_importance=(0.25, 0.5, 1.0, 2.0, 4.0),
                       n_init=2, n_steps=n_steps, batch_size=512, lr=1e-2, seed=seed, progress=progress)
    fig = pd.plot()
    fig.tight_layout()
    fig.savefig(out / "toy_phase.png", dpi=110)
    plt.close(fig)
    return [out / "toy_geometry.png", out / "toy_phase.png"]
