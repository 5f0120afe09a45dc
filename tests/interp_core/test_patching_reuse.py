"""Patching at the compute floor: each patched run starts after the patched site, reusing the base run's output
of the site's own module. Checked against one-forward-per-patch loops written with plain ``register_forward_hook``
(no interp_core involved), on a ViT, a CNN and a policy, in both modes, and by counting what actually ran."""

import pytest
import torch
from torch import nn

from interp_core import HookedModel
from interp_core.metrics import logit_diff
from interp_core.patching import ablation_sweep, patch_sweep

from ..conftest import make_cnn, make_policy, make_vit


def tiny_vit():
    return make_vit(in_chans=1, num_classes=10, depth=3, mlp_ratio=2.0)


# (model, data, [(site, module path, how a unit is indexed in the module's output)])
CASES = {
    "vit": (tiny_vit, lambda g: torch.randn(3, 1, 16, 16, generator=g),
            [("blocks.0", "blocks.0", "token"), ("blocks.1.resid_post", "blocks.1", "token"),
             ("blocks.2", "blocks.2", "token")]),
    "cnn": (make_cnn, lambda g: torch.randn(3, 3, 8, 8, generator=g),
            [("stem", "stem", "cell"), ("block.bn1", "block.bn1", "cell"), ("block", "block", "cell")]),
    "policy": (make_policy, lambda g: torch.randn(3, 6, generator=g),
               [("0", "0", "unit"), ("2", "2", "unit"), ("3", "3", "unit")]),
}


def _select(out: torch.Tensor, how: str, unit: tuple[int, ...]) -> tuple:
    if how == "token":
        return (slice(None), unit[0], slice(None))  # [batch, pos, feature]: one token, all features
    if how == "cell":
        return (slice(None), slice(None), unit[0], unit[1])  # [batch, channel, h, w]: one cell, all channels
    return (slice(None), unit[0])  # [batch, feature]: one unit


def plain_hook_loop(model, base, source, path, how, grid_shape, metric):
    """The reference: record the source's output of ``path`` with a plain forward hook, then one forward of
    ``base`` per unit with a hook that writes the source's values at that unit; batch-mean metric per unit."""
    module = model.get_submodule(path)
    store = {}
    h = module.register_forward_hook(lambda m, a, o: store.__setitem__("src", o.detach().clone()))
    try:
        with torch.no_grad():
            model(source)
    finally:
        h.remove()
    values = torch.empty(grid_shape, dtype=torch.float64)
    for flat in range(values.numel()):
        unit = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), grid_shape))
        idx = _select(store["src"], how, unit)

        def patch(m, a, o, idx=idx):
            o = o.clone()
            o[idx] = store["src"][idx]
            return o

        h = module.register_forward_hook(patch)
        try:
            with torch.no_grad():
                values.reshape(-1)[flat] = float(metric(model(base)).mean())
        finally:
            h.remove()
    return values


@pytest.mark.parametrize(("mode", "rows"), [("denoising", 3), ("noising", 3), ("denoising", 1)])
@pytest.mark.parametrize("name", list(CASES))
def test_sweep_reusing_the_sites_own_output_equals_a_plain_hook_loop(name, mode, rows):
    """Also with one example (the reused values are then broadcast views, not copies)."""
    build, data, sites = CASES[name]
    model = build()
    hm = HookedModel(model)
    g = torch.Generator().manual_seed(7)
    clean, corrupted = data(g)[:rows], data(g)[:rows]
    metric = logit_diff(0, 1)
    base, source = (corrupted, clean) if mode == "denoising" else (clean, corrupted)
    res = patch_sweep(hm, clean, corrupted, [s for s, _, _ in sites], metric, mode=mode, batch_size=16,
                      progress=False)
    for site, path, how in sites:
        want = plain_hook_loop(model, base, source, path, how, tuple(res.metric_values[site].shape), metric)
        assert torch.allclose(res.metric_values[site].double(), want, atol=1e-5), (name, site)
    assert all("forward" not in m.__dict__ for m in model.modules())  # every override ended


