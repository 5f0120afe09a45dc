"""Representational similarity between two representations of the same inputs.

Every measure takes ``X`` ``[N, d1]`` and ``Y`` ``[N, d2]`` (numpy arrays or tensors; row i of both is input i)
and returns a float. Summary (details, definitions and sources in each module):

============== =========== ========== ========== =========== ============== =========== ==========================
measure        kind        range      orthogonal isotropic   invertible     translation source
                                                 scaling     linear
============== =========== ========== ========== =========== ============== =========== ==========================
cka linear     similarity  [0, 1]     yes        yes         no             yes         Kornblith et al. 2019
cka rbf        similarity  [0, 1]     yes        yes         no             yes         Kornblith et al. 2019
cka debiased   similarity  ~[0, 1]    yes        yes         no             yes         Song 2012; Nguyen 2021
svcca          similarity  [0, 1]     yes        yes         yes (99% var)  yes         Raghu et al. 2017
pwcca          similarity  [0, 1]     Y only     yes         Y only         yes         Morcos et al. 2018
procrustes     distance    [0, 2]     yes        yes         no             yes         Ding et al. 2021
rsa            similarity  [-1, 1]    yes        yes         no             yes (corr.) Kriegeskorte et al. 2008
mutual_knn     similarity  [0, 1]     yes        yes         no             no (cosine) Huh et al. 2024
============== =========== ========== ========== =========== ============== =========== ==========================

SVCCA is exactly invariant to invertible linear maps only when the 99% truncation keeps the full rank
(``keep=1.0``); with truncation it is approximately so. PWCCA weights canonical directions by their
overlap with X's own units, so it is invariant to invertible maps of Y but not to rotations of X.

Streaming: :class:`LinearCKAAccumulator` (exact, feature space, memory ``O(d^2)``) and :class:`MinibatchCKA`
(Nguyen et al. 2021). Layer x layer matrices across models: :func:`similarity_matrix`. Significance:
:func:`permutation_test`, :func:`bootstrap_ci`.
"""

from .cca import canonical_correlations, pwcca, svcca
from .cka import cka, hsic, unbiased_hsic
from .geometry import mutual_knn, procrustes, rdm, rsa
from .matrix import SimilarityMatrixResult, similarity_matrix
from .registry import MEASURES, get_measure
from .significance import BootstrapResult, PermutationResult, bootstrap_ci, permutation_test
from .streaming import LinearCKAAccumulator, MinibatchCKA

__all__ = [
    "BootstrapResult", "LinearCKAAccumulator", "MEASURES", "MinibatchCKA", "PermutationResult",
    "SimilarityMatrixResult", "bootstrap_ci", "canonical_correlations", "cka", "get_measure", "hsic",
    "mutual_knn", "permutation_test", "procrustes", "pwcca", "rdm", "rsa", "similarity_matrix", "svcca",
    "unbiased_hsic",
]
