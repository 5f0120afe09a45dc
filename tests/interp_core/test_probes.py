"""Probes against planted truths and scikit-learn; control tasks; sweeps on a CNN, a ViT and a policy."""


import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.preprocessing import StandardScaler

from interp_core import ActivationStore, HookedModel
from interp_core.probes import (
    LinearProbe,
    MLPProbe,
    NotFittedError,
    ProbeSweepResult,
    SelectivityProbe,
    control_labels,
    cross_val_score,
    fit_many,
    probe_sites,
    train_test_split_by_group,
)

from ..conftest import make_cnn, make_policy, make_vit


def planted_logistic(n=4000, d=20, classes=2, seed=0, scale=3.0, anisotropic=True):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    if anisotropic:
        X = X * torch.linspace(0.3, 3.0, d) + torch.linspace(-2, 2, d)
    W = torch.randn(classes if classes > 2 else 1, d, generator=g)
    Z = scale * (X - X.mean(0)) @ W.T
    if classes == 2:
        y = (torch.rand(n, generator=g) < torch.sigmoid(Z[:, 0])).long()
    else:
        y = torch.multinomial(torch.softmax(Z, 1), 1, generator=g)[:, 0]
    return X, y.numpy(), W


def cosine(a, b):
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


# ------------------------------------------------------------------ planted truths and scikit-learn
def test_recovers_planted_direction_binary():
    X, y, W = planted_logistic(n=20000, d=10, scale=4.0)
    p = LinearProbe(kind="logistic", l2=1e-2).fit(X, y)
    # the Bayes direction is W in the original feature space, whatever the feature scales
    assert cosine(p.direction_(), W[0]) > 0.99
    assert cosine(p.direction_(label=0), -W[0]) > 0.99
    assert p.converged_


def test_recovers_planted_directions_multiclass():
    X, y, W = planted_logistic(n=30000, d=8, classes=4, scale=2.0)
    p = LinearProbe(kind="logistic", l2=1e-2).fit(X, y)
    Wc = W - W.mean(0)  # softmax is shift invariant; the L2 optimum has sum_c w_c = 0
    for c in range(4):
        assert cosine(p.direction_(label=c), Wc[c]) > 0.99


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("l2", [1.0, 10.0])
def test_logistic_matches_sklearn_standardized(classes, l2):
    X, y, _ = planted_logistic(n=3000, d=15, classes=classes, scale=1.0, seed=classes)
    Xtr, Xte, ytr, yte = X[:2400], X[2400:], y[:2400], y[2400:]
    p = LinearProbe(kind="logistic", l2=l2, tol=1e-6).fit(Xtr, ytr)
    sc = StandardScaler().fit(Xtr.numpy())
    sk = LogisticRegression(C=1.0 / l2, tol=1e-8, max_iter=5000).fit(sc.transform(Xtr.numpy()), ytr)
    assert abs(p.score(Xte, yte) - sk.score(sc.transform(Xte.numpy()), yte)) <= 0.005
    # same optimum: coefficients mapped to the original space agree
    coef = sk.coef_ / sc.scale_
    assert np.allclose(p.coef_.numpy(), coef, rtol=2e-3, atol=2e-3 * np.abs(coef).max())
    proba = sk.predict_proba(sc.transform(Xte.numpy()))
    assert np.abs(p.predict_proba(Xte) - proba).max() < 2e-3


