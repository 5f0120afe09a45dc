"""Scale-out under torch.distributed (``interp_core.distributed``): two gloo processes on CPU against the
single-process results. One launch of two forked ranks (a file rendezvous) does the whole distributed side
(collection, reading, probes, SAEs, CKA) and saves what each rank got; the tests compare it row for row /
weight for weight with one process on the same rows.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from interp_core import ActivationStore, HookedModel
from interp_core import distributed as D
from interp_core.errors import InputError
from interp_core.features import SparseAutoencoder, fit_saes
from interp_core.probes import LinearProbe
from interp_core.similarity.streaming import LinearCKAAccumulator, MinibatchCKA
from interp_core.store import CorruptStoreError, StoreMismatchError

from ..conftest import make_cnn

SITES = ["stem", "block"]
POOL = {"stem": None, "block": "mean"}


def launch(job: Callable[[int], object], tmp: Path, world: int = 2, timeout: float = 60.0,
           pg_timeout: float = 30.0) -> list[int]:
    """Fork ``world`` ranks that run ``job(rank)`` in a gloo group; their exit codes (0: ``job`` returned, 1:
    it raised, the traceback written to ``tmp/rank{r}.err``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    rdzv = tmp / f"rdzv-{time.monotonic_ns()}"
    pids = []
    for rank in range(world):
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                torch.set_num_threads(1)
                dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world,
                                        timeout=timedelta(seconds=pg_timeout))
                job(rank)
                code = 0
            except BaseException:  # noqa: BLE001 - reported through the exit code and the file
                (tmp / f"rank{rank}.err").write_text(traceback.format_exc())
            finally:
                os._exit(code)
        pids.append(pid)
    codes: dict[int, int] = {}
    deadline = time.time() + timeout
    while len(codes) < world and time.time() < deadline:
        for r, pid in enumerate(pids):
            if r not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[r] = os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    for r, pid in enumerate(pids):
        if r not in codes:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            codes[r] = -9
    return [codes[r] for r in range(world)]


def errors(tmp: Path) -> str:
    """The tracebacks the ranks left (for assertion messages)."""
    return "\n".join(p.read_text() for p in sorted(tmp.glob("rank*.err")))


