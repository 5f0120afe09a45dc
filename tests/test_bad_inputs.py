"""Bad inputs, property-based: every public method, given random wrong shapes, dtypes, empty or NaN batches,
unknown site names, or a model left in train mode or frozen, either returns the right answer or raises the
suite's own error (an ``InterpError`` whose message names the argument) — never a raw library traceback,
and never a change to the model (weights, buffers, train/eval flags, ``requires_grad``, hooks)."""

from __future__ import annotations

import tempfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interp_core import ActivationStore, HookedModel
from interp_core.attribution import attribute
from interp_core.errors import InterpError
from interp_core.metrics import logit_diff
from interp_core.patching import ablation_sweep, attribution_patching, patch_sweep
from interp_core.probes import probe_sites
from interp_core.similarity import similarity_matrix
from interp_core.steering import diff_means

from .conftest import make_cnn, make_policy, make_vit

MODELS = {
    "cnn": (make_cnn, (3, 8, 8), "block"),
    "vit": (make_vit, (3, 16, 16), "blocks.0.resid_post"),
    "policy": (make_policy, (6,), "2"),
}


def _methods(site: str):
    metric = logit_diff(0, 1)
    return {
        "run_with_cache": lambda m, x, s: HookedModel(m).run_with_cache(x, sites=[s]),
        "patch_sweep": lambda m, x, s: patch_sweep(m, x, x.flip(0) if _is_t(x) else x, [s], metric, per="site",
                                                   progress=False),
        "ablation_sweep": lambda m, x, s: ablation_sweep(m, x, [s], metric, per="site", progress=False),
        "attribution_patching": lambda m, x, s: attribution_patching(m, x, x.flip(0) if _is_t(x) else x, [s],
                                                                     metric),
        "probe_sites": lambda m, x, s: probe_sites(m, x, torch.arange(_len(x)) % 2, sites=[s], pool="mean"),
        "attribute": lambda m, x, s: attribute(m, x, "layer_gradcam", site=s, target=0),
        "diff_means": lambda m, x, s: diff_means(m, x, x, s),
        "similarity_matrix": lambda m, x, s: similarity_matrix(m, None, x, [s], [s]),
        "store": lambda m, x, s: ActivationStore.collect(m, x, [s], tempfile.mkdtemp(), pool="mean",
                                                         progress=False),
    }


def _is_t(x):
    return isinstance(x, torch.Tensor) and x.dim() > 0 and len(x) > 0


def _len(x):
    return len(x) if hasattr(x, "__len__") else 1


def _corrupt(kind: str, shape: tuple[int, ...], rng: torch.Generator) -> tuple[torch.Tensor, str]:
    """A batch of 6 inputs spoiled in one way; returns ``(inputs, site_override or "")``."""
    x = torch.randn(6, *shape, generator=rng)
    if kind == "ok":
        return x, ""
    if kind == "nan":
        flat = x.reshape(-1)
        flat[int(torch.randint(flat.numel(), (1,), generator=rng))] = float("nan")
        return x, ""
    if kind == "inf":
        x.reshape(-1)[0] = float("inf")
        return x, ""
    if kind == "empty":
        return x[:0], ""
    if kind == "unbatched":
        return x[0], ""
    if kind == "extra_dim":
        return x[:, None], ""
    if kind == "wrong_width":
        return torch.randn(6, *shape[:-1], shape[-1] + 3, generator=rng), ""
    if kind == "int":
        return (x * 10).long(), ""
    if kind == "bool":
        return x > 0, ""
    if kind == "unknown_site":
        return x, "no.such.site"
    raise AssertionError(kind)


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
            [sorted(vars(m)) for m in model.modules()])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_kind=st.sampled_from(sorted(MODELS)),
       method=st.sampled_from(sorted(_methods("x"))),
       corruption=st.sampled_from(["ok", "nan", "inf", "empty", "unbatched", "extra_dim", "wrong_width", "int", "bool",
                                   "unknown_site"]),
       mode=st.sampled_from(["eval", "train", "frozen"]),
       seed=st.integers(0, 2**16))
def test_every_method_answers_right_or_raises_the_suites_error(model_kind, method, corruption, mode, seed):
    make, shape, site = MODELS[model_kind]
    model = make()
    if mode == "train":
        model.train()
    elif mode == "frozen":
        model.requires_grad_(False)
    x, site_override = _corrupt(corruption, shape, torch.Generator().manual_seed(seed))
    before = _state(model)
    fn = _methods(site)[method]
    try:
        got = fn(model, x, site_override or site)
    except InterpError as e:
        assert str(e), "the suite's errors always say what was wrong"
    except Exception as e:  # noqa: BLE001 - this is what the test is about
        pytest.fail(f"{method} on a {model_kind} ({mode}) with {corruption} input raised a raw "
                    f"{type(e).__name__}: {e}")
    else:
        # run_with_cache is the primitive: it computes what the model computes on what it is given (NaN in,
        # NaN out); every analysis refuses NaN, infinite, empty and unbatched data
        primitive = method == "run_with_cache" and corruption in ("nan", "inf", "empty", "unbatched")
        assert primitive or corruption in ("ok", "int", "bool", "extra_dim", "wrong_width") or (
            corruption == "unbatched" and model_kind == "policy"), f"{method} accepted {corruption} input"
        if corruption == "ok" and mode != "eval" and not (method == "run_with_cache" and mode == "train"):
            # train mode and frozen weights change nothing about the answer: analyses run in eval mode
            # (run_with_cache is the primitive: it keeps the model's mode, warns once and restores buffers)
            ref_model = make()
            ref = fn(ref_model, x, site)
            _assert_same(got, ref)
    after = _state(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0]), "weights or buffers changed"
    assert before[1:] == after[1:], "flags, requires_grad, hooks or module attributes changed"


def _assert_same(a, b):
    if isinstance(a, tuple):  # run_with_cache
        a, b = a[1], b[1]
        for k in a:
            torch.testing.assert_close(a[k], b[k])
        return
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b)
        return
    for name in ("effects", "attributions", "values"):
        if hasattr(a, name):
            va, vb = getattr(a, name), getattr(b, name)
            if isinstance(va, dict):
                for k in va:
                    torch.testing.assert_close(torch.as_tensor(va[k]), torch.as_tensor(vb[k]))
            else:
                torch.testing.assert_close(torch.as_tensor(va), torch.as_tensor(vb))
            return
    if hasattr(a, "table"):
        assert [r.get("test_score") for r in a.table] == [r.get("test_score") for r in b.table]
