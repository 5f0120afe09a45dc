"""ActivationStore: activations of a whole dataset (or of rollouts), streamed to disk in shards.

``ActivationStore.collect(hm, data, sites, path)`` runs the model over ``data`` (any iterable of input
batches; a ``(inputs, labels, ...)`` tuple stores the labels too) and writes every ``batches_per_shard``
batches one shard:

- ``path/shard_00000.safetensors`` … — one tensor per site (as cached, pooled or not) plus ``__labels__``;
- ``path/manifest.json`` — sites with axes, dtype and per-row shape, row counts, the batch range and the
  SHA-256 checksum of each shard, the settings and a fingerprint of the data's first batch.

Each shard and each manifest update is written to a temporary file and renamed into place (atomic on
POSIX), and a shard counts as data only once the manifest lists it. An interrupted run (even ``SIGKILL``)
resumes where it stopped: call ``collect`` again with the same arguments; the data must come in the same
order (the fingerprint catches a different first batch). A shard whose checksum does not match raises
:class:`CorruptShardError` naming the file.

Reading shares the interface of :class:`~interp_core.cache.ActivationCache`: ``features(site, pool)``,
``iter_batches(sites, batch_size, shuffle, seed)`` (a shuffled stream holding at most ``buffer_shards``
shards in memory), plus ``array(site)`` — the raw activations as memory-mapped numpy arrays across shards —
and ``labels()``. ``path=None`` gives an in-memory store with the same interface.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from tqdm.auto import tqdm

from .axes import PoolSpec, to_rows
from .axes import pool as pool_tensor
from .cache import ActivationCache
from .errors import InputError, InputTypeError, SiteError, StoreError

MANIFEST = "manifest.json"
LABELS = "__labels__"
FORMAT_VERSION = 1


class CorruptShardError(StoreError):
    """A shard's bytes do not match the checksum recorded in the manifest."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[0], batch[1]
    return batch, None


def _fingerprint(inputs: Any) -> str:
    h = hashlib.sha256()
    tensors = inputs if isinstance(inputs, (tuple, list)) else [inputs]
    for t in tensors:
        if isinstance(t, torch.Tensor):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
              "U8": np.uint8, "I8": np.int8, "BOOL": np.bool_}


