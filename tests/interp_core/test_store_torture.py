"""ActivationStore torture: a writer killed at every write / fsync / rename window, concurrent writers, a full
disk (a small file-size limit). After each, the store reads as a prefix of the reference rows or refuses to
read, and ``collect`` with the same arguments completes it to exactly the reference: 0 rows lost or mixed.

Writers run in forked children so that a kill (``os._exit``, no ``finally`` blocks, the ``flock`` dropped by
the kernel) is as abrupt as ``SIGKILL`` at that point, at a few milliseconds per run.
"""

import errno
import json
import os
import resource
import signal
import time

import pytest
import torch

from interp_core import ActivationStore, HookedModel
from interp_core import store as store_mod
from interp_core.errors import StoreError
from interp_core.store import IncompleteStoreError, StoreLockedError, StoreMismatchError

from ..conftest import make_cnn

SITES = ["stem", "block"]
POOL = {"stem": None, "block": "mean"}
FS_OPS = ("_write_file", "_fsync", "_rename", "_fsync_dir")


def batches(n=6, seed=0, sizes=None):
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or [3] * n
    return [(torch.randn(s, 3, 6, 6, generator=g), torch.randint(0, 4, (s,), generator=g)) for s in sizes]


_MODEL = []


def collect(path, data, **kw):
    if not _MODEL:  # one traced model, shared by the forked writers
        _MODEL.append(HookedModel(make_cnn()))
    kw = {"pool": POOL, "batches_per_shard": 2, "progress": False} | kw
    return ActivationStore.collect(_MODEL[0], data, SITES, path, **kw)


def reference(tmp_path, data, name="reference"):
    ref = collect(tmp_path / name, data)
    return {s: ref[s] for s in SITES} | {"labels": ref.labels()}


