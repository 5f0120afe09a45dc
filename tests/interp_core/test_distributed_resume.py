"""A distributed collection with one rank killed mid-run (``os._exit`` in its shard writer: no cleanup, as
``SIGKILL``), then resumed by the same two-rank launch: the store equals the single-process one row for row,
the finished rank runs no forward again and the killed one only the shards it had not written."""

from __future__ import annotations

import json
import os

import pytest
import torch

from interp_core import ActivationStore, HookedModel
from interp_core.store import IncompleteStoreError

from .test_distributed import SITES, batches, collect, errors, launch


def _job(path, tmp, rank, kill_after):
    written = {"n": 0}
    real = ActivationStore._write_shard

    def write_shard(self, *args, **kw):
        real(self, *args, **kw)
        written["n"] += 1
        if rank == 1 and written["n"] == kill_after:
            os._exit(9)  # killed right after its first shard reached the disk and its progress file

    forwards = {"n": 0}
    real_run = HookedModel.run_with_cache

    def run_with_cache(self, *args, **kw):
        forwards["n"] += 1
        return real_run(self, *args, **kw)

    ActivationStore._write_shard, HookedModel.run_with_cache = write_shard, run_with_cache
    try:
        store = collect(path, batches())
        (tmp / f"forwards{rank}.json").write_text(json.dumps({"n": forwards["n"], "complete": store.complete}))
    finally:
        ActivationStore._write_shard, HookedModel.run_with_cache = real, real_run


def test_kill_one_rank_and_resume(tmp_path):
    ref = collect(tmp_path / "ref", batches())
    path = tmp_path / "dist"
    codes = launch(lambda r: _job(path, tmp_path, r, kill_after=1), tmp_path / "run1", timeout=90, pg_timeout=15)
    assert codes[1] == 9 and codes[0] != 0  # rank 0 finished its part, then failed at the barrier
    assert "rank" in errors(tmp_path / "run1") or codes[0] == 1
    with pytest.raises(IncompleteStoreError, match="allow_partial=True"):
        ActivationStore(path)
    part = ActivationStore(path, allow_partial=True)
    # global shards 0 (rank 0) and 1 (rank 1, written before the kill), and rank 0's shard 2: a prefix of 3
    assert part.num_shards == 3 and not part.complete
    for s in SITES:
        assert torch.equal(part[s], ref[s][:part.num_examples])
    for f in tmp_path.glob("run1/forwards*.json"):
        f.unlink()

    codes = launch(lambda r: _job(path, tmp_path, r, kill_after=None), tmp_path / "run2", timeout=90)
    assert codes == [0, 0], errors(tmp_path / "run2")
    store = ActivationStore(path)
    assert store.complete and store.num_shards == ref.num_shards
    for s in SITES:
        assert torch.equal(store[s], ref[s])
    assert torch.equal(store.labels(), ref.labels())
    runs = [json.loads((tmp_path / f"forwards{r}.json").read_text()) for r in range(2)]
    # 9 batches, 2 per shard: rank 0 owns global shards 0, 2, 4 (all written before), rank 1 owns 1 (written)
    # and 3 (batches 6, 7: the only forwards left)
    assert [r["n"] for r in runs] == [0, 2] and all(r["complete"] for r in runs)
    assert not list(path.glob("*.lock")) and not list(path.glob("*.tmp"))
