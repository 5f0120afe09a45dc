"""Scale-out under ``torch.distributed``: the suite's store, probes, SAEs and CKA on many processes.

The engine is PyTorch's own: launch the same script with ``torchrun`` (``--nproc-per-node N``, and for several
machines the usual ``--nnodes`` / ``--rdzv-backend c10d --rdzv-endpoint HOST:PORT`` rendezvous arguments), call
``torch.distributed.init_process_group()`` (``"gloo"`` on CPU, ``"nccl"`` on GPUs; ``env://`` from torchrun),
and call the suite's functions on every rank with the same arguments. Without an initialised process group
(or with one process) everything runs single-process, unchanged. :func:`current_rank` is the one rule.

**Collection** (:meth:`ActivationStore.collect <interp_core.store.ActivationStore.collect>`): every rank
gives the same ``data`` (the data boundary's batches, in the same order); the batches are cut into global
shards of ``batches_per_shard`` and global shard ``k`` is computed by rank ``k % world`` (a rank skips the
others' batches without running the model on them). Rank ``r`` writes ``shard-r{r}-{j:05d}.safetensors``,
its progress file ``manifest-r{r}.json`` (its shards, with their global batch ranges, hashes and checksums)
under its own lock ``store-r{r}.lock``; after a barrier rank 0 merges one ``manifest.json`` listing every
shard in global order, so the store read back (``ActivationStore(path)``) equals the single-process store
row for row. ``partition="ranks"`` is for data each rank makes itself (RL rollouts with per-rank
environments and seeds): each rank stores all of its own batches and the store holds rank 0's rows, then
rank 1's, ... A rank killed mid-run leaves a valid, incomplete part (the single-process guarantees, per
rank); the same ``torchrun`` command resumes every rank from its own progress file (no row lost, none
duplicated, the same data); finished ranks only re-check their first batch. The other ranks fail at the
barrier (the process group's timeout) instead of waiting forever; an error on one rank is raised on all.

**Reading**: ``store.iter_batches(..., rank=r, world_size=W)`` (or :func:`rank_batches`) streams the
shards at positions ``r, r + W, ...`` of the same seeded shard permutation through the bounded shuffle
buffer: one epoch over all ranks covers every row exactly once.

**Probes** (:func:`fit_linear_probe`): each rank holds its part of the rows; standardisation statistics and
class counts are all-reduced; ``"logistic"`` runs the probes' own solver
(:func:`~interp_core.probes.joint.fit_logistic_joint`, whitened L-BFGS) with ``reduce=`` an all-reduce: row
counts, weight totals, the whitening statistics, the loss and the gradient are summed over ranks (float64), so
every rank takes identical steps and
the result is the single-process optimum to the solver tolerance (``max |grad| <= tol``; the objective is
strictly convex, so coefficients differ by at most about ``tol / l2``-scaled amounts, plus float64 rounding of
the summation order); ridge kinds all-reduce the sufficient statistics ``X^T X``, ``X^T y`` and solve
exactly.

**Sparse autoencoders** (:func:`fit_sae`): data parallel as DDP does it: the same seed and initialisation
on every rank, every rank reads the same global batch of the shuffled stream and trains on its own
contiguous slice of it; gradients are all-reduced and weighted by each slice's share of the rows, so each
step is the single-process step on the whole batch up to float32 summation order (observed differences are
around 1e-6 relative after tens of steps; Adam's division by ``sqrt(v)`` can amplify rounding in the first
steps, and a TopK selection on an exact tie could flip). Dead-latent counters use the fired mask of the
whole batch (an all-reduced OR), so dead handling is the same too. ``batchtopk`` (a top-k over the whole
batch) is refused.

**Similarity**: each rank feeds its own rows (e.g. :func:`rank_batches`) to a streaming CKA accumulator
(:class:`~interp_core.similarity.streaming.LinearCKAAccumulator` / ``MinibatchCKA``); :func:`all_reduce_cka`
(the accumulators' own ``all_reduce``) sums them over ranks, layer x layer matrices included, to the
single-process values over all rows (float64 rounding).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .boundary import all_finite
from .errors import InputError, InputTypeError, StoreError

__all__ = ["current_rank", "is_distributed", "rank_batches", "collect_barrier", "check_same_folder",
           "fit_linear_probe", "fit_sae", "all_reduce_cka"]


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group is initialised with more than one process."""
    return current_rank()[1] > 1


