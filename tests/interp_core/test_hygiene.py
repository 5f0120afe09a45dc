"""Hook hygiene, property-based: after many randomized interventions, some raising inside the block, the
model has no leftover hooks, the user's own hooks still fire, and weights, requires_grad and train/eval
flags are exactly as before. 200 examples x 5-10 interventions = at least 1,000 interventions."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interp_core import HookedModel
from interp_core.interventions import Ablate, Patch, ProjectOut, Replace, Steer

from ..conftest import make_cnn

MODEL = make_cnn()
X = torch.randn(2, 3, 8, 8)
HM = HookedModel(MODEL, example_input=X)
SITES = [n for n in HM.sites.names if HM.sites[n].axes and "feature" in HM.sites[n].axes]
_, CLEAN = HM.run_with_cache(X, sites=SITES)
USER_CALLS = {"n": 0}
MODEL.block.conv2.register_forward_hook(lambda m, a, o: USER_CALLS.__setitem__("n", USER_CALLS["n"] + 1))
MODEL.stem.register_forward_pre_hook(lambda m, a: None)


class Boom(Exception):
    pass


def _hook_count():
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in MODEL.modules())


BASE_HOOKS = _hook_count()


def make(kind, site, rng):
    d = CLEAN.features(site).shape[1]
    if kind == "patch":
        return Patch(CLEAN)
    if kind == "zero":
        return Ablate("zero", features=[int(rng.integers(d))])
    if kind == "mean":
        return Ablate("mean", stats=CLEAN)
    if kind == "resample":
        return Ablate("resample", stats=CLEAN, seed=int(rng.integers(100)))
    if kind == "steer":
        return Steer(torch.randn(d), alpha=float(rng.normal()))
    if kind == "project":
        return ProjectOut(torch.randn(d))
    if kind == "raise":
        return Replace(lambda a: (_ for _ in ()).throw(Boom()))
    return Replace(lambda a: a * 0.5)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(st.tuples(st.sampled_from(SITES),
                            st.sampled_from(["patch", "zero", "mean", "resample", "steer", "project", "raise",
                                             "replace"])), min_size=5, max_size=10),
    raise_in_block=st.booleans(),
    train_flags=st.lists(st.booleans(), min_size=9, max_size=9),
    freeze=st.lists(st.booleans(), min_size=8, max_size=8),
    seed=st.integers(0, 2**16),
)
def test_randomized_interventions_leave_no_trace(plan, raise_in_block, train_flags, freeze, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    for m, f in zip(MODEL.modules(), train_flags):
        m.training = f
    for p, f in zip(MODEL.parameters(), freeze):
        p.requires_grad_(f)
    flags = [m.training for m in MODEL.modules()]
    grads = [p.requires_grad for p in MODEL.parameters()]
    state = {k: v.clone() for k, v in MODEL.state_dict().items()}
    ivs = {}
    for site, kind in plan:
        ivs.setdefault(site, []).append(make(kind, site, rng))
    before_user = USER_CALLS["n"]
    raised = False
    try:
        with HM.intervene(ivs):
            with HM.evaluating():
                MODEL(X)
            if raise_in_block:
                raise Boom()
    except Boom:
        raised = True
    assert raised == (raise_in_block or any(k == "raise" for _, k in plan))
    assert _hook_count() == BASE_HOOKS
    assert [m.training for m in MODEL.modules()] == flags
    assert [p.requires_grad for p in MODEL.parameters()] == grads
    assert all(torch.equal(state[k], v) for k, v in MODEL.state_dict().items())
    MODEL.eval()
    MODEL(X)  # the user's own hook still fires after every exit path
    assert USER_CALLS["n"] > before_user


# ---------------------------------------------------------------------------------------------- forward overrides
def _vit():
    import vision

    from ..conftest import make_vit

    vit = make_vit()
    return vit, vision.wrap(vit)


VIT, VIT_HM = _vit()
VX = torch.randn(2, 3, 16, 16)
with torch.no_grad():
    VREF = VIT(VX)
OVERRIDABLE = ["blocks.0", "blocks.1", "blocks.0.attn", "blocks.1.mlp", "norm", "head"]
VIRTUAL = ["blocks.0.attn.z", "blocks.1.attn.pattern", "blocks.0.resid_mid"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.tuples(st.sampled_from(OVERRIDABLE), st.floats(-2, 2)), min_size=1, max_size=6),
       order=st.randoms(use_true_random=False), virtual=st.lists(st.sampled_from(VIRTUAL), max_size=3, unique=True),
       fail=st.booleans())
def test_forward_overrides_and_virtual_sites_in_any_order_leave_the_model_as_it_was(ops, order, virtual, fail):
    """Forward overrides (what patching's prefix reuse and the ViT's per-head sites use) stacked on the same
    modules and removed in a random order, some while an intervention on a virtual site is active and some
    after an exception: the model computes exactly what it did before, with its own forwards."""
    from interp_core.forwards import active_overrides, replace_forward

    removal = list(range(len(ops)))
    order.shuffle(removal)  # drawn before any override exists: hypothesis may stop an example while drawing
    handles = [replace_forward(VIT.get_submodule(path), lambda m, inner, k=k: (lambda *a, **kw: inner(*a, **kw) * k))
               for path, k in ops]
    handles = [handles[i] for i in removal]
    try:
        with VIT_HM.intervene({v: Replace(lambda a: a) for v in virtual}):
            for h in handles[: len(handles) // 2]:
                h.remove()
            with torch.no_grad():
                VIT(VX)
            if fail:
                raise Boom()
    except Boom:
        pass
    finally:
        for h in handles:
            h.remove()
    left = [n for n, m in VIT.named_modules() if active_overrides(m) or "forward" in m.__dict__]
    assert not left, left
    with torch.no_grad():
        assert torch.equal(VIT(VX), VREF)
