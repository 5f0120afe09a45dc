"""ActivationStore: round trip, resumption after SIGKILL, corruption detection, streaming and memory maps;
provenance (model, data, settings), eval mode, every input form, the write lock, partial stores and manifest
validation; collection on a CNN, a ViT and a policy. Crash and concurrency torture: test_store_torture.py."""

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from interp_core import ActivationCache, ActivationStore, HookedModel
from interp_core.errors import InputError, InterpWarning, StoreError
from interp_core.store import (
    CorruptShardError,
    CorruptStoreError,
    IncompleteStoreError,
    StoreLockedError,
    StoreMismatchError,
)

from ..conftest import make_cnn

ROOT = Path(__file__).resolve().parents[2]


def batches(n=10, seed=0, size=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, 4, (size,), generator=g)) for _ in range(n)]


def test_round_trip_equals_cache(tmp_path):
    hm = HookedModel(make_cnn())
    data = batches()
    store = ActivationStore.collect(hm, data, ["stem", "block"], path=tmp_path, pool={"stem": None, "block": "mean"},
                                    batches_per_shard=3, progress=False)
    assert store.num_shards == 4 and store.complete
    ref = ActivationCache.cat([hm.run_with_cache(x, sites=["stem", "block"], pool={"stem": None, "block": "mean"})[1]
                               for x, _ in data])
    reopened = ActivationStore(tmp_path)
    for s in ("stem", "block"):
        assert torch.equal(reopened[s], ref[s])
        assert torch.equal(reopened.features(s), ref.features(s))
        assert reopened.axes(s) == ref.axes(s)
        assert reopened.num_rows(s) == ref.features(s).shape[0]
    assert torch.equal(reopened.labels(), torch.cat([y for _, y in data]))
    assert torch.equal(reopened.features("stem", pool="max"), ref.features("stem", pool="max"))
    # memory-mapped view equals the data, indexed across shard boundaries
    arr = reopened.array("stem")
    assert isinstance(arr.parts[0], np.memmap)
    assert arr.shape == tuple(ref["stem"].shape)
    idx = [0, 11, 12, 13, 39]
    assert np.array_equal(arr[idx], ref["stem"].numpy()[idx])
    assert np.array_equal(np.asarray(arr), ref["stem"].numpy())


def test_in_memory_store_has_the_same_interface():
    hm = HookedModel(make_cnn())
    data = batches()
    disk_like = ActivationStore.collect(hm, data, ["block"], path=None, pool="mean", batches_per_shard=4,
                                        progress=False)
    _, cache = hm.run_with_cache(torch.cat([x for x, _ in data]), sites=["block"], pool="mean")
    assert torch.allclose(disk_like.features("block"), cache.features("block"), atol=1e-6)
    for source in (disk_like, cache):
        seen = torch.cat([b["block"] for b in source.iter_batches("block", batch_size=7, shuffle=True, seed=1)])
        assert seen.shape == cache.features("block").shape
        # every row exactly once, in a shuffled order
        a = seen[torch.argsort(seen[:, 0])]
        b = cache.features("block")[torch.argsort(cache.features("block")[:, 0])]
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.allclose(seen, cache.features("block"), atol=1e-6)


def test_iter_batches_bounded_buffer_and_labels(tmp_path):
    hm = HookedModel(make_cnn())
    data = batches(n=12)
    store = ActivationStore.collect(hm, data, ["block"], path=tmp_path, pool="mean", batches_per_shard=2,
                                    progress=False)
    got = list(store.iter_batches("block", batch_size=5, buffer_shards=2, labels=True, seed=3))
    assert sum(len(b["labels"]) for b in got) == 48
    # rows and labels stay aligned through the shuffle
    feats = store.features("block")
    labels = store.labels()
    for b in got[:3]:
        for row, lab in zip(b["block"], b["labels"]):
            i = int(torch.argmin((feats - row).abs().sum(1)))
            assert labels[i] == lab


def test_corrupted_shard_raises_naming_the_file(tmp_path):
    hm = HookedModel(make_cnn())
    store = ActivationStore.collect(hm, batches(), ["stem"], path=tmp_path, batches_per_shard=5, progress=False)
    f = tmp_path / store.manifest["shards"][1]["file"]
    raw = bytearray(f.read_bytes())
    raw[-5] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(CorruptShardError, match="shard_00001.safetensors is corrupt") as info:
        ActivationStore(tmp_path)["stem"]
    assert isinstance(info.value, StoreError) and "overwrite=True" in str(info.value)


