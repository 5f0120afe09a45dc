"""The preconditioned joint logistic solver (``interp_core.probes.joint``) behind ``fit_many``: whitened and
joint fits reach scikit-learn's optimum (``LogisticRegression`` on standardised features) to the solver
tolerance, and equal plain / separate fits."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import interp_core.probes.linear as linear_mod
from interp_core.probes import LinearProbe, fit_many
from interp_core.probes.joint import LogisticTask, fit_logistic_joint, whitening


def correlated_site(n=3000, d=24, classes=(5, 3, 2), seed=0):
    """Ill-conditioned features (a residual-stream-like spectrum, offsets) and one planted variable per entry
    of ``classes``, each a softmax read-out of the features."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    X = (rng.normal(size=(n, d)) * np.geomspace(3.0, 0.02, d)) @ basis.T + rng.normal(size=d)
    Xs = (X - X.mean(0)) / X.std(0)
    ys = [np.argmax(Xs @ rng.normal(size=(d, k)) + rng.gumbel(size=(n, k)), 1) for k in classes]
    return torch.as_tensor(X), ys


def sklearn_fit(X, y, tol=1e-10, **kw):
    """The reference: scikit-learn on standardised features: ``(model, scaler, coef, intercept)``, the last two in
    standardised coordinates (where the solvers' tolerance applies)."""
    sc = StandardScaler().fit(X)
    m = LogisticRegression(C=1.0, tol=tol, max_iter=20000, **kw).fit(sc.transform(X), y)
    return m, sc, m.coef_, m.intercept_


def std_coords(p):
    """A probe's ``(coef, intercept)`` in its standardised coordinates (``coef_`` is in the original space)."""
    coef = p.coef_.numpy()
    return coef * p.scale_.double().numpy(), p.intercept_.numpy() + coef @ p.mean_.double().numpy()


def close_to(p, coef, icpt, atol):
    c, b = std_coords(p)
    return np.abs(c - coef).max() < atol and np.abs(b - icpt).max() < atol


def objective_grad(X, y, coef, intercept, sw=None):
    """``max |grad|`` of scikit-learn's multinomial objective (standardised coordinates), float64 numpy."""
    sc = StandardScaler().fit(X)
    Xs = sc.transform(X)
    c_std, b_std = coef * sc.scale_, intercept + coef @ sc.mean_
    n = len(y)
    w = np.ones(n) if sw is None else sw
    Z = Xs @ c_std.T + b_std
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    P[np.arange(n), y] -= 1.0
    G = P * (w / w.sum())[:, None]
    gW = G.T @ Xs + c_std / w.sum()
    return max(np.abs(gW).max(), np.abs(G.sum(0)).max())


def test_whitened_fit_equals_sklearn_optimum_at_tight_tolerance():
    X, ys = correlated_site()
    for y in ys[:2]:  # multinomial (5 and 3 classes)
        p = LinearProbe(l2=1.0, dtype="float64", tol=1e-9, max_iter=5000).fit(X, y)
        m, sc, coef, icpt = sklearn_fit(X.numpy(), y)
        assert p.converged_
        assert close_to(p, coef, icpt, 1e-5)
        np.testing.assert_array_equal(p.predict(X), m.predict(sc.transform(X.numpy())))
        # the gradient test holds on scikit-learn's own objective, computed independently
        assert objective_grad(X.numpy(), y, p.coef_.numpy(), p.intercept_.numpy()) <= 1e-9 * 1.01


def test_binary_probe_equals_sklearn():
    X, ys = correlated_site(classes=(2,))
    y = ys[0]
    p = LinearProbe(l2=1.0, dtype="float64", tol=1e-10, max_iter=5000).fit(X, y)
    m, sc, coef, icpt = sklearn_fit(X.numpy(), y, tol=1e-12)
    assert p.coef_.shape == (1, X.shape[1])
    # scikit-learn's objective and gradient (sigmoid loss), computed here in float64
    Xs, n = sc.transform(X.numpy()), len(y)

    def f_grad(c, b):
        z = Xs @ c[0] + b[0]
        r = 1 / (1 + np.exp(-z)) - y
        f = np.mean(np.logaddexp(0, z) - y * z) + 0.5 / n * (c ** 2).sum()
        return f, max(np.abs(Xs.T @ r / n + c[0] / n).max(), abs(r.mean()))

    f_ours, g_ours = f_grad(*std_coords(p))
    f_sk, _ = f_grad(coef, icpt)
    assert g_ours <= 1e-10 * 1.01
    assert f_ours <= f_sk + 1e-12  # scipy's lbfgs stops on f first (its gradient here is ~1e-8)
    assert close_to(p, coef, icpt, 5e-5)
    np.testing.assert_array_equal(p.predict(X), m.predict(Xs))


def test_default_float32_fit_meets_tol_on_sklearns_objective():
    # the default probe (float32 products, tol 1e-4) against scikit-learn at the same tolerance: the gradient of
    # the exact float64 objective at our solution is within tol (plus float32 rounding), predictions agree
    X, ys = correlated_site(n=4000, seed=1)
    y = ys[0]
    p = LinearProbe(l2=1.0).fit(X, y)
    m, sc, _, _ = sklearn_fit(X.numpy(), y, tol=1e-4)
    assert p.converged_
    assert objective_grad(X.numpy(), y, p.coef_.numpy(), p.intercept_.numpy()) <= 1.5e-4
    agree = np.mean(p.predict(X) == m.predict(sc.transform(X.numpy())))
    assert agree >= 0.99
    assert abs(p.score(X, y) - m.score(sc.transform(X.numpy()), y)) <= 0.005