def test_logistic_matches_sklearn_raw_features_and_class_weight():
    X, y, _ = planted_logistic(n=2000, d=6, classes=3, scale=1.0, anisotropic=False)
    keep = (y != 2) | (np.arange(len(y)) % 4 == 0)  # make class 2 rare
    X, y = X[torch.as_tensor(keep)], y[keep]
    p = LinearProbe(kind="logistic", l2=0.5, standardize=False, class_weight="balanced", tol=1e-6).fit(X, y)
    sk = LogisticRegression(C=2.0, class_weight="balanced", tol=1e-8, max_iter=5000).fit(X.numpy(), y)
    assert np.allclose(p.coef_.numpy(), sk.coef_, atol=2e-3)
    assert np.allclose(p.intercept_.numpy(), sk.intercept_, atol=2e-3)
    assert abs(p.score(X, y) - sk.score(X.numpy(), y)) <= 0.005


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("outputs", [1, 3])
def test_ridge_matches_sklearn(standardize, outputs):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(500, 12, generator=g) * torch.linspace(0.5, 4, 12) + 1.0
    Y = X @ torch.randn(12, outputs, generator=g) + 0.3 * torch.randn(500, outputs, generator=g)
    y = Y[:, 0] if outputs == 1 else Y
    p = LinearProbe(kind="ridge", l2=3.0, standardize=standardize).fit(X, y)
    Xs = StandardScaler().fit_transform(X.numpy().astype(np.float64)) if standardize else X.numpy().astype(np.float64)
    sk = Ridge(alpha=3.0).fit(Xs, y.numpy().astype(np.float64))
    coef = np.atleast_2d(sk.coef_)
    if standardize:
        coef = coef / X.numpy().astype(np.float64).std(0)
    assert np.abs(p.coef_.numpy() - coef).max() < 1e-4
    assert np.abs(p.predict(X) - sk.predict(Xs)).max() < 1e-4
    assert abs(p.score(X, y) - sk.score(Xs, y.numpy())) < 1e-6
    lin = LinearProbe(kind="linear", standardize=False).fit(X, y)
    truth = np.linalg.lstsq(np.c_[X.numpy().astype(np.float64), np.ones(500)], y.numpy().astype(np.float64),
                            rcond=None)[0]
    assert np.abs(lin.coef_.numpy().T - truth[:-1].reshape(12, -1)).max() < 1e-4


def test_ridge_classifier_matches_sklearn():
    X, y, _ = planted_logistic(n=1500, d=9, classes=4, scale=1.0)
    p = LinearProbe(kind="ridge_classifier", l2=2.0, standardize=False, class_weight="balanced").fit(X, y)
    sk = RidgeClassifier(alpha=2.0, class_weight="balanced").fit(X.numpy().astype(np.float64), y)
    assert np.abs(p.coef_.numpy() - sk.coef_).max() < 1e-4
    assert (p.predict(X) == sk.predict(X.numpy())).all()


def test_sample_weights_equal_row_repetition():
    X, y, _ = planted_logistic(n=600, d=5, scale=1.0)
    w = np.random.default_rng(0).integers(1, 4, size=600)
    a = LinearProbe(kind="logistic", l2=1.0, standardize=False, tol=1e-7).fit(X, y, sample_weight=w.astype(float))
    rep = torch.as_tensor(np.repeat(np.arange(600), w))
    b = LinearProbe(kind="logistic", l2=1.0, standardize=False, tol=1e-7).fit(X[rep], y[rep.numpy()])
    assert np.allclose(a.coef_.numpy(), b.coef_.numpy(), atol=1e-3)


def test_fit_many_equals_separate_fits():
    probes, Xs, ys = [], [], []
    for s in range(3):
        X, y, _ = planted_logistic(n=1000, d=7, classes=3, seed=s, scale=1.0)
        probes.append(LinearProbe(tol=1e-6))
        Xs.append(X)
        ys.append(y)
    fit_many(probes, Xs, ys)
    for p, X, y in zip(probes, Xs, ys):
        alone = LinearProbe(tol=1e-6).fit(X, y)
        assert np.allclose(p.coef_.numpy(), alone.coef_.numpy(), atol=1e-4)


def test_fit_many_warm_start_reaches_the_same_optimum():
    # a "sweep": three sites that are noisy copies of one representation, read out against the same labels
    X, y, _ = planted_logistic(n=2000, d=8, classes=3, scale=1.5)
    g = torch.Generator().manual_seed(5)
    Xs = [X + 0.2 * k * torch.randn(X.shape, generator=g) for k in range(3)]
    warm = fit_many([LinearProbe(tol=1e-5) for _ in Xs], Xs, [y] * 3, warm_start=True)
    cold = fit_many([LinearProbe(tol=1e-5) for _ in Xs], Xs, [y] * 3, warm_start=False)
    for a, b in zip(warm, cold):
        assert a.converged_ and b.converged_
        assert np.allclose(a.coef_.numpy(), b.coef_.numpy(), atol=1e-3)
    assert sum(p.n_iter_ for p in warm[1:]) < sum(p.n_iter_ for p in cold[1:])


def test_sklearn_api():
    X, y, _ = planted_logistic(n=300, d=4, scale=1.0)
    p = LinearProbe(l2=2.0)
    with pytest.raises(NotFittedError, match="not fitted"):
        p.predict(X)
    assert p.fit(X, y) is p
    params = p.get_params()
    assert params["l2"] == 2.0 and params["kind"] == "logistic"
    q = p.clone().set_params(l2=5.0)
    assert q.l2 == 5.0 and not hasattr(q, "coef_")
    assert p.predict_proba(X).shape == (300, 2)
    assert np.allclose(p.predict_proba(X).sum(1), 1.0)
    with pytest.raises(ValueError, match="invalid parameter"):
        p.set_params(C=1.0)
    from sklearn.base import clone
    assert clone(p).get_params() == params


