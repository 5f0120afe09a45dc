"""Features: sparse autoencoders on any site, their evaluation, and toy models of superposition.

- :class:`SparseAutoencoder` (:mod:`.sae`): ReLU/L1, TopK, BatchTopK and JumpReLU behind one
  scikit-learn-like interface (``encode``, ``decode``, ``forward``, ``fit``);
- :func:`fit_saes`, :func:`train_saes` (:mod:`.train`): several SAEs in one pass over an
  ``ActivationStore``, an ``ActivationCache`` or rows, with atomic, resumable checkpoints;
- :func:`evaluate_sae`, :func:`splice_eval` (:mod:`.evaluate`): MSE, FVU, L0, dead / dense latents and the
  downstream effect of splicing the reconstruction into the model's own forward;
- :func:`with_latents` (:mod:`.latents`): an SAE's latents as a virtual site, so patching, steering and
  ablations work per latent;
- :mod:`.toy`: toy models of superposition (Elhage et al. 2022).
"""

from . import toy
from .evaluate import SAEEvaluation, SpliceResult, evaluate_sae, splice_eval
from .latents import with_latents
from .sae import VARIANTS, SparseAutoencoder, geometric_median
from .train import fit_saes, train_saes

__all__ = ["SparseAutoencoder", "VARIANTS", "geometric_median", "fit_saes", "train_saes", "evaluate_sae",
           "splice_eval", "SAEEvaluation", "SpliceResult", "with_latents", "toy"]
