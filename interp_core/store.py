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
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import socket
import struct
import time
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
from .boundary import Batch, as_hooked, iter_batches
from .cache import ActivationCache
from .errors import InputError, InputTypeError, SiteError, StoreError

try:  # POSIX; elsewhere the lock falls back to an exclusive-create file with a pid check
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["ActivationStore", "ShardedArray", "CorruptStoreError", "CorruptShardError", "IncompleteStoreError",
           "StoreLockedError", "StoreMismatchError"]

MANIFEST = "manifest.json"
LOCK = "store.lock"
LABELS = "__labels__"
FORMAT_VERSION = 2
_SHARD = "shard_{:05d}.safetensors"
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


class CorruptStoreError(StoreError):
    """A store whose manifest or shards are not what a finished (or cleanly interrupted) collection leaves."""


class CorruptShardError(CorruptStoreError):
    """A shard that is missing or whose bytes do not match the checksum recorded in the manifest."""


class IncompleteStoreError(StoreError):
    """A store whose collection has not finished (interrupted, or still running), opened without
    ``allow_partial=True``."""


class StoreLockedError(StoreError):
    """A store another live process is writing."""


class StoreMismatchError(StoreError, InputError):
    """A store at the path that was collected from another model, other data or other settings."""


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


def _write_error(root: Path, what: Path, e: OSError, resume: str) -> StoreError:
    reason = e.strerror or str(e)
    if e.errno in _DISK_FULL:
        fix = f"the disk is full or a file-size limit was hit; free space (or raise the limit), then {resume}"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"the folder is not writable; fix its permissions (or use another path), then {resume}"
    else:
        fix = resume
    return StoreError(f"activation store {root}: could not write {what.name} ({reason}); {fix}")