def test_string_labels_and_direction_errors():
    X, y, _ = planted_logistic(n=400, d=4, classes=3, scale=2.0)
    names = np.array(["cat", "dog", "key"])[y]
    p = LinearProbe().fit(X, names)
    assert set(p.predict(X)) <= {"cat", "dog", "key"}
    assert p.direction_(label="dog").shape == (4,)
    with pytest.raises(ValueError, match="say which"):
        p.direction_()
    with pytest.raises(KeyError, match="unknown label"):
        p.direction_(label="cow")


# ------------------------------------------------------------------ bad input
def test_bad_inputs_give_clear_errors():
    X, y, _ = planted_logistic(n=100, d=4)
    bad = X.clone()
    bad[3, 1] = float("nan")
    bad[7, 2] = float("inf")
    with pytest.raises(ValueError, match=r"1 NaN and 1 inf.*columns \[1, 2\]"):
        LinearProbe().fit(bad, y)
    const = X.clone()
    const[:, 2] = 5.0
    with pytest.raises(ValueError, match=r"constant feature columns \[2\]"):
        LinearProbe().fit(const, y)
    kept = LinearProbe(constant_features="ignore").fit(const, y)
    assert kept.coef_[0, 2] == 0
    with pytest.raises(ValueError, match="single class"):
        LinearProbe().fit(X, np.zeros(100))
    with pytest.raises(ValueError, match="100 rows but y has 99"):
        LinearProbe().fit(X, y[:99])
    with pytest.raises(ValueError, match="2-D"):
        LinearProbe().fit(X[0], y[:1])
    with pytest.raises(ValueError, match="kind must be"):
        LinearProbe(kind="svm").fit(X, y)
    with pytest.raises(ValueError, match="fitted on 4"):
        LinearProbe().fit(X, y).predict(X[:, :3])


# ------------------------------------------------------------------ control tasks and splits
def test_control_labels_per_type_and_distribution():
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=20000, p=[0.6, 0.3, 0.1])
    types = rng.integers(0, 5000, size=20000)
    c = control_labels(y, types, seed=1)
    for t in range(0, 5000, 97):  # one label per type
        assert len(set(c[types == t])) <= 1
    # per-type labels drawn from the empirical label distribution
    per_type = np.array([c[types == t][0] for t in np.unique(types)])
    freq = np.bincount(per_type, minlength=3) / len(per_type)
    assert np.allclose(freq, [0.6, 0.3, 0.1], atol=0.03)


def test_split_by_group_keeps_groups_whole():
    groups = np.repeat(np.arange(50), 7)
    tr, te = train_test_split_by_group(len(groups), groups, test_size=0.2, seed=3)
    assert set(groups[tr]).isdisjoint(groups[te])
    assert len(tr) + len(te) == len(groups) and len(set(groups[te])) == 10


def test_selectivity_memorisable_types_vs_planted_signal():
    # inputs come in 200 types (repeated rows with small noise); the task label is a linear function of
    # the features: a linear probe reaches high task accuracy; the control (random label per type) is
    # learnable only by memorising types, which a linear probe on 200 types in d=4 cannot: ~chance.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(200, 4, generator=g)
    types = torch.randint(200, (2000,), generator=g)
    X = centres[types] + 0.05 * torch.randn(2000, 4, generator=g)
    y = (centres[types] @ torch.tensor([1.0, -1.0, 0.5, 0.0]) > 0).long().numpy()
    p = SelectivityProbe(LinearProbe()).fit(X, y, control_types=types.numpy())
    assert p.task_score_ > 0.95
    assert p.control_score_ < 0.65
    assert p.selectivity_ == pytest.approx(p.task_score_ - p.control_score_)
    # an MLP with capacity memorises types better: its control accuracy is higher, its selectivity lower
    m = SelectivityProbe(MLPProbe(hidden=(128,), l2=1e-4, max_iter=150)).fit(X, y, control_types=types.numpy())
    assert m.control_score_ > p.control_score_ + 0.1
    assert m.selectivity_ < p.selectivity_


