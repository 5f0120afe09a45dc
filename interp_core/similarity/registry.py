"""Measures by name, for functions that take ``measure="linear_cka"`` and the like."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import partial

from ..errors import InputError
from .cca import pwcca, svcca
from .cka import cka
from .geometry import mutual_knn, procrustes, rsa

MEASURES: dict[str, Callable] = {
    "linear_cka": partial(cka, kernel="linear"),
    "debiased_cka": partial(cka, kernel="linear", debiased=True),
    "rbf_cka": partial(cka, kernel="rbf"),
    "svcca": svcca,
    "pwcca": pwcca,
    "procrustes": procrustes,
    "rsa": rsa,
    "mutual_knn": mutual_knn,
}
DISTANCES = frozenset({"procrustes"})


def get_measure(measure: str | Callable) -> Callable:
    """A measure function ``(X, Y) -> float`` from its name, or the callable itself."""
    if callable(measure):
        return measure
    if measure in MEASURES:
        return MEASURES[measure]
    close = difflib.get_close_matches(str(measure), list(MEASURES), n=2, cutoff=0.4)
    raise InputError(f"unknown similarity measure {measure!r}; known: {', '.join(MEASURES)}"
                     + (f"; closest: {close}" if close else "") + " (or pass a callable (X, Y) -> float)")