# ---------------------------------------------------------------------------------------------- fingerprints
def _hash_into(h: Any, obj: Any, sample: int | None = None) -> None:
    """Feed a model input, label or state-dict value into ``h``: type, dtype, shape and the bytes of every
    tensor, or with ``sample`` the bytes of at most ``sample`` evenly spaced elements of each tensor."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        flat = t.reshape(-1)
        if sample is not None and flat.numel() > sample:  # picked on the tensor's device: only these move
            flat = flat[::-(-flat.numel() // sample)]
        if flat.numel():
            h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        _hash_into(h, torch.from_numpy(np.ascontiguousarray(obj)), sample)
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(str(k).encode())
            _hash_into(h, obj[k], sample)
        h.update(b"}")
    elif isinstance(obj, (tuple, list)):
        h.update(b"(")
        for v in obj:
            _hash_into(h, v, sample)
        h.update(b")")
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(repr(obj).encode())
    else:  # an object we cannot read: its type at least (a repr may hold a memory address)
        h.update(type(obj).__qualname__.encode())


def model_fingerprint(hm: Any) -> dict[str, str]:
    """``{"model_class", "model"}``: the wrapped module's class and a hash of its ``state_dict`` (names,
    dtypes, shapes and bytes of every tensor): two models with the same weights share it, a retrained or
    re-initialised twin does not."""
    module = hm.model
    cls = f"{type(module).__module__}.{type(module).__qualname__}"
    h = hashlib.blake2b(digest_size=16)
    h.update(cls.encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        _hash_into(h, v)
    return {"model_class": cls, "model": h.hexdigest()}


BATCH_HASH_ELEMENTS = 1 << 20


def _batch_hash(batch: Batch) -> str:
    """A fingerprint of one batch: all its labels, and each input tensor's shape, dtype and up to
    ``BATCH_HASH_ELEMENTS`` evenly spaced values (cheap next to the forward, and different for any other
    dataset, order or batching in practice)."""
    h = hashlib.blake2b(digest_size=16)
    _hash_into(h, batch.inputs, sample=BATCH_HASH_ELEMENTS)
    _hash_into(h, batch.labels)
    return h.hexdigest()


def _jsonable(x: Any, argument: str) -> Any:
    try:
        return json.loads(json.dumps(x))
    except (TypeError, ValueError):
        raise InputTypeError(f"{argument}: {x!r} cannot be recorded in the store's manifest; give None, a string, "
                             f"an int, a tuple of ints or a dict of those per site") from None


# ---------------------------------------------------------------------------------------------- manifest
def _manifest_error(root: Path, what: str) -> CorruptStoreError:
    return CorruptStoreError(f"activation store {root}: {MANIFEST} {what}; the store cannot be vouched for: "
                             f"collect it again with ActivationStore.collect(..., overwrite=True)")


def _read_manifest(root: Path) -> dict[str, Any]:
    """The manifest at ``root``, validated (:func:`_validate`)."""
    mf = root / MANIFEST
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "no such folder"
        raise StoreError(f"activation store {root}: {what}; give a store's folder, or create a store with "
                         f"ActivationStore.collect(model, data, sites, path)")
    try:
        text = mf.read_text()
    except FileNotFoundError:
        raise StoreError(f"activation store {root}: no {MANIFEST} (not a store, or its collection never wrote a "
                         f"shard); create one with ActivationStore.collect(model, data, sites, path)") from None
    except OSError as e:
        raise StoreError(f"activation store {root}: cannot read {MANIFEST} ({e.strerror or e}); check the "
                         f"file's permissions") from None
    try:
        m = json.loads(text)
    except json.JSONDecodeError as e:
        raise _manifest_error(root, f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    return _validate(m, root)


def _validate(m: Any, root: Path) -> dict[str, Any]:
    """Check that ``m`` describes one contiguous, consistent run of shards; raise naming the fault."""
    if not isinstance(m, dict) or not {"version", "sites", "shards", "complete"} <= set(m):
        raise _manifest_error(root, "lacks the keys version, sites, shards, complete")
    version = m["version"]
    if version not in (1, FORMAT_VERSION):
        raise StoreError(f"activation store {root}: format version {version!r}, this interp_core reads versions 1 "
                         f"and {FORMAT_VERSION}; upgrade interp_core or collect the store again with overwrite=True")
    sites, shards = m["sites"], m["shards"]
    if not isinstance(sites, dict) or not isinstance(shards, list) or not isinstance(m["complete"], bool):
        raise _manifest_error(root, "has sites, shards or complete of the wrong type")
    for name, info in sites.items():
        if (not isinstance(info, dict) or not isinstance(info.get("axes"), list) or not isinstance(info.get("shape"),
                                                                                                    list)
                or len(info["axes"]) != len(info["shape"]) + 1 or info["axes"][:1] != ["batch"]):
            raise _manifest_error(root, f"describes site '{name}' inconsistently (axes, shape)")
    if shards and not sites:
        raise _manifest_error(root, "lists shards but no sites")
    batch_end = example_end = 0
    labelled = None
    for k, entry in enumerate(shards):
        where = f"shard entry {k}"
        if not isinstance(entry, dict) or not isinstance(entry.get("rows"), dict):
            raise _manifest_error(root, f"has a malformed {where}")
        if entry.get("file") != _SHARD.format(k):
            raise _manifest_error(root, f"{where} names file {entry.get('file')!r}, expected {_SHARD.format(k)!r} "
                                        f"(entries removed or reordered)")
        b = entry.get("batches")
        if not (isinstance(b, list) and len(b) == 2 and b[0] == batch_end and b[1] > b[0]):
            raise _manifest_error(root, f"{where} covers batches {b}, expected a range starting at {batch_end} "
                                        f"(the batch ranges have a gap or overlap: entries removed or reordered)")
        counts = set(entry["rows"].values())
        if len(counts) != 1 or set(entry["rows"]) - {LABELS} != set(sites):
            raise _manifest_error(root, f"{where} has row counts {entry['rows']}: every site (and the labels) "
                                        f"needs one row per example and the sites must be {sorted(sites)}")
        n = counts.pop()
        e = entry.get("examples", [example_end, example_end + n] if version == 1 else None)
        if not (isinstance(e, list) and e == [example_end, example_end + n] and n > 0):
            raise _manifest_error(root, f"{where} covers examples {e} with {n} rows, expected examples "
                                        f"[{example_end}, {example_end + n}] (rows missing or ranges with a gap)")
        has_labels = LABELS in entry["rows"]
        if labelled is not None and has_labels != labelled:
            raise _manifest_error(root, f"{where} {'has' if has_labels else 'lacks'} labels, unlike shard 0")
        labelled = has_labels
        entry["examples"] = e
        batch_end, example_end = b[1], e[1]
    if version >= 2 and m["complete"]:
        totals = m.get("totals")
        expected = {"shards": len(shards), "batches": batch_end, "examples": example_end}
        if totals != expected:
            raise _manifest_error(root, f"records totals {totals} but its shard entries add up to {expected} "
                                        f"(shard entries removed)")
    return m


def _lock_holder(root: Path) -> dict[str, Any] | None:
    """Who holds the write lock of the store at ``root`` (``{"pid", "host", "since"}``), or ``None``."""
    lock = root / LOCK
    if not lock.exists():
        return None
    if fcntl is None:  # pragma: no cover - Windows
        info = _read_lock_info(lock)
        return info if info and _pid_alive(info.get("pid")) else None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_lock_info(lock) or {"pid": None}
    finally:
        os.close(fd)
    return None


def _read_lock_info(lock: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(lock.read_text() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_text(info: dict[str, Any] | None) -> str:
    if not info or info.get("pid") is None:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"])) if "since" in info else "?"
    return f"process {info['pid']} on {info.get('host', '?')} (since {since})"


class _WriteLock:
    """An exclusive lock on ``root/store.lock`` for one writer, with the owner's pid, host and start time in
    the file. It is an ``flock``, which the kernel drops when its process dies, so the lock file of a killed
    writer is simply taken over."""

    def __init__(self, root: Path):
        self.root = root
        self.file = root / LOCK
        self.fd: int | None = None

    def _refuse(self, info: dict[str, Any] | None) -> StoreLockedError:
        return StoreLockedError(
            f"activation store {self.root} is being written by {_holder_text(info)} (lock file {self.file}); "
            f"wait until it finishes, or stop it and call collect again to resume; if no such process runs, "
            f"delete {self.file}")

    def __enter__(self) -> "_WriteLock":
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        for _ in range(100):
            try:
                if fcntl is None:  # pragma: no cover - Windows
                    self._enter_exclusive_create(me)
                    return self
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                if isinstance(e, StoreError):
                    raise
                raise _write_error(self.root, self.file, e, "call collect again") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(_read_lock_info(self.file)) from None
            except OSError as e:  # a file system without locks (some network mounts)
                os.close(fd)
                raise StoreError(f"activation store {self.root}: cannot lock {self.file} ({e.strerror or e}); "
                                 f"collect on a local disk, then move the finished store") from None
            # the previous owner unlinks the file on release: make sure we locked the file at the path
            try:
                same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, me)
            self.fd = fd
            return self
        raise self._refuse(None)

    def _enter_exclusive_create(self, me: bytes) -> None:  # pragma: no cover - Windows
        try:
            fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = _read_lock_info(self.file)
            if info is not None and _pid_alive(info.get("pid")):
                raise self._refuse(info) from None
            os.unlink(self.file)  # the lock of a dead process
            fd = os.open(self.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, me)
        self.fd = fd

    def __exit__(self, *exc: Any) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.file)  # while still holding the lock (see __enter__)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


# ---------------------------------------------------------------------------------------------- reading arrays
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


def _num_examples(data: Any) -> int | None:
    """How many examples ``data`` holds, where that is known without iterating it (for the progress bar)."""
    if isinstance(data, (torch.Tensor, np.ndarray)) and data.ndim:
        return int(data.shape[0])
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], (torch.Tensor, np.ndarray)):
        return int(data[0].shape[0]) if data[0].ndim else None
    if isinstance(data, torch.utils.data.DataLoader):
        return None if data.drop_last else _num_examples(data.dataset)
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        return len(data)  # type: ignore[arg-type]
    return None


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
            holder = _lock_holder(self.path)
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
                train: bool = False) -> "ActivationStore":
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

        Returns:
            The store, complete. A complete store already at ``path`` from the same model, data (first
            batch) and settings is returned without running the model.
        """
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
        source = {**model_fingerprint(hm), "data": None}
        batches = iter(iter_batches(data, labels, model=hm, batch_size=batch_size, sites=names))
        run = _Run(hm, names, pool, batches_per_shard, dtype, train, progress, _num_examples(data))

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
        with _WriteLock(root):
            for leftover in _store_files(root, temporary_only=True):  # from a writer that was killed
                leftover.unlink(missing_ok=True)
            old = None
            if (root / MANIFEST).exists() and resume and not overwrite:
                old = _read_manifest(root)  # a broken manifest raises, suggesting overwrite=True
                _check_same_source(root, old, settings, source)
            store = cls.__new__(cls)
            store.path, store._memory = root, []
            if old is None:
                store.manifest = _fresh_manifest(settings, source)
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
            try:
                _atomic_write(self.path / MANIFEST, data)
            except OSError as e:
                raise _write_error(self.path, self.path / MANIFEST, e,
                                   "call collect again with the same arguments to resume") from None

    def _start_over(self) -> None:
        """Make the folder a new, empty store: the fresh manifest first (so that a crash in between leaves a
        valid empty store), then the old shards and temporary files go."""
        if self.path is None:
            return
        self._write_manifest()
        for old in _store_files(self.path, temporary_only=False):
            try:
                old.unlink()
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
        entry: dict[str, Any] = {"file": _SHARD.format(len(self.manifest["shards"])), "batches": [start, end],
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
                f"examples={self.num_examples}, complete={self.complete})")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _store_files(root: Path, temporary_only: bool) -> list[Path]:
    """The shard files (or only the temporary files) a store's writer leaves in ``root``; nothing else there."""
    tmp = [*root.glob("shard_*.safetensors.tmp"), *root.glob(MANIFEST + ".tmp")]
    return tmp if temporary_only else [*root.glob("shard_*.safetensors"), *tmp]