def test_resume_refuses_different_data_or_settings(tmp_path):
    hm = HookedModel(make_cnn())
    data = batches()
    ActivationStore.collect(hm, data[:4], ["stem"], path=tmp_path, batches_per_shard=2, progress=False)
    with pytest.raises(ValueError, match="settings"):
        ActivationStore.collect(hm, data[:4], ["stem", "block"], path=tmp_path, batches_per_shard=2, progress=False)
    store = json.loads((tmp_path / "manifest.json").read_text())
    store["complete"] = False
    (tmp_path / "manifest.json").write_text(json.dumps(store))
    with pytest.raises(ValueError, match="first batch differs"):
        ActivationStore.collect(hm, batches(seed=9), ["stem"], path=tmp_path, batches_per_shard=2, progress=False)


WRITER = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {root!r})
    from tests.conftest import make_cnn
    from tests.interp_core.test_store import batches
    from interp_core import HookedModel, ActivationStore

    def slow():
        for b in batches(n=12):
            time.sleep(0.15)
            yield b

    ActivationStore.collect(HookedModel(make_cnn()), slow(), ["stem", "block"], path=sys.argv[1],
                            pool={{"stem": None, "block": "mean"}}, batches_per_shard=2, progress=False)
""")


@pytest.mark.slow  # a real SIGKILL of a separate process; test_store_torture.py covers every step quickly
def test_sigkill_mid_run_then_resume_gives_the_same_data(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once at least two shards are committed, mid-way through a third
        mf = killed / "manifest.json"
        if mf.exists():
            try:
                if len(json.loads(mf.read_text())["shards"]) >= 2:
                    break
            except json.JSONDecodeError:  # never happens with atomic writes; would fail the test below
                raise
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = json.loads((killed / "manifest.json").read_text())
    assert not partial["complete"] and 2 <= len(partial["shards"]) < 6

    hm = HookedModel(make_cnn())
    pool = {"stem": None, "block": "mean"}
    resumed = ActivationStore.collect(hm, batches(n=12), ["stem", "block"], path=killed, pool=pool,
                                      batches_per_shard=2, progress=False)
    reference = ActivationStore.collect(hm, batches(n=12), ["stem", "block"], path=clean, pool=pool,
                                        batches_per_shard=2, progress=False)
    assert resumed.complete and resumed.num_shards == reference.num_shards == 6
    for s in ("stem", "block"):
        assert torch.equal(resumed[s], reference[s])
    assert torch.equal(resumed.labels(), reference.labels())
    assert not list(killed.glob("*.tmp"))


# ------------------------------------------------------------------ provenance: what a store was collected from
def collect(model, data, path, **kw):
    kw = {"batches_per_shard": 2, "progress": False} | kw
    return ActivationStore.collect(model, data, ["stem", "block"], path, pool={"stem": None, "block": "mean"}, **kw)


def direct(model, data):
    """The truth: the model's activations from one direct forward, in eval mode."""
    x = torch.cat([b[0] for b in data])
    _, cache = HookedModel(model).run_with_cache(x, sites=["stem", "block"], pool={"stem": None, "block": "mean"})
    return cache


