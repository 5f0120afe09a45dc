"""One control-task definition (Hewitt & Liang, by input type) on planted input types; probe_sites enters
through the boundary: tensors, numpy, Datasets and DataLoaders of (x, y) give identical numbers."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from interp_core import HookedModel
from interp_core.errors import InputError
from interp_core.probes import (
    LinearProbe,
    control_labels,
    input_types,
    probe_sites,
    selectivity,
    train_test_split_by_group,
)

from ..conftest import make_cnn


def planted_inputs(n_types=40, reps=5, seed=0):
    """``n_types`` distinct inputs ``[3, 4, 4]``, each repeated ``reps`` times in shuffled order."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(n_types, 3, 4, 4, generator=g)
    truth = torch.randperm(n_types * reps, generator=g) % n_types
    return protos[truth], truth.numpy()


def test_input_types_recover_planted_types_in_first_occurrence_order():
    x, truth = planted_inputs()
    t = input_types(x)
    # same partition as the planted one ...
    assert all(len(set(t[truth == k])) == 1 for k in range(40))
    assert len(set(t)) == 40
    # ... numbered 0, 1, 2, ... in the order types first occur
    _, first = np.unique(t, return_index=True)
    assert np.array_equal(t[np.sort(first)], np.arange(40))
    assert np.array_equal(input_types(x.numpy()), t)


def test_control_labels_are_one_function_of_the_partition():
    x, truth = planted_inputs()
    y = np.random.default_rng(0).integers(0, 3, size=len(truth))
    by_inputs = control_labels(y, inputs=x, seed=4)
    # the same partition named differently (planted ids, strings) gives the same control labels
    assert np.array_equal(control_labels(y, truth, seed=4), by_inputs)
    assert np.array_equal(control_labels(y, np.array([f"type-{k}" for k in truth]), seed=4), by_inputs)
    for k in range(40):  # one label per type, drawn from the labels present
        assert len(set(by_inputs[truth == k])) == 1
    assert set(by_inputs) <= set(y)
    with pytest.raises(InputError, match="exactly one of"):
        control_labels(y, truth, inputs=x)
    with pytest.raises(InputError, match="one per row"):
        control_labels(y[:-1], inputs=x)


def test_selectivity_is_task_minus_control_on_one_split_by_hand():
    # recompute selectivity() from its definition with the public pieces: the split keeps groups whole, the
    # control labels come from the same function, both probes are fitted on the training rows only
    x, truth = planted_inputs(n_types=60, reps=6)
    X = x.reshape(len(x), -1)[:, :6] + 0.05 * torch.randn(len(x), 6, generator=torch.Generator().manual_seed(1))
    y = (X[:, 0] - X[:, 1] > 0).long().numpy()
    groups = np.arange(len(y)) // 3
    got = selectivity(LinearProbe(), X, y, groups=groups, control_types=truth, test_size=0.25, seed=2)
    tr, te = train_test_split_by_group(len(y), groups, 0.25, 2)
    assert set(groups[tr]).isdisjoint(groups[te])
    yc = control_labels(y, truth, seed=2)
    task = LinearProbe().fit(X[tr], y[tr]).score(X[te], y[te])
    ctrl = LinearProbe().fit(X[tr], yc[tr]).score(X[te], yc[te])
    assert got["task_score"] == pytest.approx(task) and got["control_score"] == pytest.approx(ctrl)
    assert got["selectivity"] == pytest.approx(task - ctrl) and got["n_test"] == len(te)
    # without types the rows of X are the inputs: the control labels are control_labels(y, inputs=X)
    plain = selectivity(LinearProbe(), X, y, seed=2)
    tr, te = train_test_split_by_group(len(y), None, 0.2, 2)
    yc = control_labels(y, inputs=X, seed=2)
    assert plain["control_score"] == pytest.approx(LinearProbe().fit(X[tr], yc[tr]).score(X[te], yc[te]))


class PairDataset(Dataset):
    """A torchvision-style dataset: items are ``(image tensor, int label)``."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def _case():
    g = torch.Generator().manual_seed(0)
    model = make_cnn()
    base = torch.randn(150, 3, 8, 8, generator=g)
    x = torch.cat([base, base[:50]])  # 50 inputs appear twice: one input type, one control label
    with torch.no_grad():
        logits = model(x)
    y = (logits - logits.mean(0)).argmax(1)  # planted: linearly readable at the head, several classes
    assert len(y.unique()) >= 3
    return model, x, y


def test_probe_sites_same_numbers_for_every_data_form():
    model, x, y = _case()
    sites = ["stem", "block", "head"]
    kw = {"sites": sites, "pool": "mean", "control": True, "seed": 3}
    ref = probe_sites(HookedModel(model), x, y, batch_size=64, **kw)
    forms = {
        "numpy": (x.numpy(), y.numpy()),
        "pair": ((x, y), None),
        "tensor dataset": (TensorDataset(x, y), None),
        "loader of (x, y)": (DataLoader(TensorDataset(x, y), batch_size=37), None),
        "torchvision-style loader": (DataLoader(PairDataset(x, y), batch_size=64), None),
        "plain module": (x, y),
    }
    for name, (data, labels) in forms.items():
        m = model if name == "plain module" else HookedModel(model)
        res = probe_sites(m, data, labels, batch_size=64, **kw)
        for a, b in zip(ref.table, res.table):
            for col in ("train_score", "test_score", "control_score", "n_train", "n_test"):
                assert a[col] == pytest.approx(b[col], abs=1e-6), (name, a["site"], col)
    assert all(p is not None for p in ref.probes.values()) and ref.table[-1]["test_score"] > 0.9
    # the control task treats the repeated inputs as one type: memorising them helps on the held-out copies
    assert ref.config["control_types"] == "identical inputs"


def test_probe_sites_torchvision_resnet_loader_of_pairs():
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = net(x).argmax(1)
    loader = DataLoader(PairDataset(x, y), batch_size=16)
    res = probe_sites(net, loader, sites=["layer4", "fc"], pool="mean", control=False, test_size=0.25)
    direct = probe_sites(net, x, y, sites=["layer4", "fc"], pool="mean", control=False, test_size=0.25)
    assert [r["test_score"] for r in res.table] == pytest.approx([r["test_score"] for r in direct.table])
    assert [r["train_score"] for r in res.table] == pytest.approx([r["train_score"] for r in direct.table])
    assert res.table[-1]["train_score"] > 0.9  # the logits determine the label by argmax
    assert net.training is False


def test_probe_sites_runs_in_eval_mode_and_restores_train_mode():
    # the CNN has dropout and batch norm: in train mode its activations would be random and its running
    # statistics would move; the sweep of a train-mode model equals the sweep of the eval-mode model
    model, x, y = _case()
    ref = probe_sites(model, x, y, sites=["block", "head"], control=False)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    res = probe_sites(model, x, y, sites=["block", "head"], control=False)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    assert [r["test_score"] for r in res.table] == [r["test_score"] for r in ref.table]
    assert np.array_equal(res.probes["head"].coef_.numpy(), ref.probes["head"].coef_.numpy())


def test_probe_sites_errors_name_the_argument():
    model, x, y = _case()
    with pytest.raises(InputError, match="labels: none given"):
        probe_sites(model, x, sites=["head"])
    with pytest.raises(InputError, match="labels"):
        probe_sites(model, x, y[:-3], sites=["head"])
    with pytest.raises(InputError, match="groups has 5 entries"):
        probe_sites(model, x, y, sites=["head"], groups=np.arange(5))
    with pytest.raises(InputError, match="single class"):
        probe_sites(model, x, torch.zeros(len(x)), sites=["head"])