def batches(n=9, seed=0, size=4, last=3):
    """Image batches with labels; the last batch is shorter (uneven shards)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [size] * (n - 1) + [last]
    return [(torch.randn(s, 3, 8, 8, generator=g), torch.randint(0, 3, (s,), generator=g)) for s in sizes]


def collect(path, data, **kw):
    return ActivationStore.collect(HookedModel(make_cnn(), adapter="generic"), data, SITES, path,
                                   **({"pool": POOL, "batches_per_shard": 2, "progress": False} | kw))


def sae(variant):
    kw = {"dead_after": 60} if variant == "topk" else {"resample_every": 7, "dead_after": 30}
    return SparseAutoencoder(n_latents=24, variant=variant, k=3, epochs=2, batch_size=37, seed=3, init_rows=64,
                             lr=1e-2, **kw)


def rows_of(x: torch.Tensor) -> collections.Counter:
    return collections.Counter(tuple(r) for r in x.tolist())


PROBES = {"logistic": dict(kind="logistic", l2=2.0, tol=1e-8, max_iter=2000, dtype="float64"),
          "balanced": dict(kind="logistic", l2=2.0, tol=1e-8, max_iter=2000, dtype="float64", class_weight="balanced"),
          "ridge_classifier": dict(kind="ridge_classifier", l2=2.0)}


def _job(tmp: Path, rank: int) -> None:
    """Everything one rank does in the main launch; results saved to ``tmp/out{rank}.pt``."""
    out: dict = {}
    store = collect(tmp / "dist", batches())
    out["complete"] = store.complete
    # a second call on the finished store reuses it
    out["reused"] = collect(tmp / "dist", batches()).manifest["shards"] == store.manifest["shards"]
    # each rank its own data (rollouts with per-rank seeds)
    own = collect(tmp / "own", batches(n=3 + rank, seed=10 + rank), partition="ranks")
    out["own_examples"] = own.num_examples
    # the same data expected on every rank: refused on all
    try:
        collect(tmp / "mixed", batches(seed=rank))
        out["mixed"] = None
    except StoreMismatchError as e:
        out["mixed"] = str(e)
    try:
        ActivationStore.collect(HookedModel(make_cnn(), adapter="generic"), batches(), SITES, None, pool=POOL,
                                progress=False)
    except InputError as e:
        out["memory"] = str(e)
    try:  # one store, one folder
        collect(tmp / f"private{rank}", batches())
    except InputError as e:
        out["folders"] = str(e)
    # reading: this rank's part of two epochs
    out["epoch"] = [torch.cat([b["block"] for b in D.rank_batches(store, "block", batch_size=5, seed=s)])
                    for s in (0, 1)]
    out["stem_rows"] = sum(len(b["stem"]) for b in D.rank_batches(store, "stem", batch_size=64, seed=0))
    # probes: each rank reads its own shards
    for name, params in PROBES.items():
        p = D.fit_linear_probe(store, "block", probe=LinearProbe(**params))
        out[f"probe_{name}"] = (p.coef_, p.intercept_, p.converged_)
    X = store.features("stem")
    reg = D.fit_linear_probe(X[:, :6].numpy(), y=X[:, 6:].numpy(), probe=LinearProbe(kind="ridge", l2=1.0))
    out["probe_ridge"] = (reg.coef_, reg.intercept_)
    # SAEs: same seed, each rank a slice of every global batch
    for variant in ("topk", "relu"):
        fitted = D.fit_sae(store, {"stem": sae(variant)}, progress=False)["stem"]
        out[f"sae_{variant}"] = {k: v.clone() for k, v in fitted.module_.state_dict().items()}
    # CKA over this rank's rows: stem (folded positions) of two layers vs block pooled
    parts = list(D.rank_batches(store, ["block"], batch_size=6, shuffle=False, labels=False))
    stem = [b for b in D.rank_batches(store, ["stem"], batch_size=10 ** 6, shuffle=False)]
    for debiased in (False, True):
        acc = LinearCKAAccumulator(debiased=debiased)
        for b in parts:
            acc.update([b["block"], b["block"][:, :5]], [b["block"] ** 2])
        out[f"cka_{debiased}"] = D.all_reduce_cka(acc).matrix()
    mb = MinibatchCKA(debiased=True)
    for b in parts:
        if len(b["block"]) >= 4:
            mb.update(b["block"], b["block"] ** 2)
    out["mb_batches"] = [b["block"] for b in parts if len(b["block"]) >= 4]
    out["cka_mb"] = D.all_reduce_cka(mb).value()
    out["stem_n"] = sum(len(b["stem"]) for b in stem)
    torch.save(out, tmp / f"out{rank}.pt")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return collect(tmp_path_factory.mktemp("single") / "ref", batches())


@pytest.fixture(scope="module")
def ran(tmp_path_factory, reference):
    # the reference ran first in this process: the forked ranks inherit its imports (the adapter registry's
    # entry points load timm and stable-baselines3), which would otherwise cost each rank seconds
    tmp = tmp_path_factory.mktemp("dist")
    codes = launch(lambda rank: _job(tmp, rank), tmp, world=2, timeout=120)
    assert codes == [0, 0], errors(tmp)
    return tmp, [torch.load(tmp / f"out{r}.pt", weights_only=False) for r in range(2)]


def test_store_row_for_row(ran, reference):
    tmp, outs = ran
    assert all(o["complete"] and o["reused"] for o in outs)
    merged = ActivationStore(tmp / "dist")
    assert merged.num_shards == reference.num_shards == 5
    for s in SITES:
        assert torch.equal(merged[s], reference[s])
    assert torch.equal(merged.labels(), reference.labels())
    m = json.loads((tmp / "dist" / "manifest.json").read_text())
    assert [e["file"] for e in m["shards"]] == [f"shard-r{k % 2}-{k // 2:05d}.safetensors" for k in range(5)]
    assert [e["batches"] for e in m["shards"]] == [e["batches"] for e in reference.manifest["shards"]]
    assert m["complete"] and m["world"] == 2
    assert not list((tmp / "dist").glob("*.lock")) and not list((tmp / "dist").glob("*.tmp"))
    for r in range(2):  # each rank's progress file lists its own global shards
        part = json.loads((tmp / "dist" / f"manifest-r{r}.json").read_text())
        assert [e["batches"][0] // 2 for e in part["shards"]] == list(range(r, 5, 2))


def test_partition_by_rank_and_mismatched_data(ran, tmp_path):
    tmp, outs = ran
    own = ActivationStore(tmp / "own")
    ref = collect(tmp_path / "own", batches(n=3, seed=10) + batches(n=4, seed=11))
    for s in SITES:
        assert torch.equal(own[s], ref[s])
    assert torch.equal(own.labels(), ref.labels())
    assert outs[0]["own_examples"] == ref.num_examples
    for o in outs:  # different data with partition="shards": refused on both ranks, naming the fix
        assert o["mixed"] is not None and "partition='ranks'" in o["mixed"]
        assert "every rank can reach" in o["memory"]
        assert "the ranks name different folders" in o["folders"]


def test_epoch_covers_every_row_once(ran, reference):
    _, outs = ran
    want = rows_of(reference.features("block", None))
    for e in range(2):
        got = outs[0]["epoch"][e], outs[1]["epoch"][e]
        assert len(got[0]) and len(got[1])
        assert rows_of(torch.cat(got)) == want
    assert outs[0]["stem_rows"] + outs[1]["stem_rows"] == reference.num_rows("stem")


@pytest.mark.parametrize("name", list(PROBES))
def test_probe_equals_single_process(ran, reference, name):
    _, outs = ran
    X, y = reference.features("block").numpy(), reference.labels().numpy()
    ref = LinearProbe(**PROBES[name]).fit(X, y)
    for o in outs:
        coef, intercept, converged = o[f"probe_{name}"]
        assert converged
        # logistic: both solvers stop at max|grad| <= 1e-8 of an objective with strong convexity >= l2 / N
        # = 0.057, so the standardised coefficients agree to ~1e-6 (about 1e-5 after dividing by the
        # feature scales; the coefficients are ~15); ridge: exact sums, float64 rounding only
        np.testing.assert_allclose(coef.numpy(), ref.coef_.numpy(), rtol=1e-5, atol=5e-5)
        np.testing.assert_allclose(intercept.numpy(), ref.intercept_.numpy(), rtol=1e-5, atol=5e-5)
    assert torch.equal(outs[0][f"probe_{name}"][0], outs[1][f"probe_{name}"][0])  # identical on every rank


def test_ridge_regression_on_plain_rows(ran, reference):
    _, outs = ran
    X = reference.features("stem").numpy()
    ref = LinearProbe(kind="ridge", l2=1.0).fit(X[:, :6], X[:, 6:])
    for o in outs:
        np.testing.assert_allclose(o["probe_ridge"][0].numpy(), ref.coef_.numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(o["probe_ridge"][1].numpy(), ref.intercept_.numpy(), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("variant", ["topk", "relu"])
def test_sae_equals_single_process(ran, reference, variant):
    _, outs = ran
    ref = fit_saes(reference, {"stem": sae(variant)}, progress=False)["stem"].module_.state_dict()
    for o in outs:
        got = o[f"sae_{variant}"]
        for k, v in ref.items():
            # float32 sums in another order (each rank's slice, then the all-reduce): ~1e-6 after 2 epochs
            torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5, equal_nan=True, msg=f"{variant} {k}")
    for k, v in outs[0][f"sae_{variant}"].items():
        torch.testing.assert_close(v, outs[1][f"sae_{variant}"][k], rtol=0, atol=0, equal_nan=True)


def test_cka_equals_single_process(ran, reference):
    _, outs = ran
    X = reference.features("block")
    for debiased in (False, True):
        acc = LinearCKAAccumulator(debiased=debiased).update([X, X[:, :5]], [X ** 2])
        for o in outs:
            np.testing.assert_allclose(o[f"cka_{debiased}"], acc.matrix(), rtol=1e-10, atol=1e-12)
    mb = MinibatchCKA(debiased=True)
    for b in outs[0]["mb_batches"] + outs[1]["mb_batches"]:
        mb.update(b, b ** 2)
    for o in outs:
        assert o["cka_mb"] == pytest.approx(mb.value(), rel=1e-12)


def test_single_process_helpers_and_errors(tmp_path, reference):
    assert D.current_rank() == (0, 1) and not D.is_distributed()
    with pytest.raises(InputError, match="rank, world_size"):
        next(reference.iter_batches("block", rank=2, world_size=2))
    parts = [torch.cat([b["block"] for b in reference.iter_batches("block", rank=r, world_size=3, seed=4)])
             for r in range(3)]
    assert rows_of(torch.cat(parts)) == rows_of(reference.features("block"))


def test_reordered_merged_manifest_is_refused(ran, tmp_path):
    import shutil

    tmp, _ = ran
    shutil.copytree(tmp / "dist", tmp_path / "s")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["shards"][1], m["shards"][2] = m["shards"][2], m["shards"][1]
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptStoreError, match="expected 'shard-r1-00000.safetensors'"):
        ActivationStore(tmp_path / "s")
