"""interp_core: the domain-agnostic core of interp-suite.

Sites and axes (:mod:`interp_core.sites`), the hooked model (:mod:`interp_core.hooked`), interventions
(:mod:`interp_core.interventions`), the activation cache (:mod:`interp_core.cache`) and the on-disk store
(:mod:`interp_core.store`). Methods (probes, patching, attribution, steering, similarity, ...) live in their
own modules and work on any model through sites, so the same call runs on a CNN, a ViT and a policy network.
This package never imports the ``vision`` or ``rl`` adapters.
"""

import importlib
from typing import Any

# Loaded on first use (PEP 562), so that ``import interp_core`` and ``interp --help`` do not pay for torch.
_LAZY = {"ActivationCache": ".cache", "ActivationStore": ".store", "Adapter": ".sites", "GenericAdapter": ".sites",
         "HookedModel": ".hooked", "Site": ".sites", "SiteTable": ".sites"}
__version__ = "0.1.0"
__all__ = ["ActivationCache", "ActivationStore", "Adapter", "GenericAdapter", "HookedModel", "Site", "SiteTable",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'interp_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
