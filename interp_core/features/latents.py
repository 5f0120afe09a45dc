"""Latents become sites: an SAE's latents as a virtual site of the model, so every site method works per latent.

``hm2 = with_latents(model, {"blocks.3.resid_post": sae})`` returns a :class:`~interp_core.HookedModel` on the
same module (nothing copied or changed) whose site table has, besides every site of the original, a virtual
site ``"blocks.3.resid_post.latents"`` holding the SAE's latents ``f = encode(x)`` in the base site's layout
with the feature axis (head and feature axes of the base site, flattened) replaced by the ``n`` latents:

- CNN block ``[batch, feature, h, w]`` -> ``[batch, latent, h, w]``; ViT tokens ``[batch, pos, feature]`` ->
  ``[batch, pos, latent]``; per-head ``[batch, pos, head, feature]`` -> ``[batch, pos, latent]``; a policy layer
  or ``memory.h`` ``[batch, feature]`` -> ``[batch, latent]``.

Reading the site (``run_with_cache``) records the latents and leaves the forward untouched. An intervention
that changes the latents to ``f'`` replaces the base activation by ``decode(f') + (x - decode(f))``: the SAE's
error term is kept (``error_term=True``, the default), so unchanged latents give back exactly the model's own
activation and only the edit propagates; ``error_term=False`` splices the pure reconstruction ``decode(f')``.
So ``patch_sweep(hm2, ..., sites=["...latents"])`` patches single latents, ``Steer(alpha * e_i)`` steers along
latent ``i`` (adds ``alpha`` to it), ``Ablate("zero", features=[i])`` removes latent ``i``, and
``run_with_cache(grad=True)`` gives gradients with respect to the latents.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import InputError, InputTypeError
from ..sites import Site, infer_axes
from .evaluate import _check_sae

__all__ = ["with_latents", "LatentAdapter"]


class _Handle:
    def __init__(self, h: Any):
        self.h = h

    def remove(self) -> None:
        self.h.remove()


def _latent_axes(axes: tuple[str, ...]) -> tuple[str, ...]:
    """The base axes with head axes dropped (folded into the latent axis, which takes the feature's place)."""
    out = [a for a in axes if a != "head"]
    if "feature" not in out:  # e.g. (batch, head, feature) always has one; a site with heads only
        out.append("feature")
    return tuple(out)


def _to_latent_layout(f_rows: torch.Tensor, lead: tuple[int, ...], axes: tuple[str, ...]) -> torch.Tensor:
    """Rows ``[B * P, n]`` (batch, then pos axes, row-major) -> the latent layout ``_latent_axes(axes)``."""
    lat = _latent_axes(axes)
    src = ["batch"] + ["pos"] * (len(lead) - 1) + ["feature"]
    t = f_rows.reshape(*lead, f_rows.shape[-1])
    return t.permute(*_perm(src, list(lat)))


def _from_latent_layout(f: torch.Tensor, axes: tuple[str, ...]) -> torch.Tensor:
    lat = list(_latent_axes(axes))
    src = ["batch"] + ["pos"] * lat.count("pos") + ["feature"]
    t = f.permute(*_perm(lat, src))
    return t.reshape(-1, t.shape[-1])


def _perm(src: list[str], dst: list[str]) -> list[int]:
    """Indices into ``src`` giving ``dst`` (repeated roles matched in order)."""
    used: list[int] = []
    for role in dst:
        i = next(j for j, r in enumerate(src) if r == role and j not in used)
        used.append(i)
    return used


def _rows_and_back(act: torch.Tensor, axes: tuple[str, ...]):
    order = ([i for i, a in enumerate(axes) if a == "batch"] + [i for i, a in enumerate(axes) if a == "pos"]
             + [i for i, a in enumerate(axes) if a in ("head", "feature")])
    moved = act.permute(*order)
    n_lead = 1 + sum(a == "pos" for a in axes)
    lead = tuple(moved.shape[:n_lead])
    rows = moved.reshape(-1, math.prod(moved.shape[n_lead:]))
    inverse = [order.index(i) for i in range(len(axes))]
    shape = moved.shape

    def back(r: torch.Tensor) -> torch.Tensor:
        return r.reshape(shape).permute(*inverse)

    return rows, lead, back


class LatentAdapter:
    """Wraps an adapter and adds one virtual ``<site><suffix>`` per SAE (module docstring)."""

    def __init__(self, base: Any, saes: Mapping[str, Any], suffix: str = ".latents", error_term: bool = True):
        self.base = base
        self.saes = dict(saes)
        self.suffix = suffix
        self.error_term = error_term
        self.name = f"{getattr(base, 'name', 'generic')}+latents"
        self.priority = getattr(base, "priority", 0)
        self.trace_lazily = getattr(base, "trace_lazily", False)

    def sites(self, model: nn.Module) -> list[Site]:
        base_sites = list(self.base.sites(model))
        by_name = {s.name: s for s in base_sites}
        extra = []
        for name, sae in self.saes.items():
            s = by_name.get(name)
            if s is None:
                raise InputError(f"saes: no site '{name}' in the model's own site table (sites with a '#' call index "
                                 f"or virtual sites cannot carry latents)")
            if s.kind == "virtual":
                raise InputError(f"saes: site '{name}' is virtual; latents attach to a module's output or input site")
            extra.append(Site(name=name + self.suffix, module_path=s.module_path, kind="virtual",
                              axes=_latent_axes(s.axes) if s.axes is not None else None,
                              attach=self._attacher(s, sae), pos_names=dict(s.pos_names),
                              description=f"{sae.n_latents_} {sae.variant} SAE latents of {name}"))
        return base_sites + extra

    def default_sites(self, model: nn.Module) -> list[str]:
        return list(self.base.default_sites(model))

    def example_input(self, model: nn.Module) -> Any:
        return self.base.example_input(model)

    def _attacher(self, site: Site, sae: Any):
        m = sae.module_
        error_term = self.error_term

        def attach(root: nn.Module, fn: Any) -> _Handle:
            module = root.get_submodule(site.module_path)

            def transform(value: Any) -> Any:
                x = site.read(value) if site.read is not None else value
                if not isinstance(x, torch.Tensor):
                    raise InputTypeError(f"site '{site.name}' gives a {type(x).__name__}, not a tensor")
                axes = tuple(site.axes) if site.axes is not None else infer_axes(x.shape, module)
                if axes is None:
                    raise InputError(f"site '{site.name}': unknown axes for shape {tuple(x.shape)}; give the adapter "
                                     f"axes for it")
                rows, lead, back = _rows_and_back(x, axes)
                if rows.shape[1] != m.d:
                    raise InputError(f"saes['{site.name}']: the site has rows of {rows.shape[1]} features but the SAE "
                                     f"was fitted on {m.d}")
                xr = rows.to(device=m.W_dec.device, dtype=m.W_dec.dtype)
                f = m.latents(m.normalize(xr))
                new = fn(_to_latent_layout(f, lead, axes))
                if new is None:
                    return None
                new_rows = _from_latent_layout(new, axes).to(device=m.W_dec.device, dtype=m.W_dec.dtype)
                xh = m.denormalize(m.reconstruct(new_rows))
                if error_term:
                    xh = xh + (xr - m.denormalize(m.reconstruct(f)))
                out = back(xh.to(device=x.device, dtype=x.dtype))
                return site.write(value, out) if site.write is not None else out

            if site.kind == "input":
                def pre_hook(mod: nn.Module, args: tuple) -> Any:
                    new = transform(args[0])
                    return None if new is None else (new, *args[1:])
                return _Handle(module.register_forward_pre_hook(pre_hook))

            def hook(mod: nn.Module, args: tuple, output: Any) -> Any:
                return transform(output)
            return _Handle(module.register_forward_hook(hook))

        return attach


def with_latents(model: Any, saes: Mapping[str, Any], *, suffix: str = ".latents", error_term: bool = True,
                 example_input: Any = None) -> Any:
    """A ``HookedModel`` on the same module with each SAE's latents as the virtual site ``<site><suffix>``.

    A subclass of ``HookedModel`` (an RL ``Agent``) comes back as the same class with its own attributes (env,
    action names; a recurrent agent stays recurrent), the site table extended.

    Args:
        model: a ``HookedModel`` or ``nn.Module`` (its adapter's sites are kept).
        saes: ``{site: fitted SparseAutoencoder}``, each trained on that site's unpooled feature rows.
        error_term: keep the SAE's error when latents are edited (module docstring).
        example_input: an input to trace the sites on (default: the adapter's, or the first real input).
    """
    from ..boundary import as_hooked
    from ..hooked import HookedModel

    hm = as_hooked(model)
    if not isinstance(saes, Mapping) or not saes:
        raise InputTypeError("saes: expected a non-empty mapping {site: fitted SparseAutoencoder}")
    for name, sae in saes.items():
        _check_sae(sae)
        if not isinstance(name, str):
            raise InputTypeError(f"saes: site names are strings, got {name!r}")
    base = HookedModel(hm.model, adapter=LatentAdapter(hm.adapter, saes, suffix, error_term),
                       example_input=example_input)
    if type(hm) is HookedModel:
        return base
    # a subclass (an RL Agent: recurrent flag, env, action names): the same class with the new site table, so
    # methods that depend on it (recurrent agents' exemplars need their recorded states) still see it
    out = object.__new__(type(hm))
    out.__dict__.update(base.__dict__)
    out.__dict__.update({k: v for k, v in vars(hm).items() if not k.startswith("_") and k not in vars(base)})
    return out
