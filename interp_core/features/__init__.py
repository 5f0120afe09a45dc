"""Features: sparse autoencoders on any site, their evaluation, and toy models of superposition.

- :class:`SparseAutoencoder` (:mod:`.sae`): ReLU/L1, TopK, BatchTopK and JumpReLU behind one
  scikit-learn-like interface (``encode``, ``decode``, ``forward``, ``fit``);
- :func:`fit_saes`, :func:`train_saes` (:mod:`.train`): several SAEs in one pass over an
  ``ActivationStore``, an ``ActivationCache`` or rows, with atomic, resumable checkpoints;
- :func:`evaluate_sae`, :func:`splice_eval` (:mod:`.evaluate`): MSE, FVU, L0, dead / dense latents and the
  downstream effect of splicing the reconstruction into the model's own forward;
- :func:`with_latents` (:mod:`.latents`): an SAE's latents as a virtual site, so patching, steering and
  ablations work per latent;
- :func:`label_latents`, :func:`latent_activations` (:mod:`.labels`): each latent's best ground-truth label
  (AUROC / correlation) against a permutation baseline;
- :func:`superposition`, :func:`unit_polysemanticity`, :func:`variance_outside` (:mod:`.superposition`): how
  many latents each unit mixes and the variance outside the top principal directions, against a random twin;
- :func:`match_latents` (:mod:`.matching`): latents matched across seeds (decoder cosine) and architectures
  (activation correlation), Hungarian or max, against a random-init twin;
- :mod:`.toy`: toy models of superposition (Elhage et al. 2022).
"""

from . import toy
from .evaluate import SAEEvaluation, SpliceResult, evaluate_sae, splice_eval
from .labels import LatentLabels, label_latents, latent_activations
from .latents import with_latents
from .matching import LatentMatch, decoder_cosines, match_latents
from .sae import VARIANTS, SparseAutoencoder, geometric_median
from .superposition import SuperpositionResult, superposition, unit_polysemanticity, variance_outside
from .train import fit_saes, train_saes

__all__ = ["SparseAutoencoder", "VARIANTS", "geometric_median", "fit_saes", "train_saes", "evaluate_sae",
           "splice_eval", "SAEEvaluation", "SpliceResult", "with_latents", "toy",
           "LatentLabels", "label_latents", "latent_activations", "LatentMatch", "decoder_cosines",
           "match_latents", "SuperpositionResult", "superposition", "unit_polysemanticity", "variance_outside"]