def in_child(fn, timeout=60.0):
    """Run ``fn()`` in a forked child; its exit code (``fn``'s return value, 1 on an exception)."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            code = int(fn() or 0)
        except BaseException:  # noqa: BLE001 - reported through the exit code
            code = 1
        finally:
            os._exit(code)
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("child writer hung")


def count_ops(monkeypatch, tmp_path, data):
    """The file-system operations one complete collection performs, in order."""
    ops = []
    for name in FS_OPS:
        real = getattr(store_mod, name)
        monkeypatch.setattr(store_mod, name, lambda *a, _real=real, _name=name: (ops.append(_name), _real(*a))[1])
    collect(tmp_path / "count", data)
    monkeypatch.undo()
    return ops


def die_at(op_index, window):
    """Patch the store's file-system steps so that the process dies at step ``op_index``: ``before`` it,
    ``after`` it, or (``torn``, writes only) after writing half the bytes."""
    counter = {"n": 0}
    for name in FS_OPS:
        real = getattr(store_mod, name)

        def step(*args, _real=real, _name=name):
            k = counter["n"]
            counter["n"] += 1
            if k == op_index and window == "before":
                os._exit(9)
            if k == op_index and window == "torn" and _name == "_write_file":
                path, data = args
                with open(path, "wb") as f:
                    f.write(data[:len(data) // 2])
                os._exit(9)
            out = _real(*args)
            if k == op_index:
                os._exit(9)
            return out

        setattr(store_mod, name, step)


def check_after_crash(path, data, ref):
    """The crashed store reads as a prefix of the reference (or not at all), then resumes to the reference."""
    lost_or_mixed = 0
    try:
        complete = ActivationStore(path)
        assert complete.complete
    except IncompleteStoreError as e:
        assert str(path) in str(e) and "allow_partial=True" in str(e)
    except StoreError as e:  # killed before the first manifest: no store at all yet
        assert "no manifest.json" in str(e) or "no such folder" in str(e)
        assert not list(path.glob("shard_*.safetensors")) or not (path / "manifest.json").exists()
    if (path / "manifest.json").exists():
        part = ActivationStore(path, allow_partial=True)
        n = part.num_examples
        for s in SITES:
            got = part[s] if part.num_shards else torch.empty(0)
            assert got.shape[0] == n
            lost_or_mixed += int((got != ref[s][:n]).reshape(n, -1).any(1).sum()) if n else 0
    resumed = collect(path, data)
    assert resumed.complete
    for s in [*SITES, "labels"]:
        got = resumed.labels() if s == "labels" else resumed[s]
        assert got.shape == ref[s].shape
        lost_or_mixed += int((got != ref[s]).reshape(len(got), -1).any(1).sum())
    assert torch.equal(ActivationStore(path)["stem"], ref["stem"])
    assert not list(path.glob("*.tmp")) and not (path / "store.lock").exists()
    return lost_or_mixed


def run_kill_windows(monkeypatch, tmp_path, data, windows):
    ref = reference(tmp_path, data)
    ops = count_ops(monkeypatch, tmp_path, data)
    # the folder is fsync-ed after it is made and after every rename
    assert ops[0] == "_fsync_dir" and ops.count("_rename") == ops.count("_fsync_dir") - 1 == ops.count("_write_file")
    runs = 0
    # a kill only ends the process: the disk after step k is the disk before step k + 1, so "after" is only
    # distinct for the last step (a complete store whose writer died holding the lock)
    cases = [(k, w) for k, name in enumerate(ops) for w in windows if w != "torn" or name == "_write_file"]
    for k, window in [*cases, (len(ops) - 1, "after")]:
        name = ops[k]
        path = tmp_path / f"kill_{k}_{window}"

        def child(k=k, window=window, path=path):
            die_at(k, window)
            collect(path, data)
            return 0

        assert in_child(child) == 9, f"the writer was not killed at step {k} ({name}, {window})"
        assert check_after_crash(path, data, ref) == 0, f"rows lost or mixed after a kill at step {k}"
        runs += 1
    return runs


def test_kill_before_every_step_quick(monkeypatch, tmp_path):
    data = batches(n=4)  # 2 shards: 25 steps
    assert run_kill_windows(monkeypatch, tmp_path, data, windows=("before",)) == 26


@pytest.mark.slow
def test_kill_at_every_step_torn_writes_and_uneven_batches(monkeypatch, tmp_path):
    data = batches(sizes=[3, 1, 4, 1, 5, 9, 2])  # 4 shards, the last one short: 41 steps
    assert run_kill_windows(monkeypatch, tmp_path, data, windows=("before", "torn")) == 52


def slow(data, delay):
    for b in data:
        time.sleep(delay)
        yield b


def test_concurrent_writers_never_mix(tmp_path):
    """Two processes collect different data into one folder: one wins, the other is refused (locked, or the
    folder already holds the other data); the store is exactly one of the two datasets."""
    a, b = batches(n=6, seed=1), batches(n=6, seed=2)
    refs = [reference(tmp_path, a, "ra"), reference(tmp_path, b, "rb")]
    path = tmp_path / "shared"
    results = tmp_path / "results"
    results.mkdir()

    def writer(data, tag):
        def run():
            try:
                collect(path, slow(data, 0.02))
                outcome = "ok"
            except StoreLockedError as e:
                outcome = "locked" if str(path) in str(e) and "process" in str(e) else f"bad message {e}"
            except StoreMismatchError as e:
                outcome = "mismatch" if "overwrite=True" in str(e) else f"bad message {e}"
            (results / tag).write_text(outcome)
            return 0
        return run

    pids = []
    for data, tag in ((a, "a"), (b, "b")):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = writer(data, tag)()
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    outcomes = {t: (results / t).read_text() for t in "ab"}
    assert sorted(outcomes.values()) in (["locked", "ok"], ["mismatch", "ok"]), outcomes
    winner = refs[0] if outcomes["a"] == "ok" else refs[1]
    store = ActivationStore(path)
    for s in SITES:
        assert torch.equal(store[s], winner[s])
    assert torch.equal(store.labels(), winner["labels"])


def test_full_disk_by_file_size_limit_names_the_store_then_resumes(tmp_path):
    data = batches(sizes=[2, 2, 2, 2, 12, 12])  # the third shard is 6x the first two
    ref = reference(tmp_path, data)
    first_shard = (tmp_path / "reference" / "shard_00000.safetensors").stat().st_size
    path = tmp_path / "full"
    message = tmp_path / "message"

    def child():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        limit = 3 * first_shard
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        try:
            collect(path, data)
        except StoreError as e:
            message.write_text(str(e))
            return 0
        return 2

    assert in_child(child) == 0
    text = message.read_text()
    assert str(path) in text and "shard_00002" in text and "disk is full" in text and "resume" in text
    partial = ActivationStore(path, allow_partial=True)
    assert partial.num_shards == 2 and partial.num_examples == 8
    assert check_after_crash(path, data, ref) == 0


def test_enospc_from_the_writer_is_a_store_error(monkeypatch, tmp_path):
    data = batches(n=6)
    ref = reference(tmp_path, data)
    real, calls = store_mod._write_file, {"n": 0}

    def full(path, blob):
        calls["n"] += 1
        if path.name.startswith("shard_00001"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, blob)

    monkeypatch.setattr(store_mod, "_write_file", full)
    path = tmp_path / "s"
    with pytest.raises(StoreError, match="disk is full") as info:
        collect(path, data)
    assert str(path) in str(info.value) and "shard_00001" in str(info.value)
    assert not isinstance(info.value, StoreMismatchError)
    assert json.loads((path / "manifest.json").read_text())["complete"] is False
    monkeypatch.undo()
    assert check_after_crash(path, data, ref) == 0
