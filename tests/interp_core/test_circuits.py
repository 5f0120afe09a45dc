"""interp_core.circuits on planted circuits with a known edge set (ViT, CNN, policy MLP).

Truths: hand-set weights whose only path from the input's signal to the logits is the planted one, a linear
model on which EAP is exact, hand-written hook loops for exact edge patching, the completeness of
integrated gradients, and scikit-learn's ROC AUC.
"""

from __future__ import annotations

import json

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from interp_core import HookedModel
from interp_core.circuits import (
    Circuit,
    acdc,
    build_graph,
    causal_scrubbing,
    completeness,
    eap,
    eap_ig,
    edge_patching,
    faithfulness,
    faithfulness_curve,
    minimality,
    node_attribution,
    top_k,
)
from interp_core.errors import InputError, InputTypeError
from interp_core.metrics import logit, logit_diff


# ---------------------------------------------------------------------------------------------- planted models
def planted_vit() -> nn.Module:
    """A real timm VisionTransformer (8x8 images, 4 patches + CLS, width 8, 2 blocks of 2 heads) with hand-set
    weights: block 0 head 0 queries from CLS (dim 2), keys on the marker position (dim 1, token 1), reads the
    patch content (dim 0) and writes dim 3, the only dim the classifier reads. Every other component writes
    dims nobody downstream reads (head 0.1 -> 5, block 1 head 0 reads dim 3 -> 6, MLPs -> 7). Planted edges:
    embed -> blocks.0.attn.z[0] -> logits."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=2, embed_dim=8, depth=2, num_heads=2,
                          mlp_ratio=1.0, global_pool="token", class_token=True, qkv_bias=True)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.norm = nn.Identity()
        for b in m.blocks:
            b.norm1.weight.fill_(1.0)
            b.norm2.weight.fill_(1.0)
        m.patch_embed.proj.weight[0] = 1 / 16
        m.cls_token[0, 0, 2] = 1.0
        m.pos_embed[0, 1, 1] = 1.0
        a0 = m.blocks[0].attn
        W = a0.qkv.weight  # rows: q 0..7, k 8..15, v 16..23; head h: features 4h..4h+3
        W[0, 2], W[8, 1], W[16, 0] = 5.0, 5.0, 1.0
        W[20, 0] = 1.0
        a0.proj.weight[3, 0] = 1.0
        a0.proj.weight[5, 4] = 1.0
        m.blocks[0].mlp.fc1.weight[0, 0] = 1.0
        m.blocks[0].mlp.fc2.weight[7, 0] = 1.0
        m.blocks[1].attn.qkv.weight[16, 3] = 1.0
        m.blocks[1].attn.proj.weight[6, 0] = 1.0
        m.blocks[1].mlp.fc1.weight[0, 5] = 1.0
        m.blocks[1].mlp.fc2.weight[7, 0] = 1.0
        m.head.weight[1, 3], m.head.weight[0, 3] = 1.0, -1.0
    return m.eval()


def vit_data(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean: the marker patch (top left) is +2, corrupted: -2; the other patches are random ±2 distractors."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (n, 2, 2), generator=g).float() * 4 - 2
    x = sign.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None] + 0.1 * torch.randn(n, 1, 8, 8, generator=g)
    clean, corr = x.clone(), x.clone()
    clean[:, :, :4, :4] += 2 - x[:, :, :4, :4].mean((2, 3), keepdim=True)
    corr[:, :, :4, :4] += -2 - x[:, :, :4, :4].mean((2, 3), keepdim=True)
    return clean, corr


VIT_TRUTH = {("embed", "blocks.0.attn.z[0]"), ("blocks.0.attn.z[0]", "logits")}


class PlantedCNN(nn.Module):
    """conv1 channel 0 detects a vertical 3-pixel bar, conv2 channel 0 copies it, fc reads only conv2 channel 0
    (max-pooled); the other channels see the noise and are read by nobody."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv1.weight[0] = torch.tensor([[-0.5, 1.0, -0.5]] * 3)
            self.conv1.bias[0] = -1.5
            self.conv2.weight[0] = 0.0
            self.conv2.weight[0, 0, 1, 1] = 1.0
            self.conv2.bias[0] = 0.0
            self.conv2.weight[1:, 0] = 0.0
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.weight[1, 0], self.fc.weight[0, 0] = 1.0, -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h))
        return self.fc(self.pool(h).flatten(1))