def current_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: from ``torch.distributed`` when a process group is initialised
    (``init_process_group``, ``env://`` under torchrun), else ``(0, 1)``."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(obj: Any) -> list[Any]:
    rank, world = current_rank()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    _dist().all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------- store
def collect_barrier(root: Path, error: BaseException | None, world: int) -> Any:
    """End of a distributed collection: agree on errors, merge the ranks' progress files into
    ``manifest.json`` on rank 0 (under the store's lock), and return the merged store on every rank.

    ``error`` is this rank's failure (``None``: its part is complete); one rank's failure is raised on every
    rank (its own error on it, a :class:`StoreError` naming it elsewhere), so no rank waits forever.
    """
    from . import store as store_mod
    from .storeio import MANIFEST, _read_manifest, _WriteLock, merge_rank_manifests, rank_manifest_name

    rank, _ = current_rank()

    def agree(err: BaseException | None, what: str) -> None:
        sent: Any = None
        if err is not None:  # the error itself where it pickles (the same type is raised on every rank)
            try:
                pickle.loads(pickle.dumps(err))
                sent = err
            except Exception:  # noqa: BLE001 - an error of the user's that does not pickle: its text
                sent = f"{type(err).__name__}: {err}"
        got = _gather(sent)
        if err is not None:
            raise err
        failed = [(r, m) for r, m in enumerate(got) if m is not None]
        if failed:
            r, m = failed[0]
            if isinstance(m, BaseException):
                raise m
            raise StoreError(f"activation store {root}: rank {r} failed {what} ({m}); fix that and run the same "
                             f"command again on every rank to resume")

    agree(error, "its part of the collection")
    merge_error: BaseException | None = None
    if rank == 0:
        try:
            with _WriteLock(root):
                parts = [_read_manifest(root, rank_manifest_name(r)) for r in range(world)]
                merged = merge_rank_manifests(root, parts, partial=False)
                data = json.dumps(merged, indent=1).encode()
                try:
                    store_mod._atomic_write(root / MANIFEST, data)
                except OSError as e:
                    raise store_mod._write_error(root, root / MANIFEST, e, "run the same command again") from None
        except Exception as e:  # reported on every rank below
            merge_error = e
    agree(merge_error, "to merge the manifest")
    return store_mod.ActivationStore(root)


def check_same_folder(root: Path) -> None:
    """Refuse (on every rank) a distributed collection whose ranks name different folders."""
    folders = _gather(str(Path(root).resolve()))
    if len(set(folders)) > 1:
        raise InputError(f"path: the ranks name different folders {sorted(set(folders))}; a distributed collection "
                         f"writes one store: give every rank the same folder on a file system they share")


def rank_batches(store: Any, sites: Sequence[str] | str, batch_size: int = 256, shuffle: bool = True,
                 seed: int = 0, pool: Any = None, buffer_shards: int = 4,
                 labels: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's part of an epoch over ``store``: ``store.iter_batches`` with this process's ``rank`` and
    ``world_size`` (:func:`current_rank`); all ranks together cover every row once."""
    rank, world = current_rank()
    return store.iter_batches(sites, batch_size=batch_size, shuffle=shuffle, seed=seed, pool=pool,
                              buffer_shards=buffer_shards, labels=labels, rank=rank, world_size=world)


def _all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` summed (or max-ed) over ranks, in place; a no-op single-process. Moves to the backend's device."""
    rank, world = current_rank()
    if world == 1:
        return t
    dist = _dist()
    device = t.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        buf = t.to(f"cuda:{torch.cuda.current_device()}")
    else:
        buf = t
    dist.all_reduce(buf, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    if buf is not t:
        t.copy_(buf.to(device))
    return t


# ---------------------------------------------------------------------------------------------- probes
def _local_rows(source: Any, site: str, y: Any, pool: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's rows ``[n_r, d]`` (float64) and labels of ``site``: its shards of a store, or (a tensor /
    array / cache) the rank's contiguous slice of the rows."""
    rank, world = current_rank()
    if isinstance(source, (torch.Tensor, np.ndarray)):
        X = torch.as_tensor(np.asarray(source) if isinstance(source, np.ndarray) else source)
        if y is None:
            raise InputError("y: labels are required with plain rows X [N, d]")
        yy = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
        if X.dim() != 2 or len(X) != len(yy):
            raise InputError(f"X, y: expected rows [N, d] and N labels, got {tuple(X.shape)} and {tuple(yy.shape)}")
        lo, hi = rank * len(X) // world, (rank + 1) * len(X) // world
        return X[lo:hi].double(), yy[lo:hi]
    if not hasattr(source, "iter_batches"):
        raise InputTypeError(f"source: expected an ActivationStore or rows [N, d], got {type(source).__name__}")
    if y is not None:
        raise InputError("y: labels come from the store (collected from (inputs, labels) data); do not pass y")
    parts = list(source.iter_batches(site, batch_size=1 << 16, shuffle=False, pool=pool, labels=True, rank=rank,
                                      world_size=world))
    if not parts:
        d = source.features(site, pool).shape[1] if source.num_shards == 0 else None
        return torch.zeros(0, d or 0, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    return torch.cat([b[site] for b in parts]).double(), torch.cat([b["labels"] for b in parts])


def fit_linear_probe(source: Any, site: str | None = None, y: Any = None, *, pool: Any = None,
                     probe: Any = None) -> Any:
    """Fit a :class:`~interp_core.probes.LinearProbe` on rows spread over ranks; every rank returns the same
    fitted probe, equal to ``probe.fit(all rows)`` in one process (see the module docstring for the
    tolerance).

    Args:
        source: an ``ActivationStore`` (each rank reads its own shards; labels from the store) or rows
            ``[N, d]`` given whole on every rank with ``y`` (each rank uses its contiguous slice).
        site: the store's site (``None``: its only site).
        y: ``[N]`` labels with plain rows.
        pool: how positions become rows (the store's ``features(site, pool)``; pool to one row per example).
        probe: an unfitted ``LinearProbe`` whose parameters are used (default ``LinearProbe()``:
            logistic, ``l2=1``); ``class_weight`` may be ``None`` or ``"balanced"``; no sample weights.
    """
    from .probes import LinearProbe
    from .probes.joint import LogisticTask, fit_logistic_joint

    probe = LinearProbe() if probe is None else probe.clone()
    if not isinstance(probe, LinearProbe):
        raise InputTypeError(f"probe: expected a LinearProbe template, got {type(probe).__name__}")
    probe._validate_params()
    if probe.class_weight not in (None, "balanced"):
        raise InputError(f"probe.class_weight: None or 'balanced' under torch.distributed, got "
                         f"{probe.class_weight!r}")
    if site is None and hasattr(source, "site_names"):
        if len(source.site_names) != 1:
            raise InputError(f"site: the store holds {source.site_names}; say which with site=")
        site = source.site_names[0]
    X, labels = _local_rows(source, site, y, pool)
    if not all_finite(X):
        raise InputError(f"site '{site}': the feature rows hold NaN or infinite values; clean them first")
    d = torch.tensor([X.shape[1]], dtype=torch.float64)
    d_max = int(_all_reduce(d.clone(), "max"))
    if X.shape[0] == 0:
        X = torch.zeros(0, d_max, dtype=torch.float64)
    n = int(_all_reduce(torch.tensor([float(len(X))], dtype=torch.float64)).item())
    if n < 2:
        raise InputError(f"the ranks hold {n} rows of site '{site}' in total; need at least 2")
    mean = _all_reduce(X.sum(0)) / n
    if probe.standardize:
        std = (_all_reduce(((X - mean) ** 2).sum(0)) / n).sqrt()
        const = std <= 1e-12 * torch.clamp(mean.abs(), min=1.0)
        if bool(const.any()):
            cols = torch.nonzero(const).flatten().tolist()
            if probe.constant_features == "error":
                raise InputError(f"site '{site}' has constant feature columns {cols[:20]}; drop them, pass "
                                 f"constant_features='ignore' or standardize=False")
            std = torch.where(const, torch.full_like(std, float("inf")), std)
    else:
        mean, std = torch.zeros_like(mean), torch.ones_like(mean)
    Xs = (X - mean) / std
    if probe.is_classifier:
        classes = np.unique(np.concatenate([np.asarray(c) for c in _gather(np.unique(labels.cpu().numpy()))]))
        probe.classes_ = classes
        yi = torch.as_tensor(np.searchsorted(classes, labels.cpu().numpy()), dtype=torch.long)
        k = len(classes)
        if k < 2:
            raise InputError(f"y: a classifier needs at least 2 classes, the ranks hold {classes.tolist()}")
        counts = _all_reduce(torch.bincount(yi, minlength=k).double())
        cw = n / (k * counts) if probe.class_weight == "balanced" else torch.ones(k, dtype=torch.float64)
        w = cw[yi]
        n_out = 1 if k == 2 else k
    else:
        w = torch.ones(len(X), dtype=torch.float64)
        Y = labels.double().reshape(len(labels), -1)
        probe._y_1d = labels.dim() == 1
        n_out = int(_all_reduce(torch.tensor([float(Y.shape[1])], dtype=torch.float64), "max"))
    total = float(_all_reduce(w.sum().reshape(1)))
    if probe.kind == "logistic":  # the probes' own solver, its data sums all-reduced (same steps on every rank)
        task = LogisticTask(y=yi, n_out=n_out, sw=w, l2=float(probe.l2), tol=float(probe.tol),
                            max_iter=int(probe.max_iter))
        beta, n_iter, converged = fit_logistic_joint(Xs, [task], probe.fit_intercept, history=int(probe.history),
                                                     reduce=_all_reduce)[0]
        d = Xs.shape[1]
        W = beta[:, :d].T.contiguous()
        b = beta[:, d] if probe.fit_intercept else torch.zeros(n_out, dtype=torch.float64)
    else:
        if probe.is_classifier:
            Y = (2.0 * yi.double() - 1.0)[:, None] if n_out == 1 else -torch.ones(len(yi), n_out, dtype=torch.float64)
            if n_out > 1:
                Y[torch.arange(len(yi)), yi] = 1.0
        W, b = _ridge(Xs, Y, w, total, 0.0 if probe.kind == "linear" else float(probe.l2), probe.fit_intercept)
        n_iter, converged = 1, True
    probe._set_solution(W, b, mean, std, Xs.shape[1])
    probe.n_iter_, probe.converged_ = n_iter, converged
    return probe


def _ridge(Xs: torch.Tensor, Y: torch.Tensor, w: torch.Tensor, total: float, l2: float,
           fit_intercept: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted ridge from sufficient statistics summed over ranks (``interp_core.probes.solvers.ridge_solve``
    on all rows)."""
    d, t = Xs.shape[1], Y.shape[1]
    stats = torch.cat([(w[:, None] * Xs).sum(0), (w[:, None] * Y).sum(0), (Xs.T @ (w[:, None] * Xs)).reshape(-1),
                       (Xs.T @ (w[:, None] * Y)).reshape(-1)])
    _all_reduce(stats)
    sx, sy = stats[:d], stats[d:d + t]
    sxx = stats[d + t:d + t + d * d].view(d, d)
    sxy = stats[d + t + d * d:].view(d, t)
    if fit_intercept:
        xm, ym = sx / total, sy / total
        A, B = sxx - total * torch.outer(xm, xm), sxy - total * torch.outer(xm, ym)
    else:
        xm, ym = torch.zeros(d, dtype=torch.float64), torch.zeros(t, dtype=torch.float64)
        A, B = sxx, sxy
    if l2 > 0:
        W = torch.linalg.solve(A + l2 * torch.eye(d, dtype=torch.float64), B)
    else:
        W = torch.linalg.lstsq(A, B, driver="gelsd").solution
    return W, ym - xm @ W


# ---------------------------------------------------------------------------------------------- SAEs
def fit_sae(source: Any, saes: Mapping[str, Any], *, pool: Any = None, epochs: int | None = None,
            batch_size: int | None = None, seed: int = 0, progress: bool | None = None) -> Mapping[str, Any]:
    """Data-parallel :func:`~interp_core.features.fit_saes` (one SAE per site, sites with the same row count):
    call it on every rank with the same arguments; every rank returns the same fitted SAEs, equal to the
    single-process ``fit_saes(source, saes, ...)`` up to float32 summation order (module docstring).
    No checkpoints (resume a long run from the store instead)."""
    from .features.sae import SparseAutoencoder, freeze
    from .features.train import _checked, _Trainer, as_source
    from .progress import progress_bar

    rank, world = current_rank()
    if isinstance(source, (torch.Tensor, np.ndarray)):
        source, row_site = as_source(source, argument="source")
        if not isinstance(saes, Mapping) or len(saes) != 1:
            raise InputError("saes: plain rows [N, d] are one site; give one entry {'rows': SparseAutoencoder()}")
        saes = {row_site: next(iter(saes.values()))}
    if not isinstance(saes, Mapping) or not saes:
        raise InputTypeError("saes: expected a non-empty mapping {site: SparseAutoencoder}")
    for site, s in saes.items():
        if not isinstance(s, SparseAutoencoder):
            raise InputTypeError(f"saes[{site!r}]: expected one SparseAutoencoder per site, got {type(s).__name__}")
        s.check_params()
        if s.variant == "batchtopk":
            raise InputError(f"saes[{site!r}]: variant 'batchtopk' selects the top activations of the whole batch, "
                             f"which data parallelism splits; use 'topk' (per row) or train it in one process")
        as_source(source, site, argument="source")
    names = list(saes)
    first = saes[names[0]]
    epochs = int(first.epochs if epochs is None else epochs)
    batch_size = int(first.batch_size if batch_size is None else batch_size)
    if epochs < 1 or batch_size < 1:
        raise InputError(f"epochs, batch_size: must be positive integers, got {epochs}, {batch_size}")
    if pool is None and len({int(source.num_rows(s)) for s in names}) != 1:
        raise InputError(f"saes: sites {names} give different numbers of rows; pool them alike or call fit_sae "
                         f"once per row count")
    init_rows = max(s.init_rows for s in saes.values())
    sample = next(iter(source.iter_batches(names, batch_size=init_rows, shuffle=True, seed=seed, pool=pool)))
    trainers = [_Trainer(site, saes[site], _checked(sample[site], site, "initialisation")) for site in names]
    bar = progress_bar(desc="training SAEs (data parallel)", unit="step", progress=progress if rank == 0 else False)
    for epoch in range(epochs):
        for bi, batch in enumerate(source.iter_batches(names, batch_size=batch_size, shuffle=True, seed=seed + epoch,
                                                       pool=pool)):
            for t in trainers:
                x = _checked(batch[t.site], t.site, f"epoch {epoch} batch {bi}")
                N = x.shape[0]
                t.train_step(x, (rank * N // world, (rank + 1) * N // world), _all_reduce)
            bar.update(1)
    bar.close()
    for t in trainers:
        t.m.fold()  # a rescaled decoder ends as unit rows with the norms in the encoder (as fit_saes does)
        freeze(t.m)
    return saes


# ---------------------------------------------------------------------------------------------- similarity
def all_reduce_cka(acc: Any, group: Any = None) -> Any:
    """Sum a streaming CKA accumulator (:class:`~interp_core.similarity.streaming.LinearCKAAccumulator` or
    ``MinibatchCKA``, layer x layer matrices included) over ranks in place and return it: every rank then
    holds the accumulator of all rows, so ``acc.value()`` / ``acc.matrix()`` equal the single-process values.
    The accumulator's own ``all_reduce`` does the work (re-centring the ranks' sums on a common shift first);
    a collective: every rank calls it, ranks without rows included."""
    if not callable(getattr(acc, "all_reduce", None)):
        raise InputTypeError(f"acc: expected a streaming CKA accumulator with all_reduce() (LinearCKAAccumulator, "
                             f"MinibatchCKA), got {type(acc).__name__}")
    return acc.all_reduce(group)