def test_control_defaults_to_groups_as_types():
    # rows are positions of 300 "images" (groups); with groups as types every held-out image is an unseen
    # type, so the control probe cannot beat the majority rate while the task probe reads the planted signal
    g = torch.Generator().manual_seed(0)
    groups = np.repeat(np.arange(300), 6)
    X = torch.randn(1800, 5, generator=g)
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).long().numpy()
    p = SelectivityProbe(LinearProbe(), test_size=0.3).fit(X, y, groups=groups)
    # chance for the control task: the majority rate of the held-out CONTROL labels (one draw per group, so
    # on 90 held-out groups it differs from y's majority rate by a few points of sampling noise)
    _, te = train_test_split_by_group(len(y), groups, test_size=0.3, seed=0)
    majority = np.bincount(control_labels(y, groups, seed=0)[te]).max() / len(te)
    assert p.task_score_ > 0.9
    assert p.control_score_ <= majority + 0.05
    assert p.selectivity_ > 0.3


def test_regression_probe_control_shuffles_targets_across_types():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(1500, 6, generator=g)
    y = (X @ torch.randn(6, generator=g) + 0.1 * torch.randn(1500, generator=g)).numpy()
    p = SelectivityProbe(LinearProbe(kind="ridge", l2=1.0)).fit(X, y)
    assert p.task_score_ > 0.95  # R^2 of the planted linear map
    assert p.control_score_ < 0.05  # random targets of unseen rows: no better than predicting the mean
    assert p.selectivity_ > 0.9


def test_mlp_probe_learns_nonlinear_planted_rule():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1000, 2, generator=g)
    y = ((X[:, 0] > 0) ^ (X[:, 1] > 0)).long().numpy()  # XOR: not linearly decodable
    Xte = torch.randn(1000, 2, generator=g)
    yte = ((Xte[:, 0] > 0) ^ (Xte[:, 1] > 0)).long().numpy()
    assert LinearProbe().fit(X, y).score(Xte, yte) < 0.6
    m = MLPProbe(hidden=(32,), l2=1e-3, max_iter=150).fit(X, y)
    assert m.score(Xte, yte) > 0.95
    with pytest.raises(AttributeError, match="no single direction"):
        m.direction_()
    r = MLPProbe(hidden=(32,), task="regressor", max_iter=150).fit(X, (X[:, 0] * X[:, 1]).numpy())
    assert r.score(Xte, (Xte[:, 0] * Xte[:, 1]).numpy()) > 0.95


