"""Feature universality: matching SAE latents across seeds and architectures, against a random-init twin.

Two ways to pair latent ``i`` of SAE A with latent ``j`` of SAE B:

- ``by="decoder"`` (same site family, same ``d``: two seeds of one architecture): the cosine similarity of
  their decoder directions ``cos(W_dec^A_i, W_dec^B_j)`` in input units
  (:attr:`~interp_core.features.SparseAutoencoder.decoder_directions_`);
- ``by="activation"`` (any two sites, e.g. a CNN and a ViT): the Pearson correlation of their activations over
  the same inputs, ``F_A [N, n_A]`` and ``F_B [N, n_B]`` (:func:`~interp_core.features.labels.latent_activations`),
  computed and matched by :func:`interp_core.universality.match_units`.

Matching: ``"hungarian"`` is the one-to-one assignment maximising the summed similarity (Kuhn 1955, via
``scipy.optimize.linear_sum_assignment``, as ``match_units``); ``"max"`` gives every latent of A its most
similar latent of B. The baseline matches A against an SAE trained on the random-init twin's site (decoder) or
against that SAE's latents (activation), so "latents are shared" means "more similar than chance structure".

Give every SAE its own ``seed`` when comparing decoders: where a site's rows span fewer dimensions than the
site has (a policy layer driven by a 4-dimensional observation), the decoder directions keep much of their
random initialisation outside that span, and two SAEs started from the same seed look alike for that reason
alone (seen on CartPole: cosine 0.97 between SAEs of a trained agent and its twin with one seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import InputError
from ..results import Result
from ..universality import UnitMatch, match_units
from .evaluate import _check_sae

__all__ = ["LatentMatch", "match_latents", "decoder_cosines"]


def decoder_cosines(sae_a: Any, sae_b: Any) -> np.ndarray:
    """``[n_A, n_B]``: cosine similarity of every pair of decoder directions (input units)."""
    a, b = _check_sae(sae_a), _check_sae(sae_b)
    if a.n_features_in_ != b.n_features_in_:
        raise InputError(f"sae_b: decoder directions live in R^{b.n_features_in_} but sae_a's in "
                         f"R^{a.n_features_in_}; compare SAEs of different sites with by='activation'")
    return (a.decoder_directions_.double() @ b.decoder_directions_.double().T).cpu().numpy()


def _match_matrix(S: np.ndarray, method: str) -> UnitMatch:
    if method == "hungarian":
        ia, ib = linear_sum_assignment(S, maximize=True)
    else:
        ia, ib = np.arange(S.shape[0]), S.argmax(1)
    return UnitMatch(ia, ib, S[ia, ib], method)


def _as_latents(F: Any, argument: str) -> np.ndarray:
    if isinstance(F, torch.Tensor):
        F = F.detach().cpu().double().numpy()
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 2 or F.shape[0] < 2:
        raise InputError(f"{argument}: expected latent activations [N, n] over shared inputs, got shape {F.shape}")
    if not np.isfinite(F).all():
        raise InputError(f"{argument}: latent activations hold NaN or infinite values")
    return F


@dataclass
class LatentMatch(Result):
    """Matched latents of A and B (``match``: a :class:`~interp_core.universality.UnitMatch`) and, with a
    baseline, of A and the random-init twin's SAE (``baseline``)."""

    match: UnitMatch
    baseline: UnitMatch | None
    by: str
    config: dict = field(default_factory=dict)

    def summary(self, threshold: float = 0.7) -> dict[str, float]:
        """Mean and median matched similarity and the share above ``threshold`` (and the baseline's)."""
        out = {"mean": float(np.mean(self.match.correlations)), "median": float(np.median(self.match.correlations)),
               "share_above": float(np.mean(self.match.correlations > threshold)), "threshold": threshold}
        if self.baseline is not None:
            b = self.baseline.correlations
            out.update(baseline_mean=float(np.mean(b)), baseline_median=float(np.median(b)),
                       baseline_share_above=float(np.mean(b > threshold)))
        return out

    def plot(self, ax: Any = None) -> Any:
        """Histogram of matched similarities (trained: blue; baseline: grey)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4, 3))
        ax.hist(self.match.correlations, bins=30, range=(-1, 1), color="C0", alpha=0.8, label="A vs B")
        if self.baseline is not None:
            ax.hist(self.baseline.correlations, bins=30, range=(-1, 1), color="0.6", alpha=0.8,
                    label="A vs random-init twin")
        ax.set_xlabel(("decoder cosine" if self.by == "decoder" else "activation correlation")
                      + f" ({self.match.method})")
        ax.set_ylabel("latents")
        ax.legend(fontsize=7)
        return ax.figure


def match_latents(sae_a: Any = None, sae_b: Any = None, *, by: Literal["decoder", "activation"] = "decoder",
                  latents_a: Any = None, latents_b: Any = None, baseline: Any = None,
                  method: Literal["hungarian", "max"] = "hungarian") -> LatentMatch:
    """Match the latents of two SAEs (module docstring).

    Args:
        sae_a, sae_b: fitted SAEs (``by="decoder"``: on sites with the same ``d``).
        by: ``"decoder"`` (cosine of decoder directions) or ``"activation"`` (correlation of ``latents_a`` and
            ``latents_b`` ``[N, n]`` over the same ``N`` inputs; the SAEs are then not needed).
        baseline: for ``"decoder"``, the SAE trained on the random-init twin's site; for ``"activation"``, that
            SAE's latents ``[N, n]`` on the same inputs. Matched against A in place of B.
        method: ``"hungarian"`` or ``"max"``.
    """
    if method not in ("hungarian", "max"):
        raise InputError(f"method: must be 'hungarian' or 'max', got {method!r}")
    if by == "decoder":
        if latents_a is not None or latents_b is not None:
            raise InputError("latents_a, latents_b: only for by='activation'; by='decoder' uses the SAEs' decoders")
        m = _match_matrix(decoder_cosines(sae_a, sae_b), method)
        base = _match_matrix(decoder_cosines(sae_a, baseline), method) if baseline is not None else None
        n = (_check_sae(sae_a).n_latents_, sae_b.n_latents_)
    elif by == "activation":
        if latents_a is None or latents_b is None:
            raise InputError("latents_a, latents_b: by='activation' needs both [N, n] latent activations on the "
                             "same inputs (features.latent_activations(model, {site: sae}, data))")
        Fa, Fb = _as_latents(latents_a, "latents_a"), _as_latents(latents_b, "latents_b")
        if Fa.shape[0] != Fb.shape[0]:
            raise InputError(f"latents_b: {Fb.shape[0]} rows but latents_a has {Fa.shape[0]}; both must be over the "
                             f"same inputs")
        m = match_units(Fa, Fb, method)
        base = None
        if baseline is not None:
            Fz = _as_latents(baseline, "baseline")
            if Fz.shape[0] != Fa.shape[0]:
                raise InputError(f"baseline: {Fz.shape[0]} rows but latents_a has {Fa.shape[0]}")
            base = match_units(Fa, Fz, method)
        n = (Fa.shape[1], Fb.shape[1])
    else:
        raise InputError(f"by: must be 'decoder' or 'activation', got {by!r}")
    return LatentMatch(match=m, baseline=base, by=by, config={"method": method, "n_latents": list(n)})