def cnn_data(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    corr = 0.3 * torch.rand(n, 1, 8, 8, generator=g)
    clean = corr.clone()
    for i in range(n):
        r, c = torch.randint(0, 6, (2,), generator=g).tolist()
        clean[i, 0, r:r + 3, c + 1] += 1.0
    return clean, corr


CNN_GROUPS = {"conv1": 4, "conv2": 4}
CNN_TRUTH = {("input", "conv1[0:1]"), ("conv1[0:1]", "conv2[0:1]"), ("conv2[0:1]", "logits")}


class PlantedPolicy(nn.Module):
    """obs[0] is the cue; unit 0 of l1 and unit 0 of l2 carry it to the action logits; the other units read the
    other observations and are read by nobody downstream of them that reaches the logits."""

    def __init__(self, relu: bool = True, planted: bool = True) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.l1, self.l2, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.relu = relu
        if planted:
            with torch.no_grad():
                self.l1.weight[0] = torch.tensor([2.0, 0, 0, 0])
                self.l1.weight[1:, 0] = 0.0
                self.l1.bias[0] = 0.0
                self.l2.weight[0] = torch.tensor([1.0, 0, 0, 0])
                self.l2.weight[1:, 0] = 0.0
                self.l2.bias[0] = 0.0
                self.out.weight.zero_()
                self.out.bias.zero_()
                self.out.weight[0, 0], self.out.weight[1, 0] = 1.0, -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu if self.relu else (lambda t: t)
        return self.out(f(self.l2(f(self.l1(x)))))


def policy_data(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(n, 4, generator=g)
    clean[:, 0] = 1.0
    corr = clean.clone()
    corr[:, 0] = -1.0
    return clean, corr


POLICY_GROUPS = {"input": 4, "l1": 4, "l2": 4}
POLICY_LAYERS = ["l1", "l2", "out"]
POLICY_TRUTH = {("input[0:1]", "l1[0:1]"), ("l1[0:1]", "l2[0:1]"), ("l2[0:1]", "out")}


@pytest.fixture(scope="module")
def vit():
    m = planted_vit()
    return m, build_graph(m)


@pytest.fixture(scope="module")
def cnn():
    m = PlantedCNN()
    return m, build_graph(m, groups=CNN_GROUPS, example_input=cnn_data(1)[0])


@pytest.fixture(scope="module")
def policy():
    m = PlantedPolicy()
    return m, build_graph(HookedModel(m, adapter="generic"), layers=POLICY_LAYERS, groups=POLICY_GROUPS)


def _cases(vit, cnn, policy):
    return [("vit", vit, vit_data(), logit_diff(1, 0), VIT_TRUTH),
            ("cnn", cnn, cnn_data(), logit_diff(1, 0), CNN_TRUTH),
            ("policy", policy, policy_data(), logit_diff(0, 1), POLICY_TRUTH)]


def _truth_vector(graph, truth):
    assert truth <= set(graph.edges), truth - set(graph.edges)
    return [1 if e in truth else 0 for e in graph.edges]


def _precision_recall(found, truth):
    found = set(found)
    tp = len(found & truth)
    return tp / max(1, len(found)), tp / len(truth)


# ---------------------------------------------------------------------------------------------- the graph
def test_vit_graph_nodes_edges_and_forward(vit):
    m, g = vit
    names = [n.name for n in g.nodes]
    assert names == ["embed", "blocks.0.attn.z[0]", "blocks.0.attn.z[1]", "blocks.0.mlp.out", "blocks.1.attn.z[0]",
                     "blocks.1.attn.z[1]", "blocks.1.mlp.out", "logits"]
    # every upstream writer to every downstream reader: 7 + 5 + 5 + 4 + 2 + 2 + 1
    assert g.n_edges == 26
    assert ("blocks.0.attn.z[0]", "blocks.0.attn.z[1]") not in g.edges  # heads of one block read the same input
    x, _ = vit_data(4)
    with torch.no_grad():
        out, writes = g.record(x)
        assert torch.allclose(out, m(x), atol=1e-5)
        # the residual stream at the end is the sum of all writes (plus the constant biases, zero here)
        resid = writes["stack"].sum(1)
    hm = HookedModel(m)
    _, cache = hm.run_with_cache(x, sites=["blocks.1.resid_post", "blocks.0.attn.z"])
    assert torch.allclose(resid, cache["blocks.1.resid_post"], atol=1e-5)
    # a head's write is its z projected through its slice of W_O
    z = cache["blocks.0.attn.z"][:, :, 1]
    w_o = m.blocks[0].attn.proj.weight[:, 4:8]
    assert torch.allclose(writes["stack"][:, 2], z @ w_o.T, atol=1e-5)


def test_sequential_graph_groups(cnn, policy):
    _, g = cnn
    assert [n.name for n in g.nodes][:3] == ["input", "conv1[0:1]", "conv1[1:2]"]
    assert g.n_edges == 4 + 16 + 4
    _, g = policy
    assert g.n_edges == 16 + 16 + 4
    with pytest.raises(InputError, match="groups"):
        build_graph(PlantedPolicy(), layers=POLICY_LAYERS, groups={"l1": 3})
    with pytest.raises(InputError, match="not a module path"):
        build_graph(PlantedPolicy(), layers=["l1", "nope", "out"])


# ---------------------------------------------------------------------------------------------- scoring truths
def test_eap_is_exact_on_a_linear_model():
    """EAP is the first-order Taylor term of the exact edge patch: equal where the model is linear."""
    m = PlantedPolicy(relu=False, planted=False)
    g = build_graph(HookedModel(m, adapter="generic"), layers=POLICY_LAYERS, groups={"input": 2, "l1": 4, "l2": 2})
    clean = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    corr = clean + 2.0
    a = eap(m, clean, corr, logit(1), graph=g)
    b = edge_patching(m, clean, corr, logit(1), graph=g)
    assert b.scores.abs().max() > 0.05
    assert torch.allclose(a.scores, b.scores, atol=1e-5)
    # node attribution: EAP's sum of outgoing edges equals patching the whole node, also exact here
    na, ne = node_attribution(m, clean, corr, logit(1), graph=g), node_attribution(m, clean, corr, logit(1),
                                                                                   method="exact", graph=g)
    assert set(na) == set(ne)
    for k in na:
        assert abs(na[k] - ne[k]) < 1e-5


def test_exact_edge_patching_equals_hand_written_hook_loop(policy):
    m, g = policy
    clean, corr = policy_data(6, seed=3)
    corr = corr + torch.randn_like(corr)  # every input unit differs
    res = edge_patching(m, clean, corr, logit_diff(0, 1), graph=g)
    layer = {"input": None, "l1": m.l1, "l2": m.l2}
    recv_mod = {"l1": m.l1, "l2": m.l2, "out": m.out}
    inputs_seen = {}

    def record(name):
        def hook(mod, args):
            inputs_seen[name] = args[0].detach().clone()
        return hook

    with torch.no_grad():
        hs = [mod.register_forward_pre_hook(record(n)) for n, mod in recv_mod.items()]
        m(corr)
        corr_in = dict(inputs_seen)
        for h in hs:
            h.remove()
        base = float(logit_diff(0, 1)(m(clean)).mean())
        for (s, r), score in zip(g.edges, res.scores.tolist()):
            s_layer, s_rng = s.split("[")
            r_layer = r.split("[")[0]
            a, b = map(int, s_rng.rstrip("]").split(":"))
            ra, rb = (map(int, r.split("[")[1].rstrip("]").split(":"))) if "[" in r else (0, 2)
            assert s_layer in layer

            def patch(mod, args, out, a=a, b=b, ra=ra, rb=rb, r_layer=r_layer):
                x = args[0].clone()
                x[:, a:b] = corr_in[r_layer][:, a:b]
                new = out.clone()
                new[:, ra:rb] = torch.nn.functional.linear(x, mod.weight, mod.bias)[:, ra:rb]
                return new

            h = recv_mod[r_layer].register_forward_hook(patch)
            try:
                want = float(logit_diff(0, 1)(m(clean)).mean()) - base
            finally:
                h.remove()
            assert abs(want - score) < 1e-5, (s, r, want, score)


def test_eap_ig_completeness_on_the_vit(vit):
    """Integrated gradients are complete: the EAP-IG scores of the edges leaving the input node sum to
    m(corrupted) - m(clean) as the number of steps grows."""
    m, g = vit
    clean, corr = vit_data(8)
    r = eap_ig(m, clean, corr, logit_diff(1, 0), steps=40, graph=g)
    total = sum(v for (s, _), v in zip(r.edges, r.scores.tolist()) if s == "embed")
    with torch.no_grad():
        want = float(logit_diff(1, 0)(m(corr)).mean() - logit_diff(1, 0)(m(clean)).mean())
    assert abs(total - want) < 0.02 * abs(want)


@pytest.mark.parametrize("which", ["vit", "cnn", "policy"])
def test_scores_recover_the_planted_edges(which, vit, cnn, policy):
    name, (m, g), (clean, corr), metric, truth = next(c for c in _cases(vit, cnn, policy) if c[0] == which)
    y = _truth_vector(g, truth)
    exact = edge_patching(m, clean, corr, metric, graph=g)
    for method in (eap, eap_ig):
        r = method(m, clean, corr, metric, graph=g)
        assert roc_auc_score(y, r.scores.abs().numpy()) == 1.0, (which, method.__name__)
        p, rc = _precision_recall(r.ranking()[:len(truth)], truth)
        assert p == 1.0 and rc == 1.0
    assert roc_auc_score(y, exact.scores.abs().numpy()) == 1.0
    # the planted edges carry the whole effect: each alone moves the metric by the full clean-corrupted gap
    gap = exact.ablated_metric - exact.clean_metric
    for e in truth:
        assert abs(exact.scores[g.edge_index[e]] - gap) < 0.05 * abs(gap)


@pytest.mark.parametrize("which", ["vit", "cnn", "policy"])
def test_acdc_recovers_the_planted_circuit(which, vit, cnn, policy):
    name, (m, g), (clean, corr), metric, truth = next(c for c in _cases(vit, cnn, policy) if c[0] == which)
    c = acdc(m, clean, corr, metric, threshold=0.05, graph=g)
    p, rc = _precision_recall(c.edges, truth)
    assert (p, rc) == (1.0, 1.0), c.edges
    assert c.faithfulness == pytest.approx(1.0, abs=0.02)
    # the faithfulness measured independently agrees, and random circuits of the same size score far lower
    assert faithfulness(m, c, clean, corr, metric, graph=g) == pytest.approx(1.0, abs=0.02)
    scores = eap(m, clean, corr, metric, graph=g)
    curve = faithfulness_curve(m, scores, clean, corr, metric, sizes=[len(truth)], n_random=20, graph=g)
    assert float(curve.faithfulness[0]) == pytest.approx(1.0, abs=0.02)
    assert float(curve.random_mean[0]) < 0.3
    assert completeness(m, c, clean, corr, metric, graph=g) == pytest.approx(1.0, abs=0.02)
    mini = minimality(m, c, clean, corr, metric, graph=g)
    assert mini["minimality"] == 1.0 and all(d > 0.9 for d in mini["drops"].values())


def test_top_k_with_exact_verification(cnn):
    m, g = cnn
    clean, corr = cnn_data()
    c = top_k(m, clean, corr, logit_diff(1, 0), 3, scores="eap-ig", graph=g)
    assert set(c.edges) == CNN_TRUTH
    assert c.faithfulness == pytest.approx(1.0, abs=1e-4)
    assert all(v == pytest.approx(1.0, abs=1e-4) for v in c.config["verified"].values())
    # a too-small circuit is not faithful
    c2 = top_k(m, clean, corr, logit_diff(1, 0), 2, scores="exact", graph=g)
    assert c2.faithfulness < 0.5


def test_mean_and_zero_ablation_closed_form(policy):
    """'mean' / 'zero' replace each patched write by its mean over the clean data / by zero. Half the inputs
    cue +1 (l1 unit 0 = l2 unit 0 = 2, logit diff 4), half -1 (units 0, logit diff 0); closed forms per edge:
    mean: input->l1 unit 0 sees cue 0 (-4 on the + half: -2); l1->l2 and l2->out see the mean unit value 1
    (-2 on the + half, +2 on the - half: 0); zero: every planted edge -2; every other edge 0."""
    m, g = policy
    clean, corr = policy_data()
    mixed = torch.cat([clean[:8], corr[8:]])
    mean = edge_patching(m, mixed, "mean", logit_diff(0, 1), graph=g).as_dict()
    zero = edge_patching(m, mixed, "zero", logit_diff(0, 1), graph=g).as_dict()
    want_mean = {"input[0:1] -> l1[0:1]": -2.0}
    want_zero = {f"{a} -> {b}": -2.0 for a, b in POLICY_TRUTH}
    for e in mean:
        assert mean[e] == pytest.approx(want_mean.get(e, 0.0), abs=1e-5), e
        assert zero[e] == pytest.approx(want_zero.get(e, 0.0), abs=1e-5), e
    with pytest.raises(InputError, match="corrupted"):
        eap(m, clean, "median", logit_diff(0, 1), graph=g)


# ---------------------------------------------------------------------------------------------- scrubbing
def test_causal_scrubbing_accepts_true_and_rejects_wrong_hypothesis(vit):
    m, g = vit
    clean, corr = vit_data(32, seed=1)
    x = torch.cat([clean, corr])
    y = torch.cat([torch.ones(32), torch.zeros(32)]).long()
    metric = logit_diff(y, 1 - y)
    true = causal_scrubbing(m, x, {"embed": y, "blocks.0.attn.z[0]": y}, metric, graph=g, n_samples=4)
    wrong = causal_scrubbing(m, x, {"embed": y, "blocks.0.attn.z[1]": y}, metric, graph=g, n_samples=4)
    assert true.recovered > 0.95
    assert wrong.recovered < 0.2
    # a hypothesis that marks the right head but treats all inputs as equivalent is rejected too
    blind = causal_scrubbing(m, x, {"embed": torch.zeros(64), "blocks.0.attn.z[0]": y}, metric, graph=g)
    assert blind.recovered < 0.2
    assert true.plot() is not None
    with pytest.raises(InputError, match="not a node"):
        causal_scrubbing(m, x, {"blocks.0.attn.z[9]": y}, metric, graph=g)


# ---------------------------------------------------------------------------------------------- the Circuit
def test_circuit_json_plot_and_apply(tmp_path, policy, vit):
    m, g = policy
    clean, corr = policy_data()
    c = acdc(m, clean, corr, logit_diff(0, 1), graph=g)
    path = c.save(tmp_path / "c.json")
    back = Circuit.load(path)
    assert back.edges == c.edges and back.scores == c.scores and back.faithfulness == c.faithfulness
    assert json.loads(path.read_text())["metric"] == "logit_diff[0-1]"
    assert back.plot() is not None
    # restricted to the circuit the policy behaves as the full one; restricted to nothing, as the corrupted one
    hm = HookedModel(m, adapter="generic")
    out = back.run(g, clean, corr)
    assert torch.allclose(out, m(clean), atol=1e-5)
    empty = Circuit([], [], {}, "m", "x", {}, g.describe(), config=c.config)
    assert torch.allclose(empty.run(g, clean, corr), m(corr), atol=1e-5)
    with back.applied(g, corr):
        inside = hm.model(clean)
    assert torch.allclose(inside, out, atol=1e-6)
    with empty.applied(g, corr):
        assert torch.allclose(hm.model(clean), m(corr), atol=1e-5)
    assert torch.allclose(hm.model(clean), m(clean))  # restored
    # a ViT circuit applied through its own graph
    mv, gv = vit
    cv, kv = vit_data(8)
    circuit = Circuit(["embed", "blocks.0.attn.z[0]", "logits"], sorted(VIT_TRUTH), {}, "m", "x", {}, gv.describe())
    assert torch.allclose(circuit.run(gv, cv, kv), mv(cv), atol=1e-4)
    with circuit.applied(mv, kv):
        assert torch.allclose(mv(cv), circuit.run(gv, cv, kv), atol=1e-6)
    with pytest.raises(InputError, match="lacks"):
        circuit.run(g, clean, corr)
    with pytest.raises(InputError, match="failed on"):
        eap(mv, torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), logit_diff(1, 0), graph=gv)
    with pytest.raises(InputError, match="not JSON"):
        (tmp_path / "bad.json").write_text("{")
        Circuit.load(tmp_path / "bad.json")


def test_bad_arguments(policy):
    m, g = policy
    clean, corr = policy_data()
    with pytest.raises(InputError, match="threshold"):
        acdc(m, clean, corr, logit_diff(0, 1), threshold=-1, graph=g)
    with pytest.raises(InputError, match="k:"):
        top_k(m, clean, corr, logit_diff(0, 1), 0, graph=g)
    with pytest.raises(InputError, match="same metric"):
        acdc(m, clean, clean, logit_diff(0, 1), graph=g)
    with pytest.raises(InputError, match="pair"):
        eap(m, clean, corr[:3], logit_diff(0, 1), graph=g)
    with pytest.raises(InputError, match="steps"):
        eap_ig(m, clean, corr, logit_diff(0, 1), steps=0, graph=g)
    with pytest.raises(InputError, match="not an edge"):
        faithfulness(m, [("l1[0:1]", "out")], clean, corr, logit_diff(0, 1), graph=g)
    with pytest.raises(InputTypeError, match="CircuitGraph"):
        eap(m, clean, corr, logit_diff(0, 1), graph="g")


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.inner = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.inner(x))