@pytest.mark.parametrize("name", list(CASES))
def test_patched_runs_compute_only_what_follows_the_site(name, monkeypatch):
    """The site's own module computes only in the two unpatched runs; the readout sees every patched row.
    Without reuse, the site's module computes once per chunk as well."""
    build, data, sites = CASES[name]
    model = build()
    g = torch.Generator().manual_seed(2)
    clean, corrupted = data(g), data(g)
    hm = HookedModel(model)
    hm.trace(clean)
    site, path, _ = sites[1]
    target = model.get_submodule(path)
    own = type(target).forward
    computed = [0]

    def counting(self, *a, **kw):  # the class's own forward, i.e. the module really computing
        computed[0] += self is target
        return own(self, *a, **kw)

    monkeypatch.setattr(type(target), "forward", counting)
    last = [m for p, m in model.named_modules() if p and not list(m.children())][-1]  # the readout
    rows = [0]
    h = last.register_forward_hook(lambda m, a, o: rows.__setitem__(0, rows[0] + o.shape[0]))
    try:
        res = patch_sweep(hm, clean, corrupted, [site], logit_diff(0, 1), batch_size=8, progress=False)
        n_units = res.effects[site].numel()
        assert computed[0] == 2  # the corrupted (base) and clean (source) runs only
        assert rows[0] == 2 * 3 + n_units * 3  # two unpatched runs of 3 rows, then 3 rows per unit
        computed[0] = 0
        again = patch_sweep(hm, clean, corrupted, [site], logit_diff(0, 1), batch_size=8, reuse_prefix=False,
                            progress=False)
        assert computed[0] == 2 + -(-n_units // (8 // 3))  # recomputed in every chunk
        assert torch.allclose(again.effects[site], res.effects[site], atol=1e-5)
    finally:
        h.remove()


class SharedTwice(nn.Module):
    """One Linear applied twice (weight sharing): its per-call sites cannot reuse a single recorded output."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(5, 5)
        self.act = nn.Tanh()
        self.out = nn.Linear(5, 2)

    def forward(self, x):
        return self.out(self.act(self.lin(self.act(self.lin(x)))))


def test_a_module_called_twice_is_recomputed_and_still_exact():
    model = SharedTwice().eval()
    hm = HookedModel(model)
    g = torch.Generator().manual_seed(0)
    clean, corrupted = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    hm.trace(clean)
    res = patch_sweep(hm, clean, corrupted, ["lin#0", "lin#1"], logit_diff(0, 1), batch_size=8, progress=False)
    with torch.no_grad():
        store: list[torch.Tensor] = []
        h = model.lin.register_forward_hook(lambda m, a, o: store.append(o.clone()))
        model(clean)
        h.remove()
        for call in (0, 1):
            for u in range(5):
                seen = [0]

                def patch(m, a, o, call=call, u=u):
                    i, seen[0] = seen[0], seen[0] + 1
                    if i != call:
                        return None
                    o = o.clone()
                    o[:, u] = store[call][:, u]
                    return o

                h = model.lin.register_forward_hook(patch)
                want = float(logit_diff(0, 1)(model(corrupted)).mean())
                h.remove()
                assert abs(float(res.metric_values[f"lin#{call}"][u]) - want) < 1e-5, (call, u)


def test_ablation_sweep_reuses_the_sites_output_and_equals_zeroing_by_hand():
    model = tiny_vit()
    hm = HookedModel(model)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    res = ablation_sweep(hm, x, ["blocks.1"], logit_diff(2, 3), method="zero", batch_size=16, progress=False)
    with torch.no_grad():
        base = float(logit_diff(2, 3)(model(x)).mean())
        for t in range(res.effects["blocks.1"].numel()):
            def zero(m, a, o, t=t):
                o = o.clone()
                o[:, t] = 0
                return o
            h = model.blocks[1].register_forward_hook(zero)
            want = float(logit_diff(2, 3)(model(x)).mean()) - base
            h.remove()
            assert abs(float(res.effects["blocks.1"][t]) - want) < 1e-5, t


class InPlaceOnReused(nn.Module):
    """The forward writes in place to module outputs that patching reuses, and reads ``a``'s again after the
    patched site ``b`` (a skip connection)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a, self.b, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        h += 1.0
        z = self.b(h)
        z.mul_(2.0)
        return self.out(torch.relu(z + h))


@pytest.mark.parametrize("rows", [1, 2])
def test_reused_outputs_written_in_place_are_fresh_in_every_chunk(rows):
    """Copies of reused outputs are kept between chunks only while no in-place op touched them: with three
    chunks, a stale copy would add 1 again in each and drift from the plain loop. With one row the copies are
    broadcast views, which the in-place write refuses: the sweep falls back to real copies."""
    model = InPlaceOnReused().eval()
    hm = HookedModel(model)
    g = torch.Generator().manual_seed(3)
    clean, corrupted = torch.randn(rows, 4, generator=g), torch.randn(rows, 4, generator=g)
    metric = logit_diff(0, 1)
    res = patch_sweep(hm, clean, corrupted, ["a", "b"], metric, batch_size=2 * rows, progress=False)  # 2 per chunk
    for site in ("a", "b"):
        want = plain_hook_loop(model, corrupted, clean, site, "unit", (6,), metric)
        assert torch.allclose(res.metric_values[site].double(), want, atol=1e-6), site


class TwoActs(nn.Module):
    """``act`` runs twice (so it is never reused); it runs before the site ``c``."""

    def __init__(self, stale_batch: bool = False):
        super().__init__()
        torch.manual_seed(2)
        self.a, self.b, self.c, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.act = nn.Tanh()
        self.stale_batch = stale_batch

    def forward(self, x):
        n = x.shape[0]
        y = self.out(self.c(self.act(self.b(self.act(self.a(x))))) + x.sum(1, keepdim=True))  # a skip from x
        return y.reshape(n, -1) if self.stale_batch else y  # a batch size taken before the site


@pytest.mark.parametrize("stale_batch", [False, True])
def test_one_example_runs_the_prefix_on_one_row_or_falls_back_to_copies(stale_batch):
    """With one base example, code before the site that is not reused (here ``act``, which runs twice) runs on
    one row, not one per patch; a model that reshapes with a batch size read before the site cannot run that
    way, and the sweep falls back to stacked copies. Both equal the plain hook loop."""
    model = TwoActs(stale_batch).eval()
    hm = HookedModel(model)
    g = torch.Generator().manual_seed(4)
    clean, corrupted = torch.randn(1, 4, generator=g), torch.randn(1, 4, generator=g)
    hm.trace(clean)
    rows = [0]
    h = model.act.register_forward_hook(lambda m, a, o: rows.__setitem__(0, rows[0] + o.shape[0]))
    try:
        res = patch_sweep(hm, clean, corrupted, ["c"], logit_diff(0, 1), batch_size=2, progress=False)  # 4 chunks
    finally:
        h.remove()
    want = plain_hook_loop(model, corrupted, clean, "c", "unit", (8,), logit_diff(0, 1))
    assert torch.allclose(res.metric_values["c"].double(), want, atol=1e-6)
    unpatched = 2 * 2  # the base and source runs, two calls each
    if stale_batch:  # the first chunk fails on one row and is rerun with copies, as are the rest
        assert rows[0] == unpatched + 2 * 1 + 4 * 2 * 2
    else:
        assert rows[0] == unpatched + 4 * 2 * 1  # four chunks, two calls, one row each


@pytest.mark.parametrize("rows", [1, 3])
def test_cones_run_only_what_depends_on_the_site(rows, monkeypatch):
    """Where the model traces, each patched run computes only the nodes downstream of its site (the site's
    cone), with every other value read from the base run: the CartPole agent's critic head never runs in a
    patched row of an actor site, and block inputs (a pre-hook's semantics) and outputs of the digits ViT
    give the values of the hook path."""
    import rl
    import vision.zoo

    agent = rl.zoo.load("cartpole-ppo")
    g = torch.Generator().manual_seed(3)
    obs = torch.randn(2 * rows, 4, generator=g)
    sites = ["policy.0", "policy.1", "policy.3"]
    agent.trace(obs[:rows])
    critic = agent.model.net.value_net
    own = type(critic).forward
    computed = [0]

    def counting(self, *a, **kw):
        computed[0] += self is critic
        return own(self, *a, **kw)

    monkeypatch.setattr(type(critic), "forward", counting)
    diff = lambda out: out.logits[:, 0] - out.logits[:, 1]  # noqa: E731
    fast = patch_sweep(agent, obs[:rows], obs[rows:], sites, diff, progress=False)
    assert any(c is not None for c in agent._cones.values())
    assert computed[0] == 2  # the base and the source runs only
    slow = patch_sweep(agent, obs[:rows], obs[rows:], sites, diff, reuse_prefix=False, progress=False)
    monkeypatch.undo()
    for s in sites:
        assert torch.allclose(fast.metric_values[s], slow.metric_values[s], atol=1e-6), s

    vit = vision.zoo.load("digits-vit")
    X, y = vision.zoo.test_data("digits-vit")
    vsites = ["blocks.0.resid_pre", "blocks.1", "blocks.2.resid_pre", "blocks.2.resid_post"]
    fast = patch_sweep(vit, X[:rows], X[10:10 + rows], vsites, logit_diff(0, 1), progress=False)
    assert any(c is not None for c in vit._cones.values())
    slow = patch_sweep(vit, X[:rows], X[10:10 + rows], vsites, logit_diff(0, 1), reuse_prefix=False, progress=False)
    for s in vsites:
        assert torch.allclose(fast.metric_values[s], slow.metric_values[s], atol=1e-5), s
