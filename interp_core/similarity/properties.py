"""Machine-readable twin of the property table in :mod:`interp_core.similarity` (kind, range, invariances).

Each row of :data:`PROPERTIES` is one measure as called (its name in the table and the call it stands for) and
what the documentation promises about it. ``tests/interp_core/test_similarity_properties.py`` checks that the
table printed in the package docstring is exactly :func:`render_table` of these rows, and checks every claim
against the code, both ways: an invariance marked ``yes`` must hold (to rounding), one marked ``no`` must fail
for the test's transformation, ``Y only`` must hold when the map is applied to ``Y`` and fail when applied to
``X``. The transformations, applied to the rows of a representation ``X`` ``[N, d]``:

- orthogonal: ``X Q`` with ``Q`` a random orthogonal ``d x d`` matrix;
- isotropic scaling: ``c X`` with a scalar ``c > 0``;
- invertible linear: ``X A`` with ``A`` a random (Gaussian, far from orthogonal) invertible ``d x d`` matrix;
- translation: ``X + 1 b^T`` with ``b`` a fixed vector (different entries per feature).

``kind`` ``similarity``: the measure of a representation with itself is the top of its range; ``distance``: it
is the bottom (0). ``range``: every value lies in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from .cca import pwcca, svcca
from .cka import cka
from .geometry import mutual_knn, procrustes, rsa

Claim = str  # "yes", "no" or "Y only"
COLUMNS = ("measure", "kind", "range", "orthogonal", "isotropic scaling", "invertible linear", "translation",
           "source")
TRANSFORMS = ("orthogonal", "isotropic scaling", "invertible linear", "translation")
HEADER = (("measure", "kind", "range", "orthogonal", "isotropic", "invertible", "translation", "source"),
          ("", "", "", "", "scaling", "linear", "", ""))


@dataclass(frozen=True)
class MeasureProperties:
    """What the documentation promises about one measure (see the module docstring for the definitions)."""

    name: str
    call: Callable
    kind: str  # "similarity" or "distance"
    low: float
    high: float
    orthogonal: Claim
    isotropic_scaling: Claim
    invertible_linear: Claim
    translation: Claim
    source: str

    def claim(self, transform: str) -> Claim:
        return getattr(self, transform.replace(" ", "_"))

    def row(self) -> tuple[str, ...]:
        rng = f"[{self.low:g}, {self.high:g}]"
        return (self.name, self.kind, rng, *(self.claim(t) for t in TRANSFORMS), self.source)


def _p(name, call, kind, low, high, orth, iso, inv, trans, source) -> MeasureProperties:
    return MeasureProperties(name, call, kind, low, high, orth, iso, inv, trans, source)


PROPERTIES: dict[str, MeasureProperties] = {p.name: p for p in [
    _p("cka", cka, "similarity", 0, 1, "yes", "yes", "no", "yes", "Kornblith et al. 2019"),
    _p("cka rbf", partial(cka, kernel="rbf"), "similarity", 0, 1, "yes", "yes", "no", "yes",
       "Kornblith et al. 2019"),
    _p("cka rbf median=all", partial(cka, kernel="rbf", median="all"), "similarity", 0, 1, "yes", "yes", "no",
       "yes", "Kornblith 2019 (code)"),
    _p("cka debiased", partial(cka, debiased=True), "similarity", -1, 1, "yes", "yes", "no", "yes",
       "Song 2012; Nguyen 2021"),
    _p("svcca", svcca, "similarity", 0, 1, "yes", "yes", "no", "yes", "Raghu et al. 2017"),
    _p("svcca keep=1.0", partial(svcca, keep=1.0), "similarity", 0, 1, "yes", "yes", "yes", "yes",
       "Raghu et al. 2017"),
    _p("pwcca", pwcca, "similarity", 0, 1, "Y only", "yes", "Y only", "yes", "Morcos et al. 2018"),
    _p("procrustes", procrustes, "distance", 0, 2, "yes", "yes", "no", "yes", "Ding et al. 2021"),
    _p("rsa", rsa, "similarity", -1, 1, "no", "yes", "no", "no", "Kriegeskorte et al. 2008"),
    _p("rsa euclidean", partial(rsa, metric="euclidean"), "similarity", -1, 1, "yes", "yes", "no", "yes",
       "Kriegeskorte et al. 2008"),
    _p("rsa cosine", partial(rsa, metric="cosine"), "similarity", -1, 1, "yes", "yes", "no", "no",
       "Kriegeskorte et al. 2008"),
    _p("mutual_knn", mutual_knn, "similarity", 0, 1, "yes", "yes", "no", "no", "Huh et al. 2024"),
    _p("mutual_knn euclidean", partial(mutual_knn, metric="euclidean"), "similarity", 0, 1, "yes", "yes",
       "no", "yes", "Huh et al. 2024"),
]}


def render_table() -> str:
    """The property table as reStructuredText (a simple table), as printed in the package docstring."""
    body = [p.row() for p in PROPERTIES.values()]
    widths = [max(len(r[i]) for r in [*HEADER, *body]) for i in range(len(COLUMNS))]
    rule = " ".join("=" * w for w in widths)
    fmt = lambda r: " ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([rule, *(fmt(r) for r in HEADER), rule, *(fmt(r) for r in body), rule])


def parse_table(text: str) -> list[tuple[str, ...]]:
    """The body rows of the first reStructuredText simple table in ``text`` (cells cut at the ``=`` rules)."""
    lines = text.splitlines()
    rules = [i for i, ln in enumerate(lines) if ln.strip() and set(ln.strip()) <= {"=", " "}]
    if len(rules) < 3:
        raise ValueError("no simple table (three '=' rules) found")
    rule = lines[rules[0]]
    spans, start = [], None
    for i, ch in enumerate(rule + " "):
        if ch == "=" and start is None:
            start = i
        elif ch != "=" and start is not None:
            spans.append((start, i))
            start = None
    # the last column runs to the end of the line (a source may be longer than its rule)
    spans[-1] = (spans[-1][0], None)
    return [tuple(lines[k][a:b].strip() for a, b in spans) for k in range(rules[1] + 1, rules[2])
            if lines[k].strip()]