class ShardedArray:
    """Rows of several memory-mapped shards seen as one array (indexing by int, slice or index array)."""

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.offsets[-1]), *self.parts[0].shape[1:]) if self.parts else (0,)
        self.dtype = self.parts[0].dtype if self.parts else np.float32

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            i = int(index) % len(self)
            k = int(np.searchsorted(self.offsets, i, side="right") - 1)
            return np.asarray(self.parts[k][i - self.offsets[k]])
        idx = np.arange(len(self))[index]
        k = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        for part in np.unique(k):
            sel = k == part
            out[sel] = self.parts[part][idx[sel] - self.offsets[part]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = np.concatenate(self.parts) if self.parts else np.empty(self.shape, self.dtype)
        return a.astype(dtype) if dtype is not None else a


def _memmap_safetensors(path: Path, key: str) -> np.ndarray:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    info = header[key]
    if info["dtype"] not in _NP_DTYPES:
        raise InputTypeError(f"{path}: dtype {info['dtype']} cannot be memory-mapped by numpy; store float32/16")
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end == start:
        return np.empty(shape, dtype=_NP_DTYPES[info["dtype"]])
    return np.memmap(path, dtype=_NP_DTYPES[info["dtype"]], mode="r", offset=8 + n + start, shape=shape)


class ActivationStore:
    """Sharded activations on disk (``path``) or in memory (``path=None``); see the module docstring.

    ``ActivationStore(path)`` opens an existing store; :meth:`collect` creates or resumes one.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else None
        self._memory: list[dict[str, torch.Tensor]] = []
        if self.path is not None:
            mf = self.path / MANIFEST
            if not mf.exists():
                raise FileNotFoundError(f"no activation store at {self.path} (missing {MANIFEST}); create one "
                                        f"with ActivationStore.collect(model, data, sites, path)")
            self.manifest = json.loads(mf.read_text())
        else:
            self.manifest = {"version": FORMAT_VERSION, "sites": {}, "shards": [], "complete": False}

    # ------------------------------------------------------------------ writing
    @classmethod
    def collect(cls, model: Any, data: Iterable[Any], sites: Sequence[str] | str,
                path: str | os.PathLike | None = None, pool: PoolSpec | Mapping[str, PoolSpec] = None,
                batches_per_shard: int = 8, dtype: torch.dtype | None = None, resume: bool = True,
                progress: bool = True) -> "ActivationStore":
        """Run ``model`` (a :class:`~interp_core.hooked.HookedModel`) over ``data`` and store ``sites``.

        Args:
            data: an iterable of batches in a fixed order; a batch is the model's input, or a tuple
                ``(inputs, labels, ...)`` whose labels are stored as well.
            pool: as in ``run_with_cache``; pooled sites keep only ``[batch, features]``.
            batches_per_shard: batches per shard file (the unit of resumption and of shuffling).
            dtype: store in this dtype (e.g. ``torch.float16`` halves the disk).
            resume: continue an interrupted store at ``path``; ``False`` starts over.
        """
        names = [sites] if isinstance(sites, str) else list(sites)
        settings = {"sites": names, "pool": pool if not isinstance(pool, Mapping) else dict(pool),
                    "batches_per_shard": batches_per_shard, "dtype": str(dtype) if dtype else None}
        store: ActivationStore
        if path is not None and (Path(path) / MANIFEST).exists() and resume:
            store = cls(path)
            if store.manifest.get("settings") != json.loads(json.dumps(settings)):
                raise InputError(f"the store at {path} was made with settings {store.manifest.get('settings')}, "
                                 f"not {settings}; use another path or resume=False to start over")
            if store.manifest["complete"]:
                return store
        else:
            store = cls.__new__(cls)
            store.path = Path(path) if path is not None else None
            store._memory = []
            store.manifest = {"version": FORMAT_VERSION, "settings": settings, "sites": {}, "shards": [],
                              "complete": False, "fingerprint": None}
            if store.path is not None:
                store.path.mkdir(parents=True, exist_ok=True)
                for old in store.path.glob("shard_*.safetensors"):
                    old.unlink()
                store._write_manifest()
        store._run(model, data, names, pool, batches_per_shard, dtype, progress)
        return store

    def _write_manifest(self) -> None:
        if self.path is not None:
            _atomic_write_text(self.path / MANIFEST, json.dumps(self.manifest, indent=1))

    def _run(self, model: Any, data: Iterable[Any], names: list[str], pool: Any, per_shard: int,
             dtype: torch.dtype | None, progress: bool) -> None:
        done = sum(s["batches"][1] - s["batches"][0] for s in self.manifest["shards"])
        total = len(data) if hasattr(data, "__len__") else None
        bar = tqdm(total=total, initial=done, desc="activation store", unit="batch", disable=not progress)
        pending: list[tuple[ActivationCache, torch.Tensor | None]] = []
        start = done
        i = -1
        # Shards are written by one background thread while the model computes the next ones; at most one
        # shard waits in memory, and the manifest only ever lists shards that are fully on disk.
        with ThreadPoolExecutor(max_workers=1) as writer:
            in_flight = None
            for i, batch in enumerate(data):
                inputs, labels = _split_batch(batch)
                if i == 0:
                    fp = _fingerprint(inputs)
                    if self.manifest.get("fingerprint") is None:
                        self.manifest["fingerprint"] = fp
                    elif fp != self.manifest["fingerprint"]:
                        raise InputError("the data's first batch differs from the one this store started with; "
                                         "resuming needs the same data in the same order (or resume=False)")
                if i < done:
                    continue
                _, cache = model.run_with_cache(inputs, sites=names, pool=pool)
                pending.append((cache, labels))
                bar.update(1)
                if len(pending) == per_shard:
                    in_flight = self._flush(writer, in_flight, pending, start, i + 1, dtype)
                    pending, start = [], i + 1
            if pending:
                in_flight = self._flush(writer, in_flight, pending, start, i + 1, dtype)
            if in_flight is not None:
                in_flight.result()
        bar.close()
        self.manifest["complete"] = True
        self._write_manifest()

    def _flush(self, writer: ThreadPoolExecutor, in_flight: Future | None, pending: list, start: int, end: int,
               dtype: torch.dtype | None) -> Future:
        if in_flight is not None:
            in_flight.result()  # raises the writer's error, if any
        return writer.submit(self._write_shard, list(pending), start, end, dtype)

    def _write_shard(self, pending: list, start: int, end: int, dtype: torch.dtype | None) -> None:
        cache = ActivationCache.cat([c for c, _ in pending])
        tensors = {}
        for name in cache:
            t = cache[name].detach().cpu()
            tensors[name] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
            if name not in self.manifest["sites"]:
                self.manifest["sites"][name] = {"axes": list(cache.axes(name)), "dtype": str(tensors[name].dtype),
                                                "shape": list(t.shape[1:]),
                                                "pos_names": dict(getattr(cache.site(name), "pos_names", {}))}
        if all(lab is not None for _, lab in pending):
            tensors[LABELS] = torch.cat([lab.detach().cpu() for _, lab in pending]).contiguous()
        entry = {"batches": [start, end], "rows": {n: int(t.shape[0]) for n, t in tensors.items()}}
        k = len(self.manifest["shards"])
        if self.path is None:
            self._memory.append(tensors)
        else:
            fname = f"shard_{k:05d}.safetensors"
            blob = save_bytes(tensors)
            tmp = self.path / (fname + ".tmp")
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path / fname)
            entry["file"] = fname
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

    def _check_site(self, name: str) -> None:
        if name not in self.manifest["sites"]:
            raise SiteError(f"site '{name}' is not in this store; stored: {self.site_names}")

    def axes(self, name: str) -> tuple[str, ...]:
        self._check_site(name)
        return tuple(self.manifest["sites"][name]["axes"])

    def num_rows(self, name: str) -> int:
        """Rows ``features(name)`` returns (examples × unpooled positions)."""
        self._check_site(name)
        info = self.manifest["sites"][name]
        axes, shape = info["axes"], info["shape"]
        per_example = math.prod(s for a, s in zip(axes[1:], shape) if a == "pos")
        return sum(s["rows"][name] for s in self.manifest["shards"]) * per_example

    def _shard_file(self, k: int) -> Path:
        entry = self.manifest["shards"][k]
        f = self.path / entry["file"]
        if not f.exists():
            raise CorruptShardError(f"shard {f} listed in the manifest is missing")
        if _sha256(f) != entry["sha256"]:
            raise CorruptShardError(f"shard {f} is corrupt: its SHA-256 does not match the manifest; delete "
                                    f"the store and collect it again")
        return f

    def load_shard(self, k: int) -> dict[str, torch.Tensor]:
        """All tensors of shard ``k`` (checksum verified)."""
        if self.path is None:
            return self._memory[k]
        return load_file(str(self._shard_file(k)))

    def __getitem__(self, name: str) -> torch.Tensor:
        """The stored activations of a site, all shards concatenated: ``[N, ...]`` with ``axes(name)``."""
        self._check_site(name)
        return torch.cat([self.load_shard(k)[name] for k in range(self.num_shards)])

    def labels(self) -> torch.Tensor:
        """The labels stored with the inputs (batches given as ``(inputs, labels)``)."""
        if not self.manifest["shards"] or LABELS not in self.manifest["shards"][0]["rows"]:
            raise SiteError("this store has no labels; pass batches as (inputs, labels) to collect them")
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
                     labels: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Mini-batches ``{site: [b, d]}`` (and ``"labels"``) streamed shard by shard.

        With ``shuffle``, shards come in a random order and rows are shuffled within a buffer of
        ``buffer_shards`` shards, so memory stays bounded by the buffer whatever the store's size. Sites
        must give the same number of rows per example (pool them alike). ``labels=True`` adds the stored
        labels (pooled sites only: one row per example).
        """
        names = [sites] if isinstance(sites, str) else list(sites)
        for n in names:
            self._check_site(n)
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(self.num_shards, generator=g).tolist() if shuffle else range(self.num_shards)
        order = list(order)
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
                f"complete={self.complete})")