def test_joint_fit_equals_separate_fits_and_runs_one_joint_solve(monkeypatch):
    X, ys = correlated_site()
    calls = []
    real = linear_mod.fit_logistic_joint

    def spy(Xs, tasks, **kw):
        calls.append(len(tasks))
        return real(Xs, tasks, **kw)

    monkeypatch.setattr(linear_mod, "fit_logistic_joint", spy)
    joint = fit_many([LinearProbe(dtype="float64", tol=1e-9, max_iter=5000) for _ in ys], [X] * 3, ys)
    assert calls == [3]  # one solve, one wide product per evaluation, for the three variables
    # equal values in different tensors are recognised too
    calls.clear()
    fit_many([LinearProbe(tol=1e-3) for _ in ys], [X.clone() for _ in ys], ys)
    assert calls == [3]
    calls.clear()
    separate = fit_many([LinearProbe(dtype="float64", tol=1e-9, max_iter=5000) for _ in ys], [X] * 3, ys,
                        joint=False)
    assert calls == [1, 1, 1]
    for a, b in zip(joint, separate):
        assert a.converged_ and b.converged_
        assert close_to(a, *std_coords(b), 1e-5)
    assert close_to(joint[1], *sklearn_fit(X.numpy(), ys[1])[2:], 1e-5)  # (all three: the tests above)


def test_whitening_is_a_change_of_variables_only():
    # plain L-BFGS (original coordinates) and whitened L-BFGS reach the same optimum; whitening needs far fewer
    # iterations on correlated features
    X, ys = correlated_site()
    kw = dict(dtype="float64", tol=1e-8, max_iter=20000)
    white = fit_many([LinearProbe(**kw) for _ in ys], [X] * 3, ys)
    plain = fit_many([LinearProbe(**kw) for _ in ys], [X] * 3, ys, precondition=False, joint=False)
    for a, b in zip(white, plain):
        assert a.converged_ and b.converged_
        assert close_to(a, *std_coords(b), 1e-4)
        assert a.n_iter_ * 3 < b.n_iter_


def test_whitening_matrix_whitens():
    X, _ = correlated_site(n=500, d=6)
    Xs = (X - X.mean(0)) / X.std(0)  # float64: the Gram is formed in the rows' dtype
    reg = 1e-3
    M, M_inv = whitening(Xs, True, reg, curvature=0.25)
    Xa = torch.cat([Xs, torch.ones(len(Xs), 1)], 1).double()
    A = 0.25 * Xa.T @ Xa / len(Xs)
    A.diagonal()[:6] += reg
    torch.testing.assert_close(M @ A @ M, torch.eye(7, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(M @ M_inv, torch.eye(7, dtype=torch.float64), atol=1e-8, rtol=0)


def test_joint_with_class_weights_equals_sklearn():
    X, ys = correlated_site(n=1500, d=12, classes=(4, 3))
    y0 = ys[0].copy()
    y0[y0 == 3] = np.where(np.arange((y0 == 3).sum()) % 4 == 0, 3, 0)  # imbalanced
    probes = [LinearProbe(class_weight="balanced", dtype="float64", tol=1e-9, max_iter=5000),
              LinearProbe(dtype="float64", tol=1e-9, max_iter=5000)]
    fit_many(probes, [X, X], [y0, ys[1]])
    for p, y, cw in zip(probes, [y0, ys[1]], ["balanced", None]):
        assert close_to(p, *sklearn_fit(X.numpy(), y, class_weight=cw)[2:], 1e-5)


def test_no_intercept_unstandardised_equals_sklearn():
    X, ys = correlated_site(d=10)
    Xc = X - X.mean(0)
    p = LinearProbe(standardize=False, fit_intercept=False, dtype="float64", tol=1e-9, max_iter=5000).fit(Xc, ys[0])
    m = LogisticRegression(C=1.0, fit_intercept=False, tol=1e-10, max_iter=20000).fit(Xc.numpy(), ys[0])
    assert np.abs(p.coef_.numpy() - m.coef_).max() < 1e-5
    assert np.all(p.intercept_.numpy() == 0)


@pytest.mark.parametrize("start", ["good", "bad"])
def test_start_is_used_only_where_it_helps(start):
    X, ys = correlated_site(d=8)
    Xs = ((X - X.mean(0)) / X.std(0)).contiguous()
    y = torch.as_tensor(ys[0])
    ref = fit_logistic_joint(Xs, [LogisticTask(y=y, n_out=5, sw=None, l2=1.0, tol=1e-9, max_iter=5000)])[0]
    noise = torch.randn(ref[0].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    beta0 = ref[0] + 1e-3 * noise if start == "good" else 50.0 * noise
    out = fit_logistic_joint(Xs, [LogisticTask(y=y, n_out=5, sw=None, l2=1.0, tol=1e-9, max_iter=5000,
                                               start=beta0)])[0]
    assert out[2]
    assert torch.allclose(out[0], ref[0], atol=1e-6)
    if start == "good":
        assert out[1] < ref[1]


def test_wide_features_skip_whitening_and_still_reach_the_optimum():
    # d = 300 > 256 x 1 output row: solved in the original coordinates; the same optimum as scikit-learn
    rng = np.random.default_rng(3)
    X = torch.as_tensor(rng.normal(size=(400, 300)))
    y = (X[:, :5].sum(1).numpy() + rng.normal(size=400) > 0).astype(int)
    p = LinearProbe(dtype="float64", tol=1e-8, max_iter=5000).fit(X, y)
    m, sc, coef, icpt = sklearn_fit(X.numpy(), y)
    assert p.converged_
    assert close_to(p, coef, icpt, 1e-5)
    np.testing.assert_array_equal(p.predict(X), m.predict(sc.transform(X.numpy())))
