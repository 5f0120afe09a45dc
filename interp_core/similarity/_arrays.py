"""Input validation shared by the similarity measures: two ``[N, d]`` matrices over the same N inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError

ArrayLike = Any  # numpy array, torch tensor or nested sequence of numbers


def as_matrix(X: ArrayLike, what: str = "X") -> np.ndarray:
    """``X`` as a float64 numpy array ``[N, d]`` (a 1-D input becomes one feature column)."""
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().to(torch.float64).numpy()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise InputError(f"{what} must be a [N, d] matrix (rows = inputs, columns = features), got shape "
                         f"{X.shape}; use cache.features(site, pool=...) to get feature rows")
    if not np.all(np.isfinite(X)):
        raise InputError(f"{what} contains NaN or infinite values")
    return X


def as_pair(X: ArrayLike, Y: ArrayLike, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Validate two representations of the same inputs: same number of rows, at least ``min_rows``."""
    X, Y = as_matrix(X, "X"), as_matrix(Y, "Y")
    if X.shape[0] != Y.shape[0]:
        raise InputError(f"X and Y must have one row per input for the same inputs, got {X.shape[0]} and "
                         f"{Y.shape[0]} rows; pool positions alike (or use the same data) for both")
    if X.shape[0] < min_rows:
        raise InputError(f"this measure needs at least {min_rows} rows, got {X.shape[0]}")
    return X, Y


def center(X: np.ndarray) -> np.ndarray:
    """Subtract the column means."""
    return X - X.mean(axis=0, keepdims=True)
