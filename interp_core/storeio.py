"""The file-level half of :mod:`interp_core.store`: manifest validation, fingerprints, write locks and
memory-mapped reading; :mod:`interp_core.store` keeps the durable write steps and ``ActivationStore``.

Names of a store's files:

- ``manifest.json`` — the one manifest readers open (for a collection under ``torch.distributed``, written
  by rank 0 once every rank finished, listing every rank's shards in global order);
- ``shard_{k:05d}.safetensors`` — shard ``k`` of a single-process collection;
- ``shard-r{rank}-{j:05d}.safetensors`` / ``manifest-r{rank}.json`` / ``store-r{rank}.lock`` — the shards,
  progress file and write lock of one rank of a distributed collection (world ``W``): global shard ``k``
  (batches ``[k * batches_per_shard, (k + 1) * batches_per_shard)``) is written by rank ``k % W`` as its
  ``j = k // W``-th shard.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .boundary import Batch
from .errors import InputError, InputTypeError, StoreError

try:  # POSIX; elsewhere the lock falls back to an exclusive-create file with a pid check
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["ShardedArray", "CorruptStoreError", "CorruptShardError", "IncompleteStoreError",
           "StoreLockedError", "StoreMismatchError"]

MANIFEST = "manifest.json"
LOCK = "store.lock"
LABELS = "__labels__"
FORMAT_VERSION = 2
_SHARD = "shard_{:05d}.safetensors"


def shard_name(k: int, rank: int | None = None) -> str:
    """The file of a single-process store's shard ``k``, or of rank ``rank``'s ``k``-th shard."""
    return _SHARD.format(k) if rank is None else f"shard-r{rank}-{k:05d}.safetensors"


def rank_manifest_name(rank: int | None) -> str:
    """The progress file (a manifest of its own shards) of one rank; ``None``: the store's manifest."""
    return MANIFEST if rank is None else f"manifest-r{rank}.json"


def rank_lock_name(rank: int | None) -> str:
    """The write lock of one rank; ``None``: the store's lock (single-process writers and the final merge)."""
    return LOCK if rank is None else f"store-r{rank}.lock"
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
def _manifest_error(root: Path, name: str, what: str) -> CorruptStoreError:
    return CorruptStoreError(f"activation store {root}: {name} {what}; the store cannot be vouched for: "
                             f"collect it again with ActivationStore.collect(..., overwrite=True)")


