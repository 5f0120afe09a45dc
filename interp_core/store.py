"""ActivationStore: activations of a whole dataset (or of rollouts), streamed to disk in shards.

``ActivationStore.collect(model, data, sites, path)`` runs the model (any form :func:`~interp_core.boundary.
as_hooked` accepts) over ``data`` (any form :func:`~interp_core.boundary.iter_batches` accepts; labels from
``(x, y)`` pairs or ``labels=``) in eval mode (``hm.analysis()``; ``train=True`` for train mode, buffers
restored) and writes every ``batches_per_shard``
batches one shard:

- ``path/shard_00000.safetensors`` … — one tensor ``[examples, ...]`` per site (as cached, pooled or not)
  plus ``__labels__``;
- ``path/manifest.json`` — what the store was collected from (``source``: a hash of the model's class and
  ``state_dict`` bytes, and a fingerprint of the data's first batch; ``settings``: sites, pooling, dtype,
  batches per shard, train mode), the sites with axes, dtype and per-example shape, and per shard its batch
  range, example range, row counts, the SHA-256 of its file and a fingerprint of its input batches (each
  batch's labels and up to 2**20 evenly spaced input values per tensor: cheap next to the forward, different
  for another dataset, order or batching); once finished, ``complete`` and the totals.

**What the store vouches for.** ``collect`` on a folder that holds a store compares the model, the data's
first batch and the settings with the manifest and refuses a mismatch (:class:`StoreMismatchError`: use
another folder, or ``overwrite=True`` to replace it); a complete matching store is returned as is, an
interrupted one is resumed (the batches it skips are hashed and checked against the shards they made, so a
resumed store never mixes two datasets). One process writes a store at a time: ``collect`` holds an
exclusive lock on ``path/store.lock`` (``flock``, with the owner's pid in the file) and refuses a folder
another live process is writing (:class:`StoreLockedError`, naming the pid); the lock of a dead process
(e.g. killed) is taken over.

**Crash safety.** Each shard and each manifest update is written to a temporary file, ``fsync``-ed and
renamed into place, and the folder is ``fsync``-ed after each rename; a shard counts as data only once the
manifest lists it. A run killed at any point (even ``SIGKILL``) leaves a valid, incomplete store that the
same ``collect`` call resumes. A failed write (disk full, file-size limit, permissions) raises
:class:`~interp_core.errors.StoreError` naming the store and how to resume.

**Reading** (``ActivationStore(path)``) validates the manifest (contiguous batch and example ranges, row
counts, totals, file names) and refuses an incomplete store unless ``allow_partial=True``
(:class:`IncompleteStoreError`); a shard whose checksum does not match raises :class:`CorruptShardError`
naming the file. The reading interface is that of :class:`~interp_core.cache.ActivationCache`:
``features(site, pool)``, ``iter_batches(sites, batch_size, shuffle, seed)`` (a shuffled stream holding at
most ``buffer_shards`` shards in memory), ``axes``, ``site_names``, ``num_rows``; plus ``array(site)`` — the
raw activations as memory-mapped numpy arrays across shards — and ``labels()``. ``path=None`` gives an
in-memory store with the same interface.

**Under torch.distributed** (``torchrun``; see :mod:`interp_core.distributed`) every rank calls ``collect``
with the same arguments: rank ``r`` computes the global shards ``k`` with ``k % world == r`` and writes
``shard-r{r}-{j:05d}.safetensors`` with its own progress file ``manifest-r{r}.json`` and lock
``store-r{r}.lock`` (each with the guarantees above, per rank), and rank 0 merges ``manifest.json`` once all
ranks finished; ``iter_batches(..., rank=, world_size=)`` streams one rank's part of an epoch. The file-level
helpers (manifest validation and merging, fingerprints, locks, memory maps) live in
:mod:`interp_core.storeio`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from .axes import PoolSpec, to_rows
from .axes import pool as pool_tensor
from .boundary import Batch, as_hooked, iter_batches
from .cache import ActivationCache
from .errors import InputError, InputTypeError, SiteError, StoreError
from .progress import progress_bar
from .storeio import (
    FORMAT_VERSION,
    LABELS,
    LOCK,
    MANIFEST,
    CorruptShardError,
    CorruptStoreError,
    IncompleteStoreError,
    ShardedArray,
    StoreLockedError,
    StoreMismatchError,
    _batch_hash,
    _check_same_source,
    _fresh_manifest,
    _holder_text,
    _jsonable,
    _lock_holder,
    _memmap_safetensors,
    _mismatch,
    _num_examples,
    _read_manifest,
    _sha256,
    _store_files,
    _write_error,
    _WriteLock,
    model_fingerprint,
    rank_lock_name,
    rank_manifest_name,
    shard_name,
)

__all__ = ["ActivationStore", "ShardedArray", "CorruptStoreError", "CorruptShardError", "IncompleteStoreError",
           "StoreLockedError", "StoreMismatchError", "model_fingerprint", "LOCK"]

# ---------------------------------------------------------------------------------------------- file system
# Every durable step goes through these few functions (the torture test interrupts the store between them).
def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and ``fsync`` it."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        _fsync(f.fileno())


def _fsync(fd: int) -> None:
    os.fsync(fd)


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _fsync_dir(path: Path) -> None:
    """``fsync`` a folder so that the renames in it survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory; nothing more can be done there
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` so that it holds either its old bytes or ``data``, whatever interrupts this."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_file(tmp, data)
        _rename(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


# ---------------------------------------------------------------------------------------------- the store
class ActivationStore:
    """Sharded activations on disk (``path``) or in memory (``path=None``); see the module docstring.

    ``ActivationStore(path)`` opens an existing store (``allow_partial=True`` also an incomplete one);
    :meth:`collect` creates, resumes or reuses one.
    """

    def __init__(self, path: str | os.PathLike | None = None, allow_partial: bool = False):
        self.path = Path(path) if path is not None else None
        self._memory: list[dict[str, torch.Tensor]] = []
        if self.path is None:
            self.manifest = {"version": FORMAT_VERSION, "sites": {}, "shards": [], "complete": False}
            return
        self.manifest = _read_manifest(self.path)
        if not self.manifest["complete"] and not allow_partial:
            holder = next((h for h in (_lock_holder(self.path, rank_lock_name(r)) for r in
                                       [None, *range(int(self.manifest.get("world", 1)))]) if h is not None), None)
            state = (f"is being collected by {_holder_text(holder)}" if holder is not None
                     else "was interrupted before it finished")
            rows = self.manifest["shards"][-1]["examples"][1] if self.manifest["shards"] else 0
            raise IncompleteStoreError(
                f"activation store {self.path} is incomplete: its collection {state} ({rows} examples in "
                f"{self.num_shards} shards so far); resume it with ActivationStore.collect(...) and the same model, "
                f"data and settings, or open it with allow_partial=True to read the finished part")

    # ------------------------------------------------------------------ writing
    @classmethod
    def collect(cls, model: Any, data: Any, sites: Sequence[str] | str, path: str | os.PathLike | None = None,
                pool: PoolSpec | Mapping[str, PoolSpec] = None, batches_per_shard: int = 8,
                dtype: torch.dtype | None = None, resume: bool = True, progress: bool | None = None, *,
                labels: Any = None, batch_size: int | None = None, overwrite: bool = False,
                train: bool = False, partition: str = "shards") -> "ActivationStore":
        """Run ``model`` over ``data`` and store the activations of ``sites`` (see the module docstring).

        Args:
            model: a :class:`~interp_core.HookedModel` or a module (wrapped by the adapter registry).
            data: inputs in any form :func:`~interp_core.boundary.iter_batches` accepts, in a fixed order;
                labels carried by ``(x, y)`` pairs (or given as ``labels``) are stored too.
            sites: the sites to record.
            path: the store's folder (``None``: in memory).
            pool: as in ``run_with_cache``; pooled sites keep only ``[examples, features]``.
            batches_per_shard: batches per shard file (the unit of resumption and of shuffling).
            dtype: store floating activations in this dtype (e.g. ``torch.float16`` halves the disk).
            resume: continue an interrupted store at ``path`` (``False``: start over, as ``overwrite``).
            progress: a progress bar (``None``: only on a terminal).
            labels: ``[N]`` labels, one per input, when ``data`` does not carry them.
            batch_size: examples per forward where ``data`` is not batched already.
            overwrite: replace whatever store is at ``path`` (another model's, other data's, a broken one).
            train: run the model in train mode (dropout on; buffers restored after) instead of eval mode.
            partition: under ``torch.distributed`` only: ``"shards"`` (every rank gives the same ``data``;
                rank ``r`` computes the global shards ``k`` with ``k % world == r``) or ``"ranks"`` (each rank's
                ``data`` is its own, e.g. rollouts with per-rank seeds; the store holds rank 0's rows, then rank
                1's, ...).

        Returns:
            The store, complete. A complete store already at ``path`` from the same model, data (first
            batch) and settings is returned without running the model.

        Under ``torch.distributed`` (initialised, world size > 1: e.g. launched with ``torchrun``) every rank
        calls ``collect`` with the same arguments; rank ``r`` runs the model on the global shards ``k`` with
        ``k % world == r`` only, writes them as its own files, and rank 0 merges one manifest once all
        ranks finished (see :mod:`interp_core.distributed`). Every rank returns the merged store.
        """
        from .distributed import check_same_folder, collect_barrier, current_rank

        rank, world = current_rank()
        hm = as_hooked(model)
        names = [sites] if isinstance(sites, str) else list(sites) if isinstance(sites, Iterable) else None
        if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise InputError(f"sites: expected a site name or a non-empty list of distinct names, got {sites!r}")
        if isinstance(batches_per_shard, bool) or not isinstance(batches_per_shard, int) or batches_per_shard < 1:
            raise InputError(f"batches_per_shard: must be a positive integer, got {batches_per_shard!r}")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise InputTypeError(f"dtype: expected a torch.dtype such as torch.float16, got {dtype!r}")
        settings = {"sites": names, "pool": _jsonable(dict(pool) if isinstance(pool, Mapping) else pool, "pool"),
                    "batches_per_shard": batches_per_shard, "dtype": str(dtype) if dtype else None,
                    "train": bool(train)}
        if world > 1:
            if path is None:
                raise InputError(f"path: None (an in-memory store) under torch.distributed (rank {rank} of {world}); "
                                 f"give a folder on a file system every rank can reach")
            if partition not in ("shards", "ranks"):
                raise InputError(f"partition: 'shards' (the same data on every rank, split by shard) or 'ranks' "
                                 f"(each rank's own data), got {partition!r}")
            settings["world"] = world
            settings["partition"] = partition
        source = {**model_fingerprint(hm), "data": None}
        batches = iter(iter_batches(data, labels, model=hm, batch_size=batch_size, sites=names))
        run = _Run(hm, names, pool, batches_per_shard, dtype, train, progress, _num_examples(data),
                   rank=rank, world=world, by_rank=partition == "ranks")

        if path is None:
            store = cls.__new__(cls)
            store.path, store._memory = None, []
            store.manifest = _fresh_manifest(settings, source)
            run.execute(store, batches, fresh=True)
            return store

        root = Path(path)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"activation store {root}: cannot create the folder ({e.strerror or e}); give a "
                             f"writable path") from None
        try:  # the new folder's entry survives a power loss too
            _fsync_dir(root.resolve().parent)
        except OSError:
            pass
        if world == 1:
            return cls._collect_part(root, run, batches, settings, source, resume and not overwrite, None)
        check_same_folder(root)
        error: BaseException | None = None
        try:
            cls._collect_part(root, run, batches, settings, source, resume and not overwrite, rank)
        except Exception as e:  # every rank must reach the barrier, or the others wait for it forever
            error = e
        return collect_barrier(root, error, world)

    @classmethod
    def _collect_part(cls, root: Path, run: "_Run", batches: Iterator[Batch], settings: dict[str, Any],
                      source: dict[str, Any], resume: bool, rank: int | None) -> "ActivationStore":
        """Collect the store at ``root`` (``rank=None``) or one rank's part of it, under that writer's lock."""
        name = rank_manifest_name(rank)
        with _WriteLock(root, rank_lock_name(rank)):
            for leftover in _store_files(root, temporary_only=True, rank=rank):  # from a writer that was killed
                leftover.unlink(missing_ok=True)
            old = None
            if (root / name).exists() and resume:
                old = _read_manifest(root, name)  # a broken manifest raises, suggesting overwrite=True
                _check_same_source(root, old, settings, source)
            elif rank is not None and (root / MANIFEST).exists() and resume:
                _check_same_source(root, _read_manifest(root), settings, source)  # another store is there
            store = cls.__new__(cls)
            store.path, store._memory, store._rank = root, [], rank
            if old is None:
                store.manifest = _fresh_manifest(settings, source)
                if rank is not None:
                    store.manifest.update(rank=rank, world=settings["world"])
                run.execute(store, batches, fresh=True)
                return store
            store.manifest = old
            if old["complete"]:
                first = next(batches)
                if _batch_hash(first) != old["source"]["data"]:
                    raise _mismatch(root, "other data (its first batch differs)")
                return store
            run.execute(store, batches, fresh=False)
            return store

    def _write_manifest(self) -> None:
        if self.path is not None:
            data = json.dumps(self.manifest, indent=1).encode()
            target = self.path / rank_manifest_name(getattr(self, "_rank", None))
            try:
                _atomic_write(target, data)
            except OSError as e:
                raise _write_error(self.path, target, e,
                                   "call collect again with the same arguments to resume") from None

    def _start_over(self) -> None:
        """Make the folder a new, empty store: the fresh manifest first (so that a crash in between leaves a
        valid empty store), then the old shards and temporary files go."""
        if self.path is None:
            return
        self._write_manifest()
        rank = getattr(self, "_rank", None)
        stale = _store_files(self.path, temporary_only=False, rank=rank)
        if rank == 0:  # the merged manifest and a single-process store's shards, ranks of a larger world
            world = int(self.manifest["world"])
            stale += [self.path / MANIFEST, *_store_files(self.path, temporary_only=False)]
            stale += [f for f in self.path.glob("*-r*.*") if (_rank_of(f.name) or 0) >= world]
        for old in stale:
            if old.name.endswith(".lock"):
                continue
            try:
                old.unlink(missing_ok=True)
            except OSError as e:
                raise StoreError(f"activation store {self.path}: cannot delete the old {old.name} "
                                 f"({e.strerror or e}); fix the folder's permissions") from None

    def _write_shard(self, pending: list[tuple[ActivationCache, torch.Tensor | None, int, str]],
                     start: int, end: int, dtype: torch.dtype | None) -> None:
        cache = ActivationCache.cat([c for c, *_ in pending])
        first_example = self.manifest["shards"][-1]["examples"][1] if self.manifest["shards"] else 0
        n = sum(size for _, _, size, _ in pending)
        tensors = {}
        for name in cache:
            axes = list(cache.axes(name))
            t = cache[name].detach().cpu()
            b = axes.index("batch")
            if b:  # rows are examples: the batch axis goes first
                t, axes = t.movedim(b, 0), ["batch", *axes[:b], *axes[b + 1:]]
            if t.shape[0] != n:
                raise InputError(f"site '{name}': its batch axis has {t.shape[0]} entries for {n} inputs "
                                 f"(batches {start}..{end - 1}); only sites with one entry per input can be stored")
            t = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
            tensors[name] = t
            info = {"axes": axes, "dtype": str(t.dtype), "shape": list(t.shape[1:]),
                    "pos_names": dict(getattr(cache.site(name), "pos_names", None) or {})}
            known = self.manifest["sites"].setdefault(name, info)
            if known["shape"] != info["shape"] or known["axes"] != info["axes"]:
                raise InputError(f"site '{name}': batches {start}..{end - 1} give activations of shape "
                                 f"{info['shape']} (axes {axes}) per example, earlier ones {known['shape']}; a store "
                                 f"needs one shape per site: pool it (pool='mean') or give inputs of one size")
        labelled = [lab is not None for _, lab, _, _ in pending]
        if any(labelled):
            tensors[LABELS] = torch.cat([lab for _, lab, _, _ in pending]).contiguous()
        h = hashlib.blake2b(digest_size=16)
        for *_, bh in pending:
            h.update(bh.encode())
        entry: dict[str, Any] = {"file": shard_name(len(self.manifest["shards"]), getattr(self, "_rank", None)),
                                 "batches": [start, end],
                                 "examples": [first_example, first_example + n],
                                 "rows": {k: int(t.shape[0]) for k, t in tensors.items()}, "inputs": h.hexdigest()}
        if self.path is None:
            self._memory.append(tensors)
        else:
            target = self.path / entry["file"]
            blob = save_bytes(tensors)
            try:
                _atomic_write(target, blob)
            except OSError as e:
                raise _write_error(self.path, target, e, "call collect again with the same arguments to resume "
                                   f"from batch {start}") from None
            entry["sha256"] = hashlib.sha256(blob).hexdigest()
        self.manifest["shards"].append(entry)
        self._write_manifest()

    # ------------------------------------------------------------------ reading
    @property
    def site_names(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def num_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def num_examples(self) -> int:
        """Examples (inputs) stored: the first axis of every stored tensor."""
        return self.manifest["shards"][-1]["examples"][1] if self.manifest["shards"] else 0

    def _check_site(self, name: str) -> None:
        if name not in self.manifest["sites"]:
            where = str(self.path) if self.path is not None else "in memory"
            raise SiteError(f"site '{name}' is not in the activation store ({where}); stored: {self.site_names}")

    def axes(self, name: str) -> tuple[str, ...]:
        self._check_site(name)
        return tuple(self.manifest["sites"][name]["axes"])

    def num_rows(self, name: str) -> int:
        """Rows ``features(name)`` returns (examples × unpooled positions)."""
        self._check_site(name)
        info = self.manifest["sites"][name]
        axes, shape = info["axes"], info["shape"]
        per_example = math.prod(s for a, s in zip(axes[1:], shape) if a == "pos")
        return self.num_examples * per_example

    def _shard_file(self, k: int) -> Path:
        entry = self.manifest["shards"][k]
        f = self.path / entry["file"]
        fix = "collect the store again (ActivationStore.collect(..., overwrite=True))"
        if self._rewritten(k):
            fix = ("the store was collected again since this object opened it: open it again "
                   "(ActivationStore(path)) to read the new activations")
        if not f.exists():
            raise CorruptShardError(f"activation store {self.path}: shard {f} listed in the manifest is missing; "
                                    f"{fix}")
        try:
            digest = _sha256(f)
        except OSError as e:
            raise StoreError(f"activation store {self.path}: cannot read shard {f} ({e.strerror or e}); check the "
                             f"file's permissions") from None
        if digest != entry.get("sha256"):
            raise CorruptShardError(f"activation store {self.path}: shard {f} is corrupt: its SHA-256 does not match "
                                    f"the manifest; {fix}")
        return f

    def _rewritten(self, k: int) -> bool:
        """Whether the manifest on disk no longer lists shard ``k`` as this object does (a new collection)."""
        try:
            now = json.loads((self.path / MANIFEST).read_text())
            return now["shards"][k].get("sha256") != self.manifest["shards"][k].get("sha256")
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            return True

    def load_shard(self, k: int) -> dict[str, torch.Tensor]:
        """All tensors of shard ``k`` (checksum verified)."""
        if self.path is None:
            return self._memory[k]
        f = self._shard_file(k)
        try:
            return load_file(str(f))
        except Exception as e:  # checksum matched, so only a manifest / file mismatch gets here
            raise CorruptShardError(f"activation store {self.path}: shard {f} cannot be read ({e}); collect the "
                                    f"store again with overwrite=True") from None

    def __getitem__(self, name: str) -> torch.Tensor:
        """The stored activations of a site, all shards concatenated: ``[N, ...]`` with ``axes(name)``."""
        self._check_site(name)
        parts = [self.load_shard(k)[name] for k in range(self.num_shards)]
        if not parts:
            info = self.manifest["sites"][name]
            return torch.empty((0, *info["shape"]))
        return torch.cat(parts)

    def labels(self) -> torch.Tensor:
        """The labels stored with the inputs (``[N]``; data given as ``(x, y)`` or with ``labels=``)."""
        if not self.manifest["shards"] or LABELS not in self.manifest["shards"][0]["rows"]:
            where = str(self.path) if self.path is not None else "in memory"
            raise SiteError(f"the activation store ({where}) has no labels; collect it again with data as "
                            f"(inputs, labels) pairs or with labels=")
        return torch.cat([self.load_shard(k)[LABELS] for k in range(self.num_shards)])

    def features(self, name: str, pool: PoolSpec = None) -> torch.Tensor:
        """``[N, d]`` feature rows, as :meth:`ActivationCache.features`."""
        t = self[name].float()
        axes = self.axes(name)
        if pool is not None:
            t, axes = pool_tensor(t, axes, pool, self._pos_names(name))
        return to_rows(t, axes)

    def _pos_names(self, name: str) -> dict[str, int]:
        return self.manifest["sites"][name].get("pos_names", {})

    def to_cache(self, names: Sequence[str] | None = None) -> ActivationCache:
        """Load sites into an in-memory :class:`ActivationCache`."""
        names = list(names or self.site_names)
        return ActivationCache({n: self[n] for n in names}, {n: self.axes(n) for n in names})

    def array(self, name: str) -> ShardedArray:
        """The raw activations of a site as memory-mapped arrays over all shards (disk stores only)."""
        self._check_site(name)
        if self.path is None:
            return ShardedArray([self._memory[k][name].numpy() for k in range(self.num_shards)])
        return ShardedArray([_memmap_safetensors(self._shard_file(k), name) for k in range(self.num_shards)])

    def iter_batches(self, sites: Sequence[str] | str, batch_size: int = 256, shuffle: bool = True,
                     seed: int = 0, pool: PoolSpec = None, buffer_shards: int = 4,
                     labels: bool = False, rank: int | None = None,
                     world_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Mini-batches ``{site: [b, d]}`` (and ``"labels"``) streamed shard by shard.

        With ``shuffle``, shards come in a random order and rows are shuffled within a buffer of
        ``buffer_shards`` shards, so memory stays bounded by the buffer whatever the store's size. Sites
        must give the same number of rows per example (pool them alike). ``labels=True`` adds the stored
        labels (pooled sites only: one row per example). With ``rank`` and ``world_size`` (e.g. from
        :func:`interp_core.distributed.current_rank`), this rank streams only its part of the shard order
        (positions ``rank, rank + world_size, ...`` of the same seeded permutation on every rank): one epoch
        over all ranks covers every row exactly once.
        """
        names = [sites] if isinstance(sites, str) else list(sites)
        for n in names:
            self._check_site(n)
        if (rank is None) != (world_size is None) or (world_size is not None and not (
                isinstance(world_size, int) and isinstance(rank, int) and 0 <= rank < world_size)):
            raise InputError(f"rank, world_size: give both (0 <= rank < world_size) or neither, got {rank!r}, "
                             f"{world_size!r}")
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(self.num_shards, generator=g).tolist() if shuffle else range(self.num_shards)
        order = list(order)
        if world_size is not None:
            order = order[rank::world_size]
        for b in range(0, len(order), buffer_shards):
            shards = [self.load_shard(k) for k in order[b:b + buffer_shards]]
            rows = {}
            for n in names:
                axes = self.axes(n)
                parts = []
                for sh in shards:
                    t, a = sh[n].float(), axes
                    if pool is not None:
                        t, a = pool_tensor(t, a, pool, self._pos_names(n))
                    parts.append(to_rows(t, a))
                rows[n] = torch.cat(parts)
            if labels:
                rows["labels"] = torch.cat([sh[LABELS] for sh in shards])
            counts = {v.shape[0] for v in rows.values()}
            if len(counts) != 1:
                raise InputError(f"sites {names} give different numbers of rows per example {sorted(counts)}; "
                                 f"pool them alike")
            total = counts.pop()
            idx = torch.randperm(total, generator=g) if shuffle else torch.arange(total)
            for i in range(0, total, batch_size):
                j = idx[i:i + batch_size]
                yield {k: v[j] for k, v in rows.items()}

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "memory"
        return (f"ActivationStore({where}, sites={self.site_names}, shards={self.num_shards}, "
                f"examples={self.num_examples}, complete={self.complete})")


class _Run:
    """One pass of ``collect`` over the data: the model in analysis mode, a background shard writer."""

    def __init__(self, hm: Any, names: list[str], pool: Any, per_shard: int, dtype: torch.dtype | None, train: bool,
                 progress: bool | None, total: int | None, rank: int = 0, world: int = 1, by_rank: bool = False):
        self.hm, self.names, self.pool, self.per_shard, self.dtype = hm, names, pool, per_shard, dtype
        self.train, self.progress, self.total = train, progress, total
        self.rank, self.world, self.by_rank = rank, world, by_rank

    def owns(self, i: int) -> bool:
        """Whether data batch ``i`` is this rank's: global shard ``i // per_shard`` goes to rank
        ``(i // per_shard) % world``."""
        return self.by_rank or (i // self.per_shard) % self.world == self.rank

    def execute(self, store: ActivationStore, batches: Iterator[Batch], fresh: bool) -> None:
        m = store.manifest
        shards = m["shards"]
        done = shards[-1]["batches"][1] if shards else 0
        root = store.path
        bar = progress_bar(total=self.total, initial=0, desc="activation store", unit="example",
                           progress=self.progress)
        pending: list[tuple[ActivationCache, torch.Tensor | None, int, str]] = []
        start, seen = done, 0
        labelled = (LABELS in shards[0]["rows"]) if shards else None
        verify = hashlib.blake2b(digest_size=16)
        k = 0  # the stored shard whose input batches are being re-hashed
        started = not fresh
        # Shards are written by one background thread while the model computes the next ones; at most one
        # shard waits in memory, and the manifest only ever lists shards that are fully on disk.
        try:
            with self.hm.analysis(train=self.train), ThreadPoolExecutor(max_workers=1) as writer:
                in_flight: Future | None = None
                for i, batch in enumerate(batches):
                    seen = i + 1
                    own = self.owns(i)
                    bh = _batch_hash(batch) if own or i == 0 else ""  # another rank hashes (and checks) it
                    if labelled is not None and (batch.labels is not None) != labelled:
                        raise InputError(f"data batch {i} {'has' if batch.labels is not None else 'has no'} labels "
                                         f"unlike the batches before it; give labels for all inputs or none")
                    labelled = batch.labels is not None
                    if i == 0 and m["source"]["data"] is not None and bh != m["source"]["data"]:
                        raise _mismatch(root, "other data (its first batch differs)")
                    if not own:  # another rank's batch (distributed collection)
                        if i == 0:
                            m["source"]["data"] = bh
                        bar.update(batch.size)
                        continue
                    if i < done:  # already stored: check that it is the same batch
                        verify.update(bh.encode())
                        if i + 1 == shards[k]["batches"][1]:
                            if verify.hexdigest() != shards[k].get("inputs"):
                                raise _mismatch(root, f"other data (batches {shards[k]['batches'][0]}..{i} differ "
                                                      f"from those stored in {shards[k]['file']})")
                            verify, k = hashlib.blake2b(digest_size=16), k + 1
                        bar.update(batch.size)
                        continue
                    _, cache = self.hm.run_with_cache(batch.inputs, sites=self.names, pool=self.pool)
                    if i == 0:
                        m["source"]["data"] = bh
                    if not started:  # the first forward worked: only now is an old store at the path replaced
                        store._start_over()
                        started = True
                    if not pending:
                        start = i
                    pending.append((cache, batch.labels, batch.size, bh))
                    bar.update(batch.size)
                    if (i + 1) % self.per_shard == 0:
                        if in_flight is not None:
                            in_flight.result()  # raises the writer's error, if any
                        in_flight = writer.submit(store._write_shard, pending, start, i + 1, self.dtype)
                        pending, start = [], i + 1
                if seen < done:
                    raise _mismatch(root, f"other data (it has {seen} batches; the store already holds {done})")
                if in_flight is not None:
                    in_flight.result()
                if pending:
                    store._write_shard(pending, start, seen, self.dtype)
        finally:
            bar.close()
        if not started:  # a rank with no shard of its own: its stale files still go
            store._start_over()
        m["complete"] = True
        m["totals"] = {"shards": len(shards), "batches": seen,
                       "examples": shards[-1]["examples"][1] if shards else 0}
        store._write_manifest()


def _rank_of(file_name: str) -> int | None:
    """The rank in a per-rank file name (``shard-r3-00001.safetensors``, ``manifest-r3.json``), or ``None``."""
    stem = file_name.split("-r", 1)
    if len(stem) != 2:
        return None
    digits = stem[1].split("-", 1)[0].split(".", 1)[0]
    return int(digits) if digits.isdigit() else None
