"""interp_core: the domain-agnostic core of interp-suite.

Sites and axes (:mod:`interp_core.sites`), the hooked model (:mod:`interp_core.hooked`), interventions
(:mod:`interp_core.interventions`), the activation cache (:mod:`interp_core.cache`) and the on-disk store
(:mod:`interp_core.store`). Methods (probes, patching, attribution, steering, similarity, ...) live in their
own modules and work on any model through sites, so the same call runs on a CNN, a ViT and a policy network.
This package never imports the ``vision`` or ``rl`` adapters.
"""

from .cache import ActivationCache
from .hooked import HookedModel
from .sites import Adapter, GenericAdapter, Site, SiteTable
from .store import ActivationStore

__all__ = ["ActivationCache", "ActivationStore", "Adapter", "GenericAdapter", "HookedModel", "Site", "SiteTable"]
