"""Representational similarity between two representations of the same inputs.

Every measure takes ``X`` ``[N, d1]`` and ``Y`` ``[N, d2]`` (numpy arrays or tensors; row i of both is input i)
and returns a float. Summary (details, definitions and sources in each module):

==================== ========== ======= ========== ========= ========== =========== ========================
measure              kind       range   orthogonal isotropic invertible translation source
                                                   scaling   linear
==================== ========== ======= ========== ========= ========== =========== ========================
cka                  similarity [0, 1]  yes        yes       no         yes         Kornblith et al. 2019
cka rbf              similarity [0, 1]  yes        yes       no         yes         Kornblith et al. 2019
cka rbf median=all   similarity [0, 1]  yes        yes       no         yes         Kornblith 2019 (code)
cka debiased         similarity [-1, 1] yes        yes       no         yes         Song 2012; Nguyen 2021
svcca                similarity [0, 1]  yes        yes       no         yes         Raghu et al. 2017
svcca keep=1.0       similarity [0, 1]  yes        yes       yes        yes         Raghu et al. 2017
pwcca                similarity [0, 1]  Y only     yes       Y only     yes         Morcos et al. 2018
procrustes           distance   [0, 2]  yes        yes       no         yes         Ding et al. 2021
rsa                  similarity [-1, 1] no         yes       no         no          Kriegeskorte et al. 2008
rsa euclidean        similarity [-1, 1] yes        yes       no         yes         Kriegeskorte et al. 2008
rsa cosine           similarity [-1, 1] yes        yes       no         no          Kriegeskorte et al. 2008
mutual_knn           similarity [0, 1]  yes        yes       no         no          Huh et al. 2024
mutual_knn euclidean similarity [0, 1]  yes        yes       no         yes         Huh et al. 2024
==================== ========== ======= ========== ========= ========== =========== ========================

Rows name the call: ``cka rbf`` is ``cka(X, Y, kernel="rbf")`` (bandwidth from the median distance over distinct
pairs, the default), ``cka rbf median=all`` the reference code's convention (median squared distance over all
pairs including the diagonal, see :mod:`.cka`), ``rsa`` the default correlation-distance RDM with Spearman
comparison, ``rsa euclidean`` / ``rsa cosine`` / ``mutual_knn euclidean`` set ``metric=``. ``Y only``: invariant
to the map applied to ``Y``, not to ``X``. The transformations are defined in :mod:`.properties`, whose
:data:`~.properties.PROPERTIES` is this table in machine-readable form; a test checks every cell against the code
(invariant AND not-invariant claims, ranges, the value of a representation with itself).

Corrections to earlier versions of this table: the default ``rsa`` (correlation distance: each row is centered
over its own features) is NOT invariant to orthogonal maps or translation; ``svcca`` with its default 99%
truncation is NOT invariant to invertible linear maps (the truncation depends on the variance spectrum, which
such a map changes); only ``keep=1.0`` is. PWCCA weights canonical directions by their overlap with X's own
units, so it is invariant to invertible maps of Y but not to rotations of X. Debiased CKA can be negative.

Streaming: :class:`LinearCKAAccumulator` (exact, feature space, memory ``O(d^2)``) and :class:`MinibatchCKA`
(Nguyen et al. 2021). Layer x layer matrices across models: :func:`similarity_matrix`. Significance:
:func:`permutation_test`, :func:`bootstrap_ci`.
"""

from .cca import canonical_correlations, pwcca, svcca
from .cka import cka, hsic, unbiased_hsic
from .geometry import mutual_knn, procrustes, rdm, rsa
from .matrix import SimilarityMatrixResult, similarity_matrix
from .properties import PROPERTIES
from .registry import MEASURES, get_measure
from .significance import BootstrapResult, PermutationResult, bootstrap_ci, permutation_test
from .streaming import LinearCKAAccumulator, MinibatchCKA

__all__ = [
    "BootstrapResult", "LinearCKAAccumulator", "MEASURES", "MinibatchCKA", "PROPERTIES", "PermutationResult",
    "SimilarityMatrixResult", "bootstrap_ci", "canonical_correlations", "cka", "get_measure", "hsic",
    "mutual_knn", "permutation_test", "procrustes", "pwcca", "rdm", "rsa", "similarity_matrix", "svcca",
    "unbiased_hsic",
]
