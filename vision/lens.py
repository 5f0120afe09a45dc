"""The ViT logit lens: decode the residual stream of every layer through the model's own final norm and head.

For a residual ``r_l`` ``[batch, pos, D]`` (``embed``, ``blocks.{l}.resid_post``, or any token site), the lens
logits are ``head(fc_norm(pool(norm(r_l))))`` — exactly the ops timm's ``forward_features`` (the final
``norm``) and ``forward_head`` (pooling, ``fc_norm``, head; DeiT distilled: the mean of ``head`` on the CLS
token and ``head_dist`` on the distillation token) apply to the last block's output. So the lens at the last
block equals the model's logits exactly (tested), and earlier layers show how early the class is linearly
decodable in the output basis (nostalgebraist 2020, "interpreting GPT: the logit lens"; for ViTs e.g.
Vilas et al. 2023).

Per layer the result reports, over a dataset:

- ``accuracy`` — fraction of examples whose lens argmax equals the label (when labels are given);
- ``agreement`` — fraction whose lens argmax equals the model's final prediction;
- ``kl_to_final`` — mean ``KL(p_final || p_lens) = sum_c p_final(c) (log p_final(c) - log p_lens(c))``, in nats.

``pool``: ``"auto"`` (the model's own pooling, ``global_pool``: CLS token or mean over patch tokens),
``"cls"`` (decode the CLS token with ``norm``, ``fc_norm`` and ``head``), ``"mean"`` (mean over patch tokens).

The model enters through :func:`interp_core.boundary.as_hooked` (a plain timm ViT gets the ViT adapter), the
data through :func:`interp_core.boundary.iter_batches` (a tensor or numpy array ``[N, C, H, W]``, an
``(images, labels)`` pair, a ``Dataset`` or a ``DataLoader`` of ``(x, y)``), and the forwards run in eval mode
(``hm.analysis()``). ``vision.logit_lens(model, data)`` is this module's :func:`logit_lens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from interp_core.boundary import as_hooked, iter_batches
from interp_core.errors import InputError, SiteError
from interp_core.progress import progress_bar
from interp_core.results import Result

__all__ = ["LogitLensResult", "logit_lens", "decode"]


@dataclass
class LogitLensResult(Result):
    """Per-layer lens statistics (layers in model order, the last one is the final residual).

    Attributes:
        sites: the decoded sites.
        accuracy: ``[L]`` lens accuracy against the labels (``None`` without labels).
        agreement: ``[L]`` fraction of examples whose lens prediction equals the model's.
        kl_to_final: ``[L]`` mean KL(final || lens) in nats.
        final_accuracy: the model's own accuracy (``None`` without labels).
        n: number of examples; ``config``: the settings.
        logits: ``[L, n, classes]`` lens logits when ``keep_logits=True``.
    """

    sites: list[str]
    accuracy: np.ndarray | None
    agreement: np.ndarray
    kl_to_final: np.ndarray
    final_accuracy: float | None
    n: int
    config: dict[str, Any] = field(default_factory=dict)
    logits: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.pop("logits", None)
        return d

    def plot(self, ax: Any = None) -> Any:
        """Accuracy / agreement (left axis) and KL to the final logits (right axis) per layer."""
        import matplotlib.pyplot as plt

        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 3.4))
        else:
            fig = ax.figure
        x = np.arange(len(self.sites))
        if self.accuracy is not None:
            ax.plot(x, self.accuracy, "o-", label="accuracy")
        ax.plot(x, self.agreement, "s--", label="agreement with final")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("fraction")
        ax.set_xticks(x)
        ax.set_xticklabels([s.replace(".resid_post", "") for s in self.sites], rotation=60, ha="right",
                           fontsize=7)
        ax2 = ax.twinx()
        ax2.plot(x, self.kl_to_final, "^:", color="C3", label="KL(final || lens)")
        ax2.set_ylabel("KL (nats)")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="center right")
        ax.set_title("logit lens")
        fig.tight_layout()
        return fig


def decode(model: nn.Module, resid: torch.Tensor, pool: str = "auto") -> torch.Tensor:
    """Lens logits ``[batch, classes]`` of a residual ``[batch, pos, D]`` (see the module docstring)."""
    if resid.dim() != 3:
        raise InputError(f"resid: the logit lens decodes token residuals [batch, pos, D], got shape "
                         f"{tuple(resid.shape)}")
    norm = getattr(model, "norm", None)
    x = norm(resid) if isinstance(norm, nn.Module) else resid
    if pool == "auto":
        if not hasattr(model, "forward_head"):
            raise InputError(f"pool: {type(model).__name__} has no forward_head; pass pool='cls' or 'mean'")
        return model.forward_head(x)
    n_prefix = int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))
    if pool == "cls":
        if getattr(model, "cls_token", None) is None:
            raise InputError("pool: 'cls' needs a CLS token; this model has none (use pool='mean' or 'auto')")
        pooled = x[:, 0]
    elif pool == "mean":
        pooled = x[:, n_prefix:].mean(dim=1)
    else:
        raise InputError(f"pool: must be 'auto', 'cls' or 'mean', got {pool!r}")
    for name in ("fc_norm", "head_drop"):
        m = getattr(model, name, None)
        if isinstance(m, nn.Module):
            pooled = m(pooled)
    return model.head(pooled)


def logit_lens(model: Any, data: Any, sites: Sequence[str] | None = None, pool: str = "auto",
               batch_size: int | None = None, keep_logits: bool = False, *, labels: Any = None,
               progress: bool | None = None) -> LogitLensResult:
    """Decode every layer's residual through the final norm and head; per-layer accuracy, agreement, KL.

    Args:
        model: a ViT (``HookedModel``, or a timm ``VisionTransformer`` / EVA, wrapped with the ViT adapter).
        data: images ``[N, C, H, W]`` (tensor or numpy), an ``(images, labels)`` pair, a ``Dataset`` or a
            ``DataLoader`` (items ``x`` or ``(x, y)``).
        sites: token sites ``[batch, pos, D]`` to decode (default ``embed`` and every ``blocks.{i}.resid_post``).
        pool: ``"auto"`` | ``"cls"`` | ``"mean"`` (see the module docstring).
        batch_size: images per forward (default: from the activation sizes).
        keep_logits: also return the lens logits ``[L, N, classes]``.
        labels: ``[N]`` labels when ``data`` carries none (accuracy is ``None`` without labels).
        progress: a progress bar over batches (``None``: only on a terminal).
    """
    hm = as_hooked(model)
    if pool not in ("auto", "cls", "mean"):
        raise InputError(f"pool: must be 'auto', 'cls' or 'mean', got {pool!r}")
    if sites is None:
        resid = [n for n in hm.sites.names if n.startswith("blocks.") and n.endswith(".resid_post")]
        if not resid:
            raise SiteError(f"model: the logit lens needs a transformer's residual sites 'blocks.{{i}}.resid_post'; "
                            f"this {type(hm.model).__name__} (adapter {hm.adapter.name!r}) has none. Pass a timm "
                            f"ViT / EVA, or name token sites with sites=[...]")
        sites = (["embed"] if "embed" in hm.sites else []) + resid
    sites = list(sites)
    if not sites:
        raise InputError("sites: empty; name at least one token site such as 'blocks.0.resid_post'")
    for s in sites:
        site = hm.sites[s]
        if site.axes is not None and site.axes != ("batch", "pos", "feature"):
            raise InputError(f"sites: site '{s}' has axes {site.axes}; the logit lens decodes token residuals "
                             f"(batch, pos, feature) such as 'blocks.3.resid_post'")
    net = hm.model
    if not isinstance(getattr(net, "head", None), nn.Module):
        raise InputError(f"model: {type(net).__name__} has no classifier 'head' to decode through; the logit "
                         f"lens needs a timm ViT-style model (norm, forward_head, head)")
    lens_parts: list[list[torch.Tensor]] = [[] for _ in sites]
    finals, ys = [], []
    batches = iter_batches(data, labels, model=hm, batch_size=batch_size, sites=sites)
    with hm.analysis(), torch.no_grad():
        for batch in progress_bar(batches, desc="logit lens", unit="batch", progress=progress):
            out, cache = hm.run_with_cache(batch.inputs, sites=sites)
            finals.append(out.float().cpu())
            ys.append(batch.labels)
            for k, s in enumerate(sites):
                lens_parts[k].append(decode(net, cache[s], pool).float().cpu())
    final = torch.cat(finals)
    lens = torch.stack([torch.cat(p) for p in lens_parts])  # [L, N, C]
    logp_final = final.log_softmax(-1)
    logp_lens = lens.log_softmax(-1)
    kl = (logp_final.exp() * (logp_final - logp_lens)).sum(-1).mean(-1)
    pred_final = final.argmax(-1)
    pred_lens = lens.argmax(-1)
    agreement = (pred_lens == pred_final).double().mean(-1)
    y_all = torch.cat(ys).long() if all(y is not None for y in ys) else None
    acc = (pred_lens == y_all).double().mean(-1).numpy() if y_all is not None else None
    final_acc = float((pred_final == y_all).double().mean()) if y_all is not None else None
    return LogitLensResult(sites=sites, accuracy=acc, agreement=agreement.numpy(), kl_to_final=kl.numpy(),
                           final_accuracy=final_acc, n=len(final),
                           config={"pool": pool, "batch_size": batch_size, "model": type(net).__name__},
                           logits=lens if keep_logits else None)
