"""Causal abstraction: interchange interventions, interchange-intervention accuracy (IIA) and distributed
alignment search (DAS), for any model the boundary accepts (CNNs, ViTs, policies, recurrent agents).

- :class:`Interchange` — the intervention ``a' = a + Q Q^T (s - a)`` (a subspace of a site taken from a
  source run); :func:`interchange` — the model's outputs on base inputs with it applied;
- :func:`iia` — interchange-intervention accuracy against a high-level causal model
  (Geiger et al. 2021), with per-class accuracy and an exact binomial interval (:class:`IIAResult`);
- :class:`DAS` — distributed alignment search (Geiger et al. 2024): a learned orthogonal ``[d, k]``
  subspace per variable, ``fit / score / compare`` (probe direction, random subspaces of equal dimension);
- geometry: :func:`principal_angles`, :func:`subspace_cosine`, :func:`random_subspace`.
"""

from .das import DAS, DASComparison, principal_angles, random_subspace, subspace_cosine
from .interchange import IIAResult, Interchange, binomial_ci, iia, interchange, orthonormal_basis

__all__ = ["Interchange", "interchange", "iia", "IIAResult", "DAS", "DASComparison", "principal_angles",
           "subspace_cosine", "random_subspace", "binomial_ci", "orthonormal_basis"]
