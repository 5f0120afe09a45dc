"""Training sparse autoencoders: several SAEs (sites, sizes, variants) in one pass over the data.

:func:`fit_saes` trains a mapping ``{site: SAE or [SAEs]}`` on a source of feature rows: an
:class:`~interp_core.store.ActivationStore` (streamed through its bounded shuffle buffer), an
:class:`~interp_core.cache.ActivationCache`, or a plain ``[N, d]`` tensor. Rows come from the source's
``iter_batches(sites, batch_size, shuffle=True, seed=seed + epoch, pool=pool)``, i.e. the core's
``features(site, pool)`` rules (CNN cells, ViT tokens and policy layers folded into rows, or pooled). Sites
that give the same number of rows are read together, so each batch of the data is read once for every SAE
on them; sites with other row counts (an unpooled CNN cell site beside a policy layer) get a pass of their own.

Checkpoints (``checkpoint=path``) hold every SAE's weights, Adam state, dead-latent counters, random state
and the position in the data; they are written atomically (temporary file + rename) every
``checkpoint_every`` steps and at the end. Calling again with the same arguments resumes where the file
stopped (the data stream is replayed to that position), so a killed and resumed run ends with the same
weights as an uninterrupted one with the same seed.

:func:`train_saes` is the convenience path from a model: it collects the sites through the boundary
(:func:`~interp_core.boundary.as_hooked`, :func:`~interp_core.boundary.iter_batches`, ``hm.analysis()``,
``run_with_cache(pool=...)``) into memory, or with ``store=path`` into an on-disk ``ActivationStore`` that
training then streams from, and calls :func:`fit_saes`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..boundary import all_finite
from ..cache import ActivationCache
from ..errors import InputError, InputTypeError, SiteError, StoreError
from ..progress import progress_bar
from .sae import THRESHOLD_DECAY, UNIT_NORM, SparseAutoencoder, freeze

__all__ = ["fit_saes", "train_saes", "as_source"]

ROWS = "rows"
LOG_EVERY = 10
FORMAT = 1


def as_source(X: Any, site: str | None = None, argument: str = "X") -> tuple[Any, str]:
    """``(source, site)`` for training or evaluation: a cache / store with ``site`` (or its only site), or
    rows ``[N, d]`` (tensor or array) wrapped in an in-memory cache under the site name ``"rows"``."""
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(np.ascontiguousarray(X))
    if isinstance(X, torch.Tensor):
        if X.dim() != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise InputError(f"{argument}: expected feature rows [N, d] with N, d > 0, got shape {tuple(X.shape)}; "
                             f"fold positions into rows with cache.features(site) or pass the cache and site=")
        if not X.is_floating_point():
            raise InputTypeError(f"{argument}: feature rows must be floating point, got {X.dtype}")
        if site is not None and site != ROWS:
            raise InputError(f"site: {site!r} given with a plain tensor; site= is for a cache or store")
        return ActivationCache({ROWS: X.detach()}, {ROWS: ("batch", "feature")}), ROWS
    if hasattr(X, "iter_batches") and hasattr(X, "features") and hasattr(X, "site_names"):
        names = list(X.site_names)
        if site is None:
            if len(names) != 1:
                raise InputError(f"site: {type(X).__name__} holds sites {names}; say which with site=")
            site = names[0]
        if site not in names:
            raise SiteError(f"site '{site}' is not in this {type(X).__name__}; it holds {names}")
        return X, site
    raise InputTypeError(f"{argument}: expected feature rows [N, d] (tensor or array), an ActivationCache or an "
                         f"ActivationStore, got {type(X).__name__}")


def _flatten(saes: Mapping[str, Any]) -> list[tuple[str, SparseAutoencoder]]:
    if not isinstance(saes, Mapping) or not saes:
        raise InputTypeError("saes: expected a non-empty mapping {site: SparseAutoencoder or [SparseAutoencoders]}")
    out = []
    for site, v in saes.items():
        items = list(v) if isinstance(v, (list, tuple)) else [v]
        for s in items:
            if not isinstance(s, SparseAutoencoder):
                raise InputTypeError(f"saes[{site!r}]: expected SparseAutoencoder(s), got {type(s).__name__}")
            s.check_params()
            out.append((site, s))
    if len({id(s) for _, s in out}) != len(out):
        raise InputError("saes: the same SparseAutoencoder object appears twice; give each site its own (sae.clone())")
    return out


def _groups(source: Any, sites: list[str], pool: Any) -> list[list[str]]:
    """Sites read together: the same number of rows (all of them when pooled)."""
    if pool is not None:
        return [sites]
    by: dict[int, list[str]] = {}
    for s in sites:
        by.setdefault(int(source.num_rows(s)), []).append(s)
    return list(by.values())


class _Trainer:
    """One SAE's optimiser and training state."""

    def __init__(self, site: str, sae: SparseAutoencoder, sample: torch.Tensor):
        self.site, self.sae = site, sae
        self.m = sae.build(sample).to(sample.device)  # trains where the activations are (CPU or GPU)
        self.opt = torch.optim.Adam(self.m.parameters(), lr=sae.lr)
        self.since_fired = torch.zeros(self.m.n, dtype=torch.long)
        self.gen = torch.Generator().manual_seed(int(sae.seed) + 1)
        self.step = 0
        self.handling = sae.dead_handling
        self.aux_k = sae.aux_k if sae.aux_k is not None else max(2 * sae.k, self.m.d // 2)
        self._acc: list[list[float]] = []

    def state(self) -> dict[str, Any]:
        return {"module": self.m.state_dict(), "optim": self.opt.state_dict(), "since_fired": self.since_fired,
                "gen": self.gen.get_state(), "step": self.step, "history": list(self.sae.history_),
                "acc": self._acc}

    def load(self, st: Mapping[str, Any]) -> None:
        self.m.load_state_dict(st["module"])
        self.opt.load_state_dict(st["optim"])
        self.since_fired = st["since_fired"].clone()
        self.gen.set_state(st["gen"])
        self.step = int(st["step"])
        self.sae.history_ = list(st["history"])
        self._acc = [list(a) for a in st["acc"]]

    def losses(self, xn: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``({"loss", "mse", "penalty", "aux"}, train_forward output)`` on normalised rows ``xn``."""
        m, sae = self.m, self.sae
        out = m.train_forward(xn)
        mse = (out["xhat"] - xn).pow(2).sum(-1).mean() / m.d
        zero = torch.zeros((), dtype=mse.dtype, device=mse.device)
        penalty, aux = zero, zero
        if m.variant == "relu":
            penalty = sae.l1_coef * out["l1"]
        elif m.variant == "jumprelu":
            penalty = sae.l0_coef * out["l0_ste"]
        dead = self.since_fired.to(xn.device) >= sae.dead_after
        if self.handling == "auxk" and bool(dead.any()):
            e = (xn - out["xhat"]).detach()
            aux = sae.aux_coef * (e - m.aux_reconstruction(xn, dead, self.aux_k)).pow(2).sum(-1).mean() / m.d
        return {"loss": mse + penalty + aux, "mse": mse, "penalty": penalty, "aux": aux}, out

    def train_step(self, x: torch.Tensor, part: tuple[int, int] | None = None,
                   reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None) -> None:
        """One Adam step on the batch ``x``.

        Data parallel (:func:`interp_core.distributed.fit_sae`): this process computes on rows ``part = (lo, hi)``
        of the global batch only, and ``reduce(tensor, op)`` sums (``op="sum"``) or max-es over the processes:
        the gradients (each weighted by its share of the rows), the fired mask and the logged numbers, so every
        process takes the step of the whole batch."""
        m, sae = self.m, self.sae
        N = x.shape[0]
        lo, hi = part if part is not None else (0, N)
        share = (hi - lo) / N
        n_dead = int((self.since_fired >= sae.dead_after).sum())
        self.opt.zero_grad(set_to_none=reduce is None)
        out: dict[str, Any] = {}
        if hi > lo:
            xn = m.normalize(x[lo:hi])
            parts, out = self.losses(xn)
            (parts["loss"] * share if share != 1 else parts["loss"]).backward()
            fired = out["fired"].detach().cpu()
            logged = [float(parts["loss"].detach()) * share, float(parts["mse"].detach()) * share,
                      float(out["l0"]) * share]
        else:  # fewer rows than processes: this one contributes nothing to the step
            fired = torch.zeros(m.n, dtype=torch.bool)
            logged = [0.0, 0.0, 0.0]
        if reduce is not None:
            params = list(m.parameters())
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
            reduce(flat, "sum")  # the gradient of the whole batch's mean loss (DDP's all-reduce)
            i = 0
            for p in params:
                if p.requires_grad:
                    p.grad = flat[i:i + p.numel()].view_as(p).clone()
                i += p.numel()
            fired = reduce(fired.to(torch.int32), "max").bool()
            logged = reduce(torch.tensor(logged, dtype=torch.float64), "sum").tolist()
        unit = m.variant in UNIT_NORM and not m.rescale
        with torch.no_grad():
            if unit and m.W_dec.grad is not None:  # keep the update tangent to the unit sphere of each row
                w = m.W_dec
                m.W_dec.grad -= (m.W_dec.grad * w).sum(1, keepdim=True) * w
        self.opt.step()
        with torch.no_grad():
            if unit:
                m.W_dec /= m.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
            if m.variant == "batchtopk":  # single process only (fit_sae refuses BatchTopK)
                vals = out["vals"].detach()
                pos = vals[vals > 0]
                if pos.numel():
                    low = pos.min()
                    th = m.threshold
                    m.threshold.copy_(low if torch.isnan(th) else THRESHOLD_DECAY * th + (1 - THRESHOLD_DECAY) * low)
        self.since_fired += N
        self.since_fired[fired] = 0
        self.step += 1
        self._acc.append([*logged, n_dead / m.n])
        if self.handling == "resample" and self.step % sae.resample_every == 0:
            self._resample(m.normalize(x))  # the whole batch, on every process alike
        if self.step % LOG_EVERY == 0:
            a = torch.tensor(self._acc).mean(0).tolist()
            sae.history_.append({"step": self.step, "loss": a[0], "mse": a[1], "l0": a[2], "dead_fraction": a[3]})
            self._acc = []

    @torch.no_grad()
    def _resample(self, xn: torch.Tensor) -> None:
        m, sae = self.m, self.sae
        dead = (self.since_fired >= sae.dead_after).nonzero()[:, 0]
        if not dead.numel():
            return
        err = xn - m.reconstruct(m.latents(xn))
        p = err.pow(2).sum(1)
        if not bool(p.sum() > 0):
            return
        pick = torch.multinomial(p.cpu() / p.sum().cpu(), dead.numel(), replacement=True, generator=self.gen)
        direction = err[pick.to(err.device)]
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.since_fired[dead] = 0
        dead = dead.to(m.W_dec.device)
        alive = torch.ones(m.n, dtype=torch.bool, device=m.W_dec.device)
        alive[dead] = False
        enc_norm = m.W_enc[alive].norm(dim=1).mean() if bool(alive.any()) else torch.tensor(1.0)
        m.W_dec[dead] = direction
        m.W_enc[dead] = direction * 0.2 * enc_norm
        m.b_enc[dead] = 0.0
        for prm in (m.W_dec, m.W_enc, m.b_enc):
            st = self.opt.state.get(prm, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    st[key][dead] = 0.0


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _config(pairs: list[tuple[str, SparseAutoencoder]], pool: Any, epochs: int, batch_size: int, seed: int,
            rows: dict[str, int]) -> str:
    params = [(site, {k: v for k, v in s.get_params().items() if k != "progress"}) for site, s in pairs]
    return json.dumps({"saes": params, "pool": pool, "epochs": epochs, "batch_size": batch_size, "seed": seed,
                       "rows": rows}, sort_keys=True, default=repr)


def fit_saes(source: Any, saes: Mapping[str, SparseAutoencoder | Sequence[SparseAutoencoder]], *, pool: Any = None,
             epochs: int | None = None, batch_size: int | None = None, seed: int = 0,
             checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 200,
             progress: bool | None = None) -> Mapping[str, Any]:
    """Train every SAE of ``saes`` (``{site: SAE or [SAEs]}``) on ``source`` in one pass per row group.

    Args:
        source: an ``ActivationStore``, an ``ActivationCache`` or rows ``[N, d]`` (then the one site is
            ``"rows"``).
        pool: how positions become rows (``features(site, pool)``); ``None`` folds them into rows.
        epochs, batch_size: passes and rows per step, shared by all SAEs (default: the first SAE's).
        seed: the data order (epoch ``e`` shuffles with ``seed + e``); each SAE's own ``seed`` sets its init.
        checkpoint: a file to write the training state to (atomically, every ``checkpoint_every`` steps and
            at the end) and to resume from when it exists.
        progress: tqdm bar; ``None`` shows it only on a terminal.

    Returns:
        ``saes``, each SAE fitted in place (``module_``, ``history_``).
    """
    if isinstance(source, (torch.Tensor, np.ndarray)):
        source, row_site = as_source(source, argument="source")
        if isinstance(saes, Mapping) and len(saes) == 1:
            saes = {row_site: next(iter(saes.values()))}
        elif isinstance(saes, Mapping):
            raise InputError(f"saes: plain rows [N, d] are one site; give one entry (got {list(saes)}), or pass an "
                             f"ActivationCache / ActivationStore holding the sites")
    pairs = _flatten(saes)
    first = pairs[0][1]
    epochs = int(first.epochs if epochs is None else epochs)
    batch_size = int(first.batch_size if batch_size is None else batch_size)
    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs, batch_size: must be positive integers, got {epochs}, {batch_size}")
    if checkpoint_every < 1:
        raise InputError(f"checkpoint_every: must be a positive integer, got {checkpoint_every}")
    sites = list(dict.fromkeys(site for site, _ in pairs))
    for s in sites:
        as_source(source, s, argument="source")
    groups = _groups(source, sites, pool)
    rows = {s: int(source.num_rows(s)) for s in sites}
    config = _config(pairs, pool, epochs, batch_size, seed, rows)

    trainers: list[_Trainer] = []
    for names in groups:
        init_rows = max(s.init_rows for site, s in pairs if site in names)
        sample = next(iter(source.iter_batches(names, batch_size=init_rows, shuffle=True, seed=seed, pool=pool)))
        for site, s in pairs:
            if site in names:
                trainers.append(_Trainer(site, s, _checked(sample[site], site, "initialisation")))
    position = {gi: (0, 0) for gi in range(len(groups))}
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        try:
            blob = torch.load(path, weights_only=True)
        except Exception as e:  # a torn or foreign file
            raise StoreError(f"checkpoint: cannot read {path} ({e}); delete it to start over") from None
        if blob.get("format") != FORMAT or blob.get("config") != config:
            raise InputError(f"checkpoint: {path} was written by a run with other SAEs, data or settings; use "
                             f"another path or delete the file to start over")
        for t, st in zip(trainers, blob["trainers"]):
            t.load(st)
        position = {int(k): tuple(v) for k, v in blob["position"].items()}

    def save(done: bool = False) -> None:
        if path is not None:
            _atomic_save({"format": FORMAT, "config": config, "position": position, "done": done,
                          "trainers": [t.state() for t in trainers]}, path)

    total = 0
    for names in groups:
        n = rows[names[0]] if pool is None else None
        total += epochs * -(-n // batch_size) if n is not None else 0
    bar = progress_bar(total=total or None, desc="training SAEs", unit="step", progress=progress)
    since_save = 0
    for gi, names in enumerate(groups):
        group = [t for t in trainers if t.site in names]
        start_epoch, start_batch = position[gi]
        for epoch in range(start_epoch, epochs):
            stream = source.iter_batches(names, batch_size=batch_size, shuffle=True, seed=seed + epoch, pool=pool)
            for bi, batch in enumerate(stream):
                if epoch == start_epoch and bi < start_batch:
                    continue  # replayed up to the checkpoint's position
                xs = {s: _checked(batch[s], s, f"epoch {epoch} batch {bi}") for s in names}
                for t in group:
                    t.train_step(xs[t.site])
                position[gi] = (epoch, bi + 1)
                bar.update(1)
                since_save += 1
                if since_save >= checkpoint_every:
                    save()
                    since_save = 0
            position[gi] = (epoch + 1, 0)
    bar.close()
    save(done=True)
    for t in trainers:
        t.m.fold()  # a rescaled decoder ends as unit rows with the norms in the encoder (exact)
        freeze(t.m)
    return saes


def _checked(x: torch.Tensor, site: str, where: str) -> torch.Tensor:
    x = x.float() if x.dtype != torch.float32 else x
    if not all_finite(x):
        raise InputError(f"site '{site}' ({where}): the feature rows hold NaN or infinite values; clean the "
                         f"activations (or the inputs) first")
    return x


def _as_mapping(sites: Sequence[str], sae: Any) -> dict[str, Any]:
    if sae is None:
        return {s: SparseAutoencoder() for s in sites}
    if isinstance(sae, SparseAutoencoder):
        return {s: sae.clone() for s in sites}
    if isinstance(sae, (list, tuple)):
        return {s: [x.clone() for x in sae] for s in sites}
    if isinstance(sae, Mapping):
        unknown = [k for k in sae if k not in sites]
        if unknown:
            raise InputError(f"sae: entries for {unknown}, which are not in sites={list(sites)}")
        return {s: sae[s] for s in sites if s in sae}
    raise InputTypeError(f"sae: expected a SparseAutoencoder (a template per site), a list of them or a mapping "
                         f"{{site: SAE}}, got {type(sae).__name__}")


def train_saes(model: Any, data: Any, sites: Sequence[str] | str, *, sae: Any = None, pool: Any = None,
               batch_size: int | None = None, epochs: int | None = None, seed: int = 0,
               store: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
               progress: bool | None = None) -> dict[str, Any]:
    """Collect ``sites`` of ``model`` over ``data`` (in eval mode) and train SAEs on them in one pass.

    Args:
        model: a ``HookedModel`` or any ``nn.Module`` (the registered adapter gives canonical sites).
        data: inputs in any form :func:`~interp_core.boundary.iter_batches` accepts.
        sites: site names (CNN cells, ViT tokens, policy layers, ``memory.h``, ...).
        sae: a template ``SparseAutoencoder`` (cloned per site), a list of templates (several sizes or
            variants per site), or ``{site: SAE or [SAEs]}``; default ``SparseAutoencoder()``.
        pool: positions pooled (``"mean"``, ``"cls"``, ...) or folded into rows (``None``).
        batch_size: examples per forward while collecting (training batches: the SAEs' ``batch_size``).
        store: a directory: collect into an on-disk ``ActivationStore`` there (resumable) and stream the
            training from it through its bounded shuffle buffer, instead of holding everything in memory.
        checkpoint: training checkpoint file (see :func:`fit_saes`).

    Returns:
        ``{site: fitted SAE (or list)}``.
    """
    from ..boundary import as_hooked, iter_batches
    from ..store import ActivationStore

    hm = as_hooked(model)
    names = [sites] if isinstance(sites, str) else list(sites)
    if not names:
        raise InputError("sites: none given; name at least one site (hm.sites lists them)")
    mapping = _as_mapping(names, sae)
    source: Any
    with hm.analysis():
        batches = iter_batches(data, model=hm, batch_size=batch_size, sites=names)
        if store is not None:
            source = ActivationStore.collect(hm, (b.inputs for b in batches), names, path=store, pool=pool,
                                             progress=bool(progress))
        else:
            parts = [hm.run_with_cache(b.inputs, sites=names, pool=pool)[1] for b in batches]
            source = ActivationCache.cat(parts)
    return dict(fit_saes(source, mapping, epochs=epochs, seed=seed, checkpoint=checkpoint, progress=progress))