def _fresh_manifest(settings: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    return {"version": FORMAT_VERSION, "source": dict(source), "settings": settings, "sites": {}, "shards": [],
            "complete": False}


def _mismatch(root: Path, what: str) -> StoreMismatchError:
    return StoreMismatchError(
        f"activation store {root} was collected from {what} than the ones given; a store holds the activations "
        f"of one model on one dataset: use another path, pass overwrite=True to replace it, or, to resume or reuse "
        f"it, call collect with the model, data (in the same order) and settings it was collected with")


def _check_same_source(root: Path, old: dict[str, Any], settings: dict[str, Any], source: dict[str, Any]) -> None:
    """Refuse to resume or reuse a store collected from another model or with other settings."""
    if old["version"] < FORMAT_VERSION or "source" not in old:
        raise StoreMismatchError(f"activation store {root} was made by an older interp_core that did not record "
                                 f"which model and data it came from, so it cannot be resumed or reused; pass "
                                 f"overwrite=True to collect it again")
    was = old["source"]
    if (was.get("model_class"), was.get("model")) != (source["model_class"], source["model"]):
        same_class = was.get("model_class") == source["model_class"]
        raise _mismatch(root, f"another model ({was.get('model_class')}, weights {str(was.get('model'))[:12]}, "
                              f"vs {'the same class with other weights' if same_class else source['model_class']}, "
                              f"weights {source['model'][:12]})")
    if old.get("settings") != settings:
        diff = {k: (old.get("settings", {}).get(k), v) for k, v in settings.items()
                if old.get("settings", {}).get(k) != v}
        detail = "; ".join(f"{k}={a!r} (given {b!r})" for k, (a, b) in diff.items())
        raise _mismatch(root, f"other settings ({detail})")


class _Run:
    """One pass of ``collect`` over the data: the model in analysis mode, a background shard writer."""

    def __init__(self, hm: Any, names: list[str], pool: Any, per_shard: int, dtype: torch.dtype | None, train: bool,
                 progress: bool | None, total: int | None):
        self.hm, self.names, self.pool, self.per_shard, self.dtype = hm, names, pool, per_shard, dtype
        self.train, self.progress, self.total = train, progress, total

    def execute(self, store: ActivationStore, batches: Iterator[Batch], fresh: bool) -> None:
        m = store.manifest
        shards = m["shards"]
        done = shards[-1]["batches"][1] if shards else 0
        root = store.path
        bar = tqdm(total=self.total, initial=0, desc="activation store", unit="example",
                   disable=None if self.progress is None else not self.progress)
        pending: list[tuple[ActivationCache, torch.Tensor | None, int, str]] = []
        start, seen = done, 0
        labelled = (LABELS in shards[0]["rows"]) if shards else None
        verify = hashlib.blake2b(digest_size=16)
        k = 0  # the stored shard whose input batches are being re-hashed
        # Shards are written by one background thread while the model computes the next ones; at most one
        # shard waits in memory, and the manifest only ever lists shards that are fully on disk.
        try:
            with self.hm.analysis(train=self.train), ThreadPoolExecutor(max_workers=1) as writer:
                in_flight: Future | None = None
                for i, batch in enumerate(batches):
                    seen = i + 1
                    bh = _batch_hash(batch)
                    if labelled is not None and (batch.labels is not None) != labelled:
                        raise InputError(f"data batch {i} {'has' if batch.labels is not None else 'has no'} labels "
                                         f"unlike the batches before it; give labels for all inputs or none")
                    labelled = batch.labels is not None
                    if i == 0 and m["source"]["data"] is not None and bh != m["source"]["data"]:
                        raise _mismatch(root, "other data (its first batch differs)")
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
                        if fresh:  # the first forward worked: only now is an old store at the path replaced
                            store._start_over()
                    pending.append((cache, batch.labels, batch.size, bh))
                    bar.update(batch.size)
                    if len(pending) == self.per_shard:
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
        m["complete"] = True
        m["totals"] = {"shards": len(shards), "batches": shards[-1]["batches"][1],
                       "examples": shards[-1]["examples"][1]}
        store._write_manifest()
