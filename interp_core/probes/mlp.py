"""Nonlinear probes (``interp_core.probes``): :class:`MLPProbe`, a small multilayer perceptron.

Objective: ``sum_i s_i loss_i / sum_i s_i + (l2 / (2 sum_i s_i)) * sum ||W||^2`` over the weight matrices
(biases not penalised), the same per-row scaling as :class:`~interp_core.probes.LinearProbe`'s logistic
objective; ``loss_i`` is softmax cross-entropy (classifier) or squared error summed over outputs
(regressor). Trained full batch by ``torch.optim.LBFGS`` (strong Wolfe line search) from an initialisation
drawn from ``random_state`` (the global torch generator is left untouched).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from sklearn.utils.metaestimators import available_if
from torch import nn

from ..errors import InputError
from .base import ArrayLike, ProbeBase

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLPProbe(ProbeBase):
    """A multilayer-perceptron probe (classifier or regressor), trained full-batch with L-BFGS.

    Args (keyword-only):
        hidden: hidden layer widths, e.g. ``(64,)``.
        task: ``"classifier"`` (softmax cross-entropy) or ``"regressor"`` (squared error).
        l2: weight decay on the weights (see the module docstring).
        activation: ``"relu"``, ``"gelu"`` or ``"tanh"``.
        standardize, class_weight, constant_features: as :class:`~interp_core.probes.LinearProbe`.
        max_iter: L-BFGS iterations.
        random_state: seed of the initialisation.

    Fitted attributes: ``net_`` (the torch module, on standardised inputs), ``mean_``, ``scale_``,
    ``classes_`` (classifier), ``n_features_in_``, ``n_iter_``. A classifier is a scikit-learn classifier, a
    regressor a (multi-output) scikit-learn regressor, by their tags.
    """

    def __init__(self, *, hidden: Sequence[int] = (64,), task: Literal["classifier", "regressor"] = "classifier",
                 l2: float = 1e-2, activation: str = "relu", standardize: bool = True, class_weight: Any = None,
                 max_iter: int = 300, random_state: int = 0, constant_features: str = "error"):
        self.hidden = hidden
        self.task = task
        self.l2 = l2
        self.activation = activation
        self.standardize = standardize
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state
        self.constant_features = constant_features

    def _is_classifier(self) -> bool:
        if self.task not in ("classifier", "regressor"):
            raise InputError(f"task must be 'classifier' or 'regressor', got {self.task!r}")
        return self.task == "classifier"

    def fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None) -> "MLPProbe":
        """Fit on ``X [N, d]`` and ``y [N]`` (``[N, t]`` targets for a regressor); returns ``self``."""
        self._is_classifier()
        if self.activation not in ACTIVATIONS:
            raise InputError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.l2 < 0 or int(self.max_iter) < 1:
            raise InputError(f"l2 must be >= 0 and max_iter >= 1, got l2={self.l2}, max_iter={self.max_iter}")
        hidden = [int(h) for h in self.hidden]
        if any(h < 1 for h in hidden):
            raise InputError(f"hidden: widths must be positive integers, got {self.hidden!r}")
        X, y, sw = self._validate_fit(X, y, sample_weight)
        mean, scale = self._standardize_stats(X, self.standardize, self.constant_features, sw)
        Xs = ((X.float() - mean.float()) / scale.float())
        if self.is_classifier:
            classes, yi = self._encode_labels(y)
            self.classes_ = classes
            w_rows = self._class_sample_weight(yi, len(classes), self.class_weight, sw)
            n_out = len(classes)
            target = yi.to(X.device)
        else:
            target = self._regression_targets(y).float().to(X.device)
            w_rows = sw
            n_out = target.shape[1]
        total = float(w_rows.sum()) if w_rows is not None else float(len(Xs))
        w = (w_rows / total).float().to(X.device) if w_rows is not None else \
            torch.full((len(Xs),), 1.0 / len(Xs), device=X.device)
        devices = [X.device] if X.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(self.random_state))
            layers: list[nn.Module] = []
            width = X.shape[1]
            for h in hidden:
                layers += [nn.Linear(width, h), ACTIVATIONS[self.activation]()]
                width = h
            layers.append(nn.Linear(width, n_out))
            net = nn.Sequential(*layers).to(X.device)
        weights = [m.weight for m in net if isinstance(m, nn.Linear)]
        opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=int(self.max_iter), history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-10)
        reg = 0.5 * float(self.l2) / total

        def closure() -> torch.Tensor:
            opt.zero_grad()
            out = net(Xs)
            if self.is_classifier:
                losses = nn.functional.cross_entropy(out, target, reduction="none")
            else:
                losses = ((out - target) ** 2).sum(1)
            loss = (w * losses).sum() + reg * sum((p ** 2).sum() for p in weights)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        self.n_iter_ = max(1, int(opt.state[opt._params[0]].get("n_iter", 1)))
        # predictions in float64: a row's output then does not depend on the batch it is computed in
        self.net_ = net.eval().requires_grad_(False).double()
        self.mean_, self.scale_ = mean, scale
        self.n_features_in_ = X.shape[1]
        return self

    def _forward(self, X: ArrayLike) -> torch.Tensor:
        X = self._fitted_features(X).to(self.mean_.device)
        with torch.no_grad():
            return self.net_((X.double() - self.mean_.double()) / self.scale_.double())

    @available_if(lambda self: self.is_classifier)
    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        """Class probabilities ``[N, n_classes]`` (classifier)."""
        return torch.softmax(self._forward(X).double(), 1).cpu().numpy()

    @available_if(lambda self: self.is_classifier)
    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """Logits ``[N, n_classes]`` (binary: ``[N]``, the logit difference, positive = ``classes_[1]``)."""
        z = self._forward(X).double()
        return (z[:, 1] - z[:, 0] if z.shape[1] == 2 else z).cpu().numpy()

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Class labels ``[N]`` (classifier) or predicted targets ``[N]`` / ``[N, t]`` (regressor)."""
        out = self._forward(X)
        if self.is_classifier:
            return self.classes_[out.argmax(1).cpu().numpy()]
        out = out.double().cpu().numpy()
        return out[:, 0] if self._y_1d else out

    def direction_(self, label: Any = None, normalize: bool = True) -> torch.Tensor:
        raise AttributeError("an MLP probe has no single direction; use LinearProbe for steering directions")
