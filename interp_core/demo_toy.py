"""The toy-models stage of ``interp demo``: superposition in the models of Elhage et al. 2022.

Domain-free (no images, no environments), so it lives in :mod:`interp_core` beside :mod:`interp_core.demo`:

- the geometry plot: ``n = 5`` features of importance ``0.9^i`` in ``m = 2`` hidden dimensions, for growing
  sparsity ``S`` — dense, only the two most important features get a dimension each; sparse, all five share
  the plane as a pentagon (:func:`interp_core.features.toy.train_toy_models`);
- (full run only) the phase diagram of ``n = 2, m = 1`` over sparsity and the second feature's relative
  importance: not represented, a dedicated dimension, or an antipodal pair in superposition
  (:func:`interp_core.features.toy.phase_diagram`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def toy_stage(report: Any, quick: bool = False) -> None:
    """Train the toy models and add their sections to ``report``."""
    from .features import toy

    sparsity = (0.0, 0.95) if quick else (0.0, 0.7, 0.9, 0.97)
    steps, n_init, batch = (2000, 1, 256) if quick else (5000, 2, 512)
    models = toy.train_toy_models(5, 2, sparsity=sparsity, importance=0.9, n_init=n_init, n_steps=steps,
                                  batch_size=batch, seed=0, progress=False)
    n_rep = [int(v) for v in models.n_represented()]
    dims = models.dimensionality()
    rows = [{"sparsity S": float(s), "features represented": r, "loss": float(loss),
             "mean dimensionality": float(d.mean())}
            for s, r, loss, d in zip(models.sparsity, n_rep, models.loss, dims)]
    report.add("Features: superposition in toy models (Elhage et al. 2022)", text=(
        "Five features of importance 0.9^i squeezed into two hidden dimensions (h = W x, x' = ReLU(W^T h + b)), "
        "trained at growing sparsity S (the chance a feature is 0). Each arrow is a feature's column of W, darker "
        f"= more important. Dense (S = 0), {n_rep[0]} features are represented; at S = {float(sparsity[-1]):g}, "
        f"{n_rep[-1]} share the plane (represented: ||W_i|| > 0.5). The paper reports 2 orthogonal features when "
        f"dense and a pentagon of 5 with dimensionality 2/5 each when sparse; these runs train for {steps} steps. "
        "Feature dimensionality D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2."),
        figure=models.plot(), caption="Columns of W per sparsity; the grey circle has radius 1.",
        table=rows, numbers={"n_represented": n_rep, "dimensionality": dims.tolist(), "config": models.config})
    if quick:
        return
    diagram = toy.phase_diagram(sparsity=(0.0, 0.5, 0.8, 0.9, 0.95, 0.99),
                                relative_importance=(0.1, 0.3, 1.0, 3.0, 10.0), n_init=2, n_steps=2000,
                                batch_size=512, seed=0, progress=False)
    report.add("Features: the phase diagram of superposition (n = 2, m = 1)", text=(
        "Two features, one hidden dimension, over sparsity and the second feature's relative importance: the "
        "extra feature is dropped (blue), gets the dimension alone (grey) or shares it with the first as an "
        "antipodal pair (red, superposition). As in the paper, superposition takes over as features get "
        "sparser, and the more important feature wins the dimension when they are dense."),
        figure=diagram.plot().figure, numbers={"phase": diagram.phase.tolist(),
                                               "sparsity": diagram.sparsity.tolist(),
                                               "relative_importance": diagram.relative_importance.tolist()})


def stages(quick: bool = False) -> list[tuple[str, Callable[[Any], None]]]:
    """The toy-models stage as ``(name, fn(report))``."""
    return [("toy models of superposition", lambda report: toy_stage(report, quick))]