class _SkipNet(nn.Module):
    """Two residual blocks and a head: a chain at block level, not at the level of the blocks' inner layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(4, 4)
        self.block1, self.block2 = _Residual(4), _Residual(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(self.stem(x))))


def test_sequential_graph_refuses_skips_and_accepts_blocks():
    m = _SkipNet()
    x = torch.randn(6, 4)
    with pytest.raises(InputError, match="skip connection"):
        build_graph(m, example_input=x)  # inner Linear layers: the skip bypasses them
    g = build_graph(m, layers=["stem", "block1", "block2", "head"], groups={"block1": 2, "block2": 2},
                    example_input=x)  # blocks (unit counts traced) form a chain
    assert "block1[0:2]" in g.by_name and g.n_edges == 1 + 2 + 2 * 2 + 2
    r = edge_patching(m, x, x + 1, logit(0), graph=g)
    assert float(eap(m, x, x + 1, logit(0), graph=g).scores.abs().sum()) > 0
    # all edges patched is the corrupted model, no edge patched the clean one
    c = Circuit([], [], {}, "m", "x", {}, g.describe(), config={"layers": g.layers, "groups": g.group_spec})
    assert torch.allclose(c.run(m, x, x + 1), m(x + 1), atol=1e-5)
    with torch.no_grad():
        assert r.ablated_metric == pytest.approx(float(logit(0)(m(x + 1)).mean()), abs=1e-5)


def test_circuit_rebuilds_its_graph_from_the_module(policy):
    m, g = policy
    clean, corr = policy_data()
    c = acdc(m, clean, corr, logit_diff(0, 1), graph=g)
    assert c.config["groups"] == POLICY_GROUPS and c.config["layers"] == POLICY_LAYERS
    back = Circuit.from_dict(json.loads(json.dumps(c.to_dict())))
    assert torch.allclose(back.run(HookedModel(m, adapter="generic"), clean, corr), m(clean), atol=1e-5)
    assert faithfulness(HookedModel(m, adapter="generic"), back, clean, corr, logit_diff(0, 1)) == \
        pytest.approx(1.0, abs=1e-5)


def test_resnet_blocks_with_channel_groups_match_a_hook_loop():
    """A torchvision ResNet as a chain of stages (each stage's output includes its skips), with channel groups;
    one grouped edge patched by hand with torch hooks gives the same effect."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    m = resnet18(num_classes=3).eval()
    clean, corr = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    layers = ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    g = build_graph(m, layers=layers, groups={"layer3": 4, "layer4": 2}, example_input=clean)
    assert ("layer3[64:128]", "layer4[256:512]") in g.edges
    res = edge_patching(m, clean, corr, logit(1), graph=g).as_dict()
    seen = {}
    with torch.no_grad():
        h = m.layer4.register_forward_pre_hook(lambda mod, a: seen.__setitem__("x", a[0].clone()))
        m(corr)
        h.remove()
        base = float(m(clean)[:, 1].mean())

        def patch(mod, a, out):
            x = a[0].clone()
            x[:, 64:128] = seen["x"][:, 64:128]
            new = out.clone()
            new[:, 256:512] = torch.nn.Sequential(*mod)(x)[:, 256:512]
            return new

        h = m.layer4.register_forward_hook(patch)
        try:
            want = float(m(clean)[:, 1].mean()) - base
        finally:
            h.remove()
    assert res["layer3[64:128] -> layer4[256:512]"] == pytest.approx(want, abs=1e-5)
    assert abs(want) > 1e-4


def test_result_figures(cnn):
    m, g = cnn
    clean, corr = cnn_data()
    scores = eap(m, clean, corr, logit_diff(1, 0), graph=g)
    assert scores.plot(k=5).axes[0].get_yticklabels()[-1].get_text() == " -> ".join(scores.ranking()[0])
    curve = faithfulness_curve(m, scores, clean, corr, logit_diff(1, 0), n_random=3, graph=g)
    assert curve.sizes[0] == 1 and curve.sizes[-1] == g.n_edges
    assert float(curve.faithfulness[-1]) == pytest.approx(1.0) and float(curve.random_mean[-1]) == pytest.approx(1.0)
    assert curve.plot() is not None
    assert curve.to_dict()["sizes"] == curve.sizes


def test_every_data_form_gives_the_same_scores(policy):
    """The boundary's data forms (tensor, numpy array, Dataset, DataLoader of (x, y)) give the same numbers."""
    from torch.utils.data import DataLoader, TensorDataset

    m, g = policy
    clean, corr = policy_data()
    y = torch.zeros(len(clean), dtype=torch.long)
    ref = edge_patching(m, clean, corr, logit_diff(0, 1), graph=g).scores
    forms = [(clean.numpy(), corr.numpy()), (TensorDataset(clean, y), TensorDataset(corr, y)),
             (DataLoader(TensorDataset(clean, y), batch_size=5), DataLoader(TensorDataset(corr, y), batch_size=5))]
    for a, b in forms:
        assert torch.allclose(edge_patching(m, a, b, logit_diff(0, 1), graph=g).scores, ref, atol=1e-6)
        assert torch.allclose(eap(m, a, b, logit_diff(0, 1), graph=g).scores,
                              eap(m, clean, corr, logit_diff(0, 1), graph=g).scores, atol=1e-6)
    with pytest.raises(InputError, match="NaN"):
        eap(m, clean * float("nan"), corr, logit_diff(0, 1), graph=g)