def test_cross_val_score_by_group():
    X, y, _ = planted_logistic(n=1000, d=5, scale=3.0)
    s = cross_val_score(LinearProbe(), X, y, groups=np.arange(1000) // 10, n_splits=4)
    assert s.shape == (4,) and (s > 0.8).all()


# ------------------------------------------------------------------ streaming from a store
def test_fit_stream_from_store(tmp_path):
    policy = make_policy()
    hm = HookedModel(policy)
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(3000, 6, generator=g)
    # planted labels: a noisy linear read-out of the site's activation
    _, cache = hm.run_with_cache(obs, sites=["3"])
    s = cache.features("3") @ torch.randn(16, generator=g)
    labels = (torch.rand(3000, generator=g) < torch.sigmoid(3 * (s - s.mean()) / s.std())).long()
    batches = [(obs[i:i + 250], labels[i:i + 250]) for i in range(0, 3000, 250)]
    store = ActivationStore.collect(hm, batches, sites=["3"], path=tmp_path / "store", batches_per_shard=2,
                                    progress=False)
    X = store.features("3")
    full = LinearProbe(kind="ridge", l2=2.0).fit(X, (X @ torch.arange(16.0)).numpy())
    streamed = LinearProbe(kind="ridge", l2=2.0).fit_stream(store, "3", y=(X @ torch.arange(16.0)), batch_size=128)
    assert np.abs(full.coef_.numpy() - streamed.coef_.numpy()).max() < 1e-5  # exact sufficient statistics
    rc = LinearProbe(kind="ridge_classifier", l2=1.0).fit(X, labels.numpy())
    rcs = LinearProbe(kind="ridge_classifier", l2=1.0).fit_stream(store, "3", batch_size=100)  # labels from store
    assert np.abs(rc.coef_.numpy() - rcs.coef_.numpy()).max() < 1e-5
    # Adam on mini-batches approaches the full-batch L-BFGS optimum
    lf = LinearProbe(kind="logistic", l2=1.0).fit(X, labels.numpy())
    ls = LinearProbe(kind="logistic", l2=1.0).fit_stream(store, "3", batch_size=256, epochs=20, lr=0.1)
    assert abs(lf.score(X, labels.numpy()) - ls.score(X, labels.numpy())) < 0.01
    # the site's 16 features come from 6 inputs (nearly collinear), so compare decisions and objectives
    assert np.corrcoef(lf.decision_function(X), ls.decision_function(X))[0, 1] > 0.99

    def objective(p):
        z = torch.as_tensor(lf.decision_function(X) if p is lf else ls.decision_function(X))
        ce = torch.nn.functional.binary_cross_entropy_with_logits(z, labels.double(), reduction="sum")
        return float(ce + 0.5 * ((p.coef_ * p.scale_.double()) ** 2).sum())
    assert objective(lf) <= objective(ls) < objective(lf) * 1.02


# ------------------------------------------------------------------ sweeps on the three model kinds
def _sweep_case(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "cnn":
        model, x, sites = make_cnn(), torch.randn(400, 3, 8, 8, generator=g), ["stem", "block", "head"]
    elif kind == "vit":
        model, x, sites = make_vit(), torch.randn(400, 3, 16, 16, generator=g), ["blocks.0", "blocks.1", "head"]
    else:
        model, x, sites = make_policy(), torch.randn(400, 6, generator=g), ["0", "2", "4"]
    with torch.no_grad():
        labels = model(x).argmax(1)  # planted: the model's own decision is linearly readable at its logits
    return model, x, labels, sites


@pytest.mark.parametrize("kind", ["cnn", "vit", "policy"])
def test_probe_sites_sweep(kind, tmp_path):
    model, x, labels, sites = _sweep_case(kind)
    hm = HookedModel(model)
    res = probe_sites(hm, x, labels, sites=sites, pool="mean", control=True, batch_size=128)
    assert isinstance(res, ProbeSweepResult)
    assert res.sites == sites
    last = res.table[-1]
    # the logits site determines the label by argmax: a linear probe reads it (near) perfectly
    assert last["test_score"] > 0.9
    assert last["selectivity"] == pytest.approx(last["test_score"] - last["control_score"])
    # control labels of unseen inputs are unpredictable: at most the majority-class rate (plus noise)
    majority = np.bincount(labels.numpy()).max() / len(labels)
    assert all(r["control_score"] <= majority + 0.1 for r in res.table)
    for row in res.table:
        assert row["n_train"] + row["n_test"] == 400
        # independent check: the sweep's probe equals a probe fitted directly on the same split
        _, cache = hm.run_with_cache(x, sites=[row["site"]], pool="mean")
        assert res.probes[row["site"]].n_features_in_ == cache.features(row["site"]).shape[1]
    fig = res.plot()
    assert len(fig.axes[0].lines) == 4
    res.save(tmp_path / "sweep.json")
    assert "table" in res.to_dict()


def test_probe_sites_matches_direct_fit_and_unpooled_rows():
    model, x, labels, _ = _sweep_case("cnn")
    hm = HookedModel(model)
    res = probe_sites(hm, x, labels, sites=["block"], pool=None, control=False, test_size=0.25, seed=2)
    _, cache = hm.run_with_cache(x, sites=["block"])
    X = cache.features("block")  # [400 * 64, 8]: positions folded into rows
    tr, te = train_test_split_by_group(400, np.arange(400), 0.25, 2)
    rows_te = np.repeat(np.isin(np.arange(400), te), 64)
    y_rows = np.repeat(labels.numpy(), 64)
    direct = LinearProbe(tol=3e-4, constant_features="ignore").fit(X[torch.as_tensor(~rows_te)], y_rows[~rows_te])
    assert res.table[0]["n_test"] == 100 * 64
    assert res.table[0]["test_score"] == pytest.approx(direct.score(X[torch.as_tensor(rows_te)], y_rows[rows_te]))
    assert np.allclose(res.probes["block"].coef_.numpy(), direct.coef_.numpy(), atol=1e-6)


def test_probe_sites_on_a_collected_cache_equals_running_the_model():
    model, x, labels, sites = _sweep_case("policy")
    hm = HookedModel(model)
    _, cache = hm.run_with_cache(x, sites=sites)
    a = probe_sites(hm, x, labels, sites=sites, pool="mean", control=True)
    b = probe_sites(hm, cache, labels, sites=sites, pool="mean", control=True)
    for ra, rb in zip(a.table, b.table):
        assert ra["test_score"] == pytest.approx(rb["test_score"])
        assert ra["control_score"] == pytest.approx(rb["control_score"])