def _read_manifest(root: Path, name: str = MANIFEST) -> dict[str, Any]:
    """The manifest ``name`` at ``root``, validated (:func:`_validate`). Without a ``manifest.json`` but with
    the progress files of a distributed collection (interrupted, or not merged yet), the shards the ranks
    finished so far, in global order, as an incomplete manifest (:func:`merge_rank_manifests`)."""
    mf = root / name
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "no such folder"
        raise StoreError(f"activation store {root}: {what}; give a store's folder, or create a store with "
                         f"ActivationStore.collect(model, data, sites, path)")
    try:
        text = mf.read_text()
    except FileNotFoundError:
        ranks = sorted(root.glob("manifest-r*.json"))
        if name == MANIFEST and ranks:
            first = _read_manifest(root, ranks[0].name)
            world = int(first["world"])
            parts = [_read_manifest(root, rank_manifest_name(r)) if (root / rank_manifest_name(r)).exists() else None
                     for r in range(world)]
            return merge_rank_manifests(root, parts, partial=True)
        raise StoreError(f"activation store {root}: no {name} (not a store, or its collection never wrote a "
                         f"shard); create one with ActivationStore.collect(model, data, sites, path)") from None
    except OSError as e:
        raise StoreError(f"activation store {root}: cannot read {name} ({e.strerror or e}); check the "
                         f"file's permissions") from None
    try:
        m = json.loads(text)
    except json.JSONDecodeError as e:
        raise _manifest_error(root, name, f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    return _validate(m, root, name)


def merge_rank_manifests(root: Path, parts: Sequence[dict[str, Any] | None], partial: bool = False) -> dict[str, Any]:
    """One manifest for the shards of every rank of a distributed collection, in global order.

    ``parts[r]`` is rank ``r``'s validated progress file (``None``: not written yet). Global shard ``k`` is
    rank ``k % W``'s shard ``k // W``; its example range is recomputed from the row counts of the shards
    before it. ``partial=False`` (the merge after every rank finished) requires every rank complete, with the
    same source, settings and batch count, and every global shard present; ``partial=True`` gives the
    contiguous prefix of global shards written so far, marked incomplete.
    """
    world = len(parts)
    known = [p for p in parts if p is not None]
    if not known:
        raise StoreError(f"activation store {root}: no rank has written a progress file yet; resume the "
                         f"collection with the same torchrun command")
    ref = known[0]
    for p in known[1:]:
        if p.get("settings") != ref.get("settings") or {k: v for k, v in p["source"].items() if k != "data"} != {
                k: v for k, v in ref["source"].items() if k != "data"}:
            raise StoreMismatchError(f"activation store {root}: the ranks' progress files (manifest-r*.json) record "
                                     f"other models or settings; collect the store again with overwrite=True")
    per_shard = int(ref["settings"]["batches_per_shard"])
    by_rank = ref["settings"].get("partition") == "ranks"
    if not by_rank and len({p["source"].get("data") for p in known}) > 1:
        raise StoreMismatchError(f"activation store {root}: the ranks were given different data (their first batches "
                                 f"differ); with partition='shards' every rank passes the same data in the same "
                                 f"order; for data of each rank's own (rollouts with per-rank seeds) use "
                                 f"partition='ranks'")
    shards: list[dict[str, Any]] = []
    sites: dict[str, Any] = {}
    example = batch = 0
    for k, r, j in _global_order(parts, by_rank):
        p = parts[r]
        entry = dict(p["shards"][j])
        n = next(iter(entry["rows"].values()))
        entry["examples"] = [example, example + n]
        if by_rank:  # each rank counted its own batches from 0
            entry["batches"] = [batch, batch + entry["batches"][1] - entry["batches"][0]]
        example, batch = example + n, entry["batches"][1]
        shards.append(entry)
        for name, info in p["sites"].items():
            if sites.setdefault(name, info) != info:
                raise StoreMismatchError(f"activation store {root}: site '{name}' has shape {info['shape']} on rank "
                                         f"{k % world} and {sites[name]['shape']} on another rank; a store needs one "
                                         f"shape per site: pool it or give inputs of one size")
    complete = len(known) == world and all(p["complete"] for p in known)
    if complete and by_rank:
        expected = sum(len(p["shards"]) for p in known)
        if len(shards) != expected or batch != sum(p["totals"]["batches"] for p in known):
            raise CorruptStoreError(f"activation store {root}: the ranks' progress files do not add up; collect the "
                                    f"store again with overwrite=True")
    elif complete:
        batches = {p["totals"]["batches"] for p in known}
        expected = -(-next(iter(batches)) // per_shard)
        if len(batches) != 1 or len(shards) != expected or sum(len(p["shards"]) for p in known) != expected:
            if not partial:
                raise CorruptStoreError(f"activation store {root}: the ranks saw {sorted(batches)} batches and wrote "
                                        f"{sum(len(p['shards']) for p in known)} shards, expected {expected}; "
                                        f"collect the store again with overwrite=True")
            complete = False
    elif not partial:
        missing = [r for r, p in enumerate(parts) if p is None or not p["complete"]]
        raise IncompleteStoreError(f"activation store {root}: ranks {missing} have not finished; resume the "
                                   f"collection with the same torchrun command")
    source = dict(ref["source"])
    if parts[0] is not None:
        source["data"] = parts[0]["source"].get("data")
    m: dict[str, Any] = {"version": FORMAT_VERSION, "source": source, "settings": ref["settings"], "world": world,
                         "sites": sites, "shards": shards, "complete": complete}
    if complete:
        m["totals"] = {"shards": len(shards), "batches": shards[-1]["batches"][1] if shards else 0,
                       "examples": example}
    return m


def _validate(m: Any, root: Path, mname: str = MANIFEST) -> dict[str, Any]:
    """Check that ``m`` describes one contiguous, consistent run of shards; raise naming the fault."""
    if not isinstance(m, dict) or not {"version", "sites", "shards", "complete"} <= set(m):
        raise _manifest_error(root, mname, "lacks the keys version, sites, shards, complete")
    version = m["version"]
    if version not in (1, FORMAT_VERSION):
        raise StoreError(f"activation store {root}: format version {version!r}, this interp_core reads versions 1 "
                         f"and {FORMAT_VERSION}; upgrade interp_core or collect the store again with overwrite=True")
    sites, shards = m["sites"], m["shards"]
    if not isinstance(sites, dict) or not isinstance(shards, list) or not isinstance(m["complete"], bool):
        raise _manifest_error(root, mname, "has sites, shards or complete of the wrong type")
    for name, info in sites.items():
        if (not isinstance(info, dict) or not isinstance(info.get("axes"), list) or not isinstance(info.get("shape"),
                                                                                                    list)
                or len(info["axes"]) != len(info["shape"]) + 1 or info["axes"][:1] != ["batch"]):
            raise _manifest_error(root, mname, f"describes site '{name}' inconsistently (axes, shape)")
    if shards and not sites:
        raise _manifest_error(root, mname, "lists shards but no sites")
    rank, world = m.get("rank"), m.get("world", 1)
    per_shard = (m.get("settings") or {}).get("batches_per_shard")
    by_rank = (m.get("settings") or {}).get("partition") == "ranks"  # rank-major: each rank's own data in turn
    owner = (0, -1)  # (rank, index) of the previous entry of a merged rank-major store
    if not isinstance(world, int) or world < 1 or (rank is not None and not (
            isinstance(rank, int) and 0 <= rank < world and isinstance(per_shard, int) and per_shard > 0)):
        raise _manifest_error(root, mname, f"has an invalid rank {rank!r} / world {world!r}")
    batch_end = example_end = 0
    labelled = None
    for k, entry in enumerate(shards):
        where = f"shard entry {k}"
        if not isinstance(entry, dict) or not isinstance(entry.get("rows"), dict):
            raise _manifest_error(root, mname, f"has a malformed {where}")
        expected_file = (shard_name(k) if world == 1 else shard_name(k, rank) if rank is not None
                         else shard_name(k // world, k % world))
        if by_rank and rank is None and world > 1:  # the next shard of this rank, or a later rank's first
            later = [shard_name(0, r) for r in range(owner[0] + 1, world)]
            expected_file = shard_name(owner[1] + 1, owner[0])
            if entry.get("file") in later:
                expected_file = entry["file"]
                owner = (later.index(expected_file) + owner[0] + 1, 0)
            else:
                owner = (owner[0], owner[1] + 1)
        if entry.get("file") != expected_file:
            raise _manifest_error(root, mname, f"{where} names file {entry.get('file')!r}, expected {expected_file!r} "
                                        f"(entries removed or reordered)")
        b = entry.get("batches")
        if rank is not None and not by_rank:  # a rank's own shards: global shards rank, rank + world, ...
            batch_end = (k * world + rank) * per_shard
            if isinstance(b, list) and len(b) == 2 and b[1] - batch_end > per_shard:
                raise _manifest_error(root, mname, f"{where} covers batches {b}, more than {per_shard} batches")
        if not (isinstance(b, list) and len(b) == 2 and b[0] == batch_end and b[1] > b[0]):
            raise _manifest_error(root, mname, f"{where} covers batches {b}, expected a range starting at {batch_end} "
                                        f"(the batch ranges have a gap or overlap: entries removed or reordered)")
        counts = set(entry["rows"].values())
        if len(counts) != 1 or set(entry["rows"]) - {LABELS} != set(sites):
            raise _manifest_error(root, mname, f"{where} has row counts {entry['rows']}: every site (and the labels) "
                                        f"needs one row per example and the sites must be {sorted(sites)}")
        n = counts.pop()
        e = entry.get("examples", [example_end, example_end + n] if version == 1 else None)
        if not (isinstance(e, list) and e == [example_end, example_end + n] and n > 0):
            raise _manifest_error(root, mname, f"{where} covers examples {e} with {n} rows, expected examples "
                                        f"[{example_end}, {example_end + n}] (rows missing or ranges with a gap)")
        has_labels = LABELS in entry["rows"]
        if labelled is not None and has_labels != labelled:
            raise _manifest_error(root, mname, f"{where} {'has' if has_labels else 'lacks'} labels, unlike shard 0")
        labelled = has_labels
        entry["examples"] = e
        batch_end, example_end = b[1], e[1]
    if version >= 2 and m["complete"]:
        totals = m.get("totals")
        expected = {"shards": len(shards), "batches": batch_end, "examples": example_end}
        if rank is not None and isinstance(totals, dict):  # a rank knows the global batch count, not others' rows
            b_tot = totals.get("batches")
            expected["batches"] = b_tot if isinstance(b_tot, int) and b_tot >= batch_end else batch_end
        if totals != expected:
            raise _manifest_error(root, mname, f"records totals {totals} but its shard entries add up to {expected} "
                                        f"(shard entries removed)")
    return m


def _lock_holder(root: Path, name: str = LOCK) -> dict[str, Any] | None:
    """Who holds the write lock ``name`` of the store at ``root`` (``{"pid", "host", "since"}``), or ``None``."""
    lock = root / name
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

    def __init__(self, root: Path, name: str = LOCK):
        self.root = root
        self.file = root / name
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _store_files(root: Path, temporary_only: bool, rank: int | None = None) -> list[Path]:
    """The shard files (or only the temporary files) a store's writer (``rank``'s, or the single-process
    writer's) leaves in ``root``; nothing else there."""
    stem = "shard_*" if rank is None else f"shard-r{rank}-*"
    tmp = [*root.glob(stem + ".safetensors.tmp"), *root.glob(rank_manifest_name(rank) + ".tmp")]
    return tmp if temporary_only else [*root.glob(stem + ".safetensors"), *tmp]


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


def _global_order(parts: Sequence[dict[str, Any] | None], by_rank: bool) -> list[tuple[int, int, int]]:
    """``(global index, rank, index in the rank's shards)`` of the shards written so far, in global order, up
    to the first one missing: round-robin by shard (``k -> rank k % W``), or rank after rank (``by_rank``,
    a rank's shards count only once every rank before it finished)."""
    world, out = len(parts), []
    if by_rank:
        for r, p in enumerate(parts):
            if p is None:
                break
            out += [(len(out) + j, r, j) for j in range(len(p["shards"]))]
            if not p["complete"]:
                break
        return out
    while True:
        k = len(out)
        p = parts[k % world]
        if p is None or k // world >= len(p["shards"]):
            return out
        out.append((k, k % world, k // world))