def test_a_store_of_another_model_is_refused_not_returned(tmp_path):
    data = batches(n=6)
    trained, twin = make_cnn(0), make_cnn(1)  # same class, other weights (a random-init twin)
    opened = collect(trained, data, tmp_path)
    first = opened["stem"]
    assert torch.equal(first, direct(trained, data)["stem"])
    with pytest.raises(StoreMismatchError, match="another model") as info:
        collect(twin, data, tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "overwrite=True" in msg and "same order" in msg
    assert isinstance(info.value, StoreError) and isinstance(info.value, ValueError)
    replaced = collect(twin, data, tmp_path, overwrite=True)
    truth = direct(twin, data)
    for s in ("stem", "block"):
        assert torch.equal(replaced[s], truth[s]) and torch.equal(ActivationStore(tmp_path)[s], truth[s])
    assert not torch.equal(replaced["stem"], first)
    with pytest.raises(CorruptShardError, match="collected again since this object opened it"):
        opened["stem"]  # an object opened before the overwrite does not serve a mix of old and new shards


def test_other_data_or_settings_are_refused_same_ones_reuse_the_store(tmp_path):
    data, other = batches(n=6), batches(n=6, seed=5)
    model = make_cnn(0)
    collect(model, data, tmp_path)
    with pytest.raises(StoreMismatchError, match="other data") as info:
        collect(model, other, tmp_path)
    assert "overwrite=True" in str(info.value)
    with pytest.raises(StoreMismatchError, match="batches_per_shard=2 .given 3."):
        collect(model, data, tmp_path, batches_per_shard=3)
    with pytest.raises(StoreMismatchError, match="dtype"):
        collect(model, data, tmp_path, dtype=torch.float16)
    # the same weights in another object, the same data: the stored activations, without a forward
    calls = []
    twin = HookedModel(copy.deepcopy(model))
    twin.model.stem.register_forward_hook(lambda *a: calls.append(1))
    again = collect(twin, data, tmp_path)
    assert not calls and again.complete
    assert torch.equal(again["block"], direct(model, data)["block"])


def test_resume_checks_every_skipped_batch(tmp_path):
    """An interrupted store resumed with data that differs only after the first batch is refused."""
    data = batches(n=6)

    def interrupted():
        yield from data[:4]
        raise RuntimeError("interrupted")

    model = make_cnn(0)
    with pytest.raises(RuntimeError, match="interrupted"):
        collect(model, interrupted(), tmp_path)
    changed = data[:3] + batches(n=3, seed=7)
    with pytest.raises(StoreMismatchError, match="batches 2..3 differ"):
        collect(model, changed, tmp_path)
    with pytest.raises(StoreMismatchError, match="it has 3 batches"):
        collect(model, data[:3], tmp_path)
    resumed = collect(model, data, tmp_path)
    truth = direct(model, data)
    assert torch.equal(resumed["stem"], truth["stem"])
    assert torch.equal(resumed.labels(), torch.cat([y for _, y in data]))


def test_collect_runs_in_eval_mode_and_leaves_the_model_as_it_was(tmp_path):
    model = make_cnn(0).train()  # left in train mode: dropout on, BatchNorm would update its statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = batches(n=4)
    store = collect(model, data, tmp_path)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    truth = direct(copy.deepcopy(model).eval(), data)
    for s in ("stem", "block"):
        assert torch.equal(store[s], truth[s])


def test_train_true_uses_batch_statistics_and_restores_buffers(tmp_path):
    model = make_cnn(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = batches(n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InterpWarning)  # train mode was asked for: no train-mode warning
        store = collect(model, data, tmp_path, train=True, batches_per_shard=1)
    assert not model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # the truth for the first batch, by hand: block = relu(bn2(conv2(relu(bn1(conv1(stem))))) + stem) with
    # each BatchNorm normalising by this batch's own mean and (biased) variance
    def bn(h, m):
        mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
        return (h - mean) / torch.sqrt(var + m.eps) * m.weight[:, None, None] + m.bias[:, None, None]

    with torch.no_grad():
        stem = model.stem(data[0][0])
        b = model.block
        block = torch.relu(bn(b.conv2(torch.relu(bn(b.conv1(stem), b.bn1))), b.bn2) + stem)
    assert torch.allclose(store["block"][:4], block.mean((2, 3)), atol=1e-5)
    assert not torch.allclose(store["block"][:4], direct(model, data[:1])["block"], atol=1e-3)
    with pytest.raises(StoreMismatchError, match="train=True"):  # eval-mode rows never join train-mode ones
        collect(model, data, tmp_path)


def test_progress_bar_counts_examples(tmp_path, capsys):
    collect(make_cnn(0), torch.randn(10, 3, 8, 8), tmp_path, progress=True, batch_size=4)
    err = capsys.readouterr().err
    assert "activation store" in err and "10/10" in err


def test_collect_takes_every_input_form(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 3, 8, 8, generator=g), torch.randint(0, 4, (20,), generator=g)
    model = make_cnn(0)
    _, truth = HookedModel(model).run_with_cache(x, sites=["block"], pool="mean")
    forms = {
        "tensor + labels": (x, y),
        "(x, y) pair": ((x, y), None),
        "numpy": (x.numpy().astype(np.float64), y.numpy()),
        "Dataset": (torch.utils.data.TensorDataset(x, y), None),
        "DataLoader": (torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6), None),
        "dicts": ([{"x": x[i:i + 7], "y": y[i:i + 7]} for i in range(0, 20, 7)], None),
    }
    for k, (form, labels) in enumerate(forms.values()):
        store = ActivationStore.collect(model, form, "block", tmp_path / str(k), pool="mean", labels=labels,
                                        batch_size=8, progress=False)
        assert torch.allclose(store["block"], truth["block"], atol=1e-5)
        assert torch.equal(store.labels().long(), y)
        assert store.num_examples == 20 and ActivationStore(tmp_path / str(k)).num_rows("block") == 20
    with pytest.raises(InputError, match="NaN"):
        ActivationStore.collect(model, torch.full((2, 3, 8, 8), float("nan")), "block", tmp_path / "nan")
    assert not (tmp_path / "nan" / "manifest.json").exists()


# ------------------------------------------------------------------ the write lock
HOLDER = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": "here", "since": time.time()}).encode())
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_store_being_written_is_refused_naming_the_writer(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "store.lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError) as info:
            collect(make_cnn(0), batches(n=4), tmp_path)
        msg = str(info.value)
        assert f"process {holder.pid}" in msg and str(tmp_path) in msg and "store.lock" in msg
    finally:
        holder.stdin.close()
        holder.wait()
    assert not list(tmp_path.glob("shard_*"))  # the refused writer wrote nothing
    # the lock of a process that is gone (killed) is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "store.lock").write_text(json.dumps({"pid": int(dead.stdout), "host": "here", "since": 0}))
    store = collect(make_cnn(0), batches(n=4), tmp_path)
    assert store.complete and not (tmp_path / "store.lock").exists()


# ------------------------------------------------------------------ reading: complete, partial, validated
def interrupted_store(path, n_done=6, n=10):
    data = batches(n=n)

    def stop():
        yield from data[:n_done]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(make_cnn(0), stop(), path)
    return data


def test_an_incomplete_store_needs_allow_partial(tmp_path):
    data = interrupted_store(tmp_path)  # 3 shards of 2 batches written, the run stopped in batch 7 of 10
    with pytest.raises(IncompleteStoreError) as info:
        ActivationStore(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "interrupted" in msg and "allow_partial=True" in msg and "24 examples" in msg
    part = ActivationStore(tmp_path, allow_partial=True)
    truth = direct(make_cnn(0), data)
    assert not part.complete and part.num_examples == 24 and part.num_rows("stem") == 24 * 64
    assert torch.equal(part["stem"], truth["stem"][:24])
    assert torch.equal(part.features("block"), truth.features("block")[:24])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "store.lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:  # while a writer holds the lock, the error says who is collecting it
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(IncompleteStoreError, match=f"is being collected by process {holder.pid}"):
            ActivationStore(tmp_path)
    finally:
        holder.stdin.close()
        holder.wait()
    assert torch.equal(collect(make_cnn(0), data, tmp_path)["stem"], truth["stem"])  # and resumes


@pytest.mark.parametrize("edit, error", [
    ("drop_middle", "expected 'shard_00001.safetensors'"),
    ("renumber_after_drop", "covers batches \\[4, 6\\], expected a range starting at 2"),
    ("reorder", "expected 'shard_00000.safetensors'"),
    ("swap_contents", "covers batches \\[2, 4\\], expected a range starting at 0"),
    ("drop_last", "records totals"),
    ("row_count", "row counts"),
    ("examples", "covers examples"),
    ("broken_json", "is not valid JSON .* at line 1, column"),
    ("not_a_manifest", "lacks the keys"),
])
def test_an_edited_manifest_is_refused_on_open(tmp_path, edit, error):
    collect(make_cnn(0), batches(n=8), tmp_path)  # 4 shards of 8 examples
    mf = tmp_path / "manifest.json"
    m = json.loads(mf.read_text())
    sh = m["shards"]
    if edit == "drop_middle":
        del sh[1]
    elif edit == "renumber_after_drop":  # the gap hidden by renaming the files too
        del sh[1]
        for k, e in enumerate(sh):
            e["file"] = f"shard_{k:05d}.safetensors"
    elif edit == "reorder":
        sh[0], sh[1] = sh[1], sh[0]
    elif edit == "swap_contents":
        sh[0], sh[1] = sh[1], sh[0]
        sh[0]["file"], sh[1]["file"] = sh[1]["file"], sh[0]["file"]
    elif edit == "drop_last":
        del sh[-1]
    elif edit == "row_count":
        sh[2]["rows"]["stem"] = 7
    elif edit == "examples":
        sh[2]["examples"] = [16, 23]
        for site in sh[2]["rows"]:
            sh[2]["rows"][site] = 7
    text = json.dumps(m)
    if edit == "broken_json":
        text = text[:-40]
    if edit == "not_a_manifest":
        text = "[1, 2]"
    mf.write_text(text)
    with pytest.raises(CorruptStoreError, match=error) as info:
        ActivationStore(tmp_path)
    assert str(tmp_path) in str(info.value) and "overwrite=True" in str(info.value)
    with pytest.raises(CorruptStoreError):  # collect refuses too, and overwrite=True replaces it
        collect(make_cnn(0), batches(n=8), tmp_path)
    fixed = collect(make_cnn(0), batches(n=8), tmp_path, overwrite=True)
    assert torch.equal(fixed["stem"], direct(make_cnn(0), batches(n=8))["stem"])


def test_a_version_1_store_reads_but_is_not_reused(tmp_path):
    data = batches(n=6)
    collect(make_cnn(0), data, tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m = {"version": 1, "settings": m["settings"], "sites": m["sites"], "complete": True, "fingerprint": "x",
         "shards": [{k: v for k, v in e.items() if k not in ("examples", "inputs")} for e in m["shards"]]}
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    old = ActivationStore(tmp_path)
    assert torch.equal(old["stem"], direct(make_cnn(0), data)["stem"]) and old.num_examples == 24
    with pytest.raises(StoreMismatchError, match="older interp_core .* overwrite=True"):
        collect(make_cnn(0), data, tmp_path)


def test_missing_folder_and_missing_shard_name_the_store(tmp_path):
    with pytest.raises(StoreError, match="no such folder"):
        ActivationStore(tmp_path / "nothing")
    collect(make_cnn(0), batches(n=4), tmp_path)
    (tmp_path / "shard_00001.safetensors").unlink()
    with pytest.raises(CorruptShardError, match="shard_00001.safetensors listed in the manifest is missing"):
        ActivationStore(tmp_path).labels()


# ------------------------------------------------------------------ the three kinds of model
def test_collect_on_a_cnn_a_vit_and_a_policy(tmp_path):
    import timm
    import torchvision

    import rl

    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 32, 32, generator=g)
    cases = [
        (torchvision.models.resnet18(num_classes=10), images, ["layer2", "logits"], {"layer2": "mean"}),
        (timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10),
         images, ["blocks.1.resid_post", "blocks.1.attn.z"], {"blocks.1.attn.z": "cls"}),
        (rl.zoo.load("cartpole-ppo"), torch.randn(12, 4, generator=g), ["policy.1", "logits"], None),
    ]
    for k, (model, x, sites, pool) in enumerate(cases):
        torch.manual_seed(0)
        ActivationStore.collect(model, x, sites, tmp_path / str(k), pool=pool, batch_size=4,
                                        batches_per_shard=1, progress=False)
        hm = model if isinstance(model, HookedModel) else HookedModel(model)
        with hm.analysis():
            out, cache = hm.run_with_cache(x, sites=sites, pool=pool)
        reopened = ActivationStore(tmp_path / str(k))
        assert reopened.num_shards == -(-len(x) // 4)  # one batch of 4 per shard
        for s in sites:
            assert reopened.axes(s) == cache.axes(s)
            assert torch.allclose(reopened[s], cache[s], atol=1e-5), (k, s)
        if "logits" in sites:  # and the stored logits are the model's own output
            assert torch.allclose(reopened["logits"], out.logits if hasattr(out, "logits") else out, atol=1e-5)
