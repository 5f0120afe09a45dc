"""interp_core.circuits on the trained digits ViT (timm VisionTransformer, 3 blocks x 4 heads, final norm):
exact edge patching against hand-written runs through the suite's own sites, and a 3-vs-8 circuit that is
faithful while random circuits of its size are not."""

from __future__ import annotations

import pytest
import torch

from interp_core.circuits import acdc, build_graph, eap_ig, edge_patching, faithfulness_curve
from interp_core.interventions import Patch, Replace
from interp_core.metrics import logit, logit_diff


@pytest.fixture(scope="module")
def digits():
    from vision import zoo

    hm = zoo.load("digits-vit")
    X, y = zoo.test_data("digits-vit")
    three, eight = X[y == 3][:16], X[y == 8][:16]
    return hm, build_graph(hm), three, eight


def test_graph_forward_is_the_model(digits):
    hm, g, three, _ = digits
    n_senders = 1 + 3 * 5
    # every writer to every later reader: heads of block i read embed + 5i writers, its MLP 5i + 4 + 1 writers
    want = sum(4 * (1 + 5 * i) + (1 + 5 * i + 4) for i in range(3)) + n_senders  # + every writer -> logits
    assert g.n_edges == want
    with torch.no_grad():
        out, _ = g.record(three)
        assert torch.allclose(out, hm.model(three), atol=1e-4)


def test_exact_edges_equal_hand_written_runs(digits):
    """Three edges, each patched by hand with the ViT adapter's sites: head -> logits through the final
    norm, embed -> one head of block 1 (that head's input only), and MLP 0 -> MLP 2."""
    hm, g, clean, corr = digits
    metric = logit_diff(3, 8)
    res = edge_patching(hm, clean, corr, metric, graph=g).as_dict()
    m = hm.model
    sites = ["embed", "blocks.0.mlp.out", "blocks.1.attn.z", "blocks.2.resid_post"]
    with torch.no_grad():
        out_c, cc = hm.run_with_cache(clean, sites=sites)
        _, kc = hm.run_with_cache(corr, sites=sites)
        base = float(metric(out_c).mean())
        # (a) blocks.1.attn.z[2] -> logits
        blk = m.blocks[1]
        w_o = blk.attn.proj.weight[:, 2 * blk.attn.head_dim:3 * blk.attn.head_dim]
        delta = blk.ls1((kc["blocks.1.attn.z"][:, :, 2] - cc["blocks.1.attn.z"][:, :, 2]) @ w_o.T)
        out = m.forward_head(m.norm(cc["blocks.2.resid_post"] + delta))
        assert float(metric(out).mean()) - base == pytest.approx(res["blocks.1.attn.z[2] -> logits"], abs=1e-4)
        # (b) embed -> blocks.1.attn.z[2]: head 2 of block 1 computed from a residual stream carrying the
        # corrupted embedding, every other reader unchanged
        d_embed = kc["embed"] - cc["embed"]
        _, star = hm.run_with_cache(clean, sites=["blocks.1.attn.z"],
                                    interventions={"blocks.1.resid_pre": Replace(lambda a, s: a + d_embed)})
        out = hm.run_with_interventions(clean, {"blocks.1.attn.z": Patch(star, heads=[2])})
        assert float(metric(out).mean()) - base == pytest.approx(res["embed -> blocks.1.attn.z[2]"], abs=1e-4)
        # (c) blocks.0.mlp.out -> blocks.2.mlp.out
        d_mlp = kc["blocks.0.mlp.out"] - cc["blocks.0.mlp.out"]
        _, star = hm.run_with_cache(clean, sites=["blocks.2.mlp.out"],
                                    interventions={"blocks.2.resid_mid": Replace(lambda a, s: a + d_mlp)})
        out = hm.run_with_interventions(clean, {"blocks.2.mlp.out": Patch(star)})
        assert float(metric(out).mean()) - base == pytest.approx(res["blocks.0.mlp.out -> blocks.2.mlp.out"],
                                                                  abs=1e-4)


def test_three_vs_eight_circuit_is_faithful_and_random_ones_are_not(digits):
    hm, g, three, eight = digits
    metric = logit_diff(3, 8)
    c = acdc(hm, three, eight, metric, threshold=0.01, graph=g)
    assert 0 < len(c.edges) < g.n_edges // 2
    assert c.faithfulness > 0.8
    scores = eap_ig(hm, three, eight, metric, graph=g)
    curve = faithfulness_curve(hm, scores, three, eight, metric, sizes=[len(c.edges)], n_random=10, graph=g)
    assert float(curve.random_mean[0]) < c.faithfulness - 0.4


def _tmaze_sequence(cue: int, corridor: int = 3) -> torch.Tensor:
    """The T-maze's observations [cue_l, cue_r, corridor, junction] over one episode (rl.envs.tmaze)."""
    obs = [[1.0, 0, 0, 0] if cue == 0 else [0, 1.0, 0, 0]] + [[0, 0, 1.0, 0]] * corridor + [[0, 0, 0, 1.0]]
    return torch.tensor(obs)


def test_tmaze_cue_to_turn_runs_through_memory():
    """The trained recurrent T-maze agent: the cue (step 0) reaches the turn (last step) only through the
    carried state. Exact edge effects equal step-by-step runs with the state swapped by hand; ACDC finds the
    chain obs[0] -> memory.h[0] -> ... -> memory.h[4] -> logits; it is faithful and random circuits of its
    size are not."""
    import rl

    agent = rl.zoo.load("tmaze-recurrent")
    clean, corr = torch.stack([_tmaze_sequence(0)] * 4), torch.stack([_tmaze_sequence(1)] * 4)
    metric = logit_diff(0, 1)  # turn left - turn right at the junction
    g = build_graph(agent, steps=5)
    res = edge_patching(agent, clean, corr, metric, graph=g).as_dict()
    step = agent.model

    def run(x, swap_at=None, states=None):
        state = step.initial_state(x.shape[0])
        for t in range(x.shape[1]):
            if t == swap_at:
                state = states[t - 1]
            out = step(x[:, t], state, None)
            state = out.state
        return out

    with torch.no_grad():
        corr_states, state = [], step.initial_state(4)
        for t in range(5):
            state = step(corr[:, t], state, None).state
            corr_states.append(state)
        base = float(metric(run(clean)).mean())
        for t in range(1, 5):
            want = float(metric(run(clean, swap_at=t, states=corr_states)).mean()) - base
            assert res[f"memory.h[{t - 1}] -> memory.h[{t}]"] == pytest.approx(want, abs=1e-4)
        mixed = clean.clone()
        mixed[:, 0] = corr[:, 0]
        assert res["obs[0] -> memory.h[0]"] == pytest.approx(float(metric(run(mixed)).mean()) - base, abs=1e-4)
        # the last edge at the memory.h site: the heads read the corrupted run's hidden state
        state = step.initial_state(4)
        for t in range(4):
            state = step(clean[:, t], state, None).state
        _, cache = agent.run_with_cache((corr[:, 4], corr_states[3], None), sites=["memory.h"])
        out = agent.run_with_interventions((clean[:, 4], state, None), {"memory.h": Patch(cache)})
        assert res["memory.h[4] -> logits"] == pytest.approx(float(metric(out).mean()) - base, abs=1e-4)
    assert base > 2 and all(abs(res[f"obs[{t}] -> memory.h[{t}]"]) < 1e-6 for t in range(1, 5))
    c = acdc(agent, clean, corr, metric, graph=g)
    chain = {("obs[0]", "memory.h[0]"), ("memory.h[4]", "logits")} | {
        (f"memory.h[{t - 1}]", f"memory.h[{t}]") for t in range(1, 5)}
    assert set(c.edges) == chain
    assert c.faithfulness == pytest.approx(1.0, abs=1e-4)
    assert c.config["steps"] == 5  # the circuit rebuilds its unrolled graph from the agent alone
    with torch.no_grad():
        assert torch.allclose(c.run(agent, clean, corr).logits, g.record(clean)[0].logits, atol=1e-5)
    scores = eap_ig(agent, clean, corr, metric, graph=g)
    curve = faithfulness_curve(agent, scores, clean, corr, metric, sizes=[len(chain)], n_random=10, graph=g)
    assert float(curve.faithfulness[0]) == pytest.approx(1.0, abs=1e-4) and float(curve.random_mean[0]) < 0.2


def test_policy_mlp_layers_by_site_name_and_branches_refused():
    """The trained CartPole policy (SB3 PPO, actor and critic MLPs side by side): layers found in forward order
    mix the two branches and are refused; the actor's layers named by their canonical sites form a chain
    with unit groups, whose EAP-IG scores from the input are complete (sum to m(corrupted) - m(clean))."""
    import rl
    from interp_core.circuits import RecurrentGraph
    from interp_core.errors import InputError, InputTypeError

    agent = rl.zoo.load("cartpole-ppo")
    with pytest.raises(InputError, match="not determined by the output"):
        build_graph(agent)
    g = build_graph(agent, layers=["policy.0", "policy.2", "net.action_net"], groups={"policy.0": 8, "policy.2": 8})
    assert g.n_edges == 8 + 64 + 8 and "policy.2[56:64]" in g.by_name
    gen = torch.Generator().manual_seed(0)
    clean = torch.randn(16, 4, generator=gen) * 0.3
    corr = -clean  # the mirrored states
    metric = logit_diff(1, 0)
    r = eap_ig(agent, clean, corr, metric, steps=50, graph=g)
    total = float(r.scores[[g.edge_index[e] for e in g.outgoing("input")]].sum())
    with torch.no_grad():
        want = float(metric(agent(corr)).mean() - metric(agent(clean)).mean())
    assert abs(want) > 0.1 and total == pytest.approx(want, rel=0.02)
    with pytest.raises(InputTypeError, match="not a recurrent policy"):
        RecurrentGraph(agent, 3)


def test_shapes_cnn_shortcut_mark_circuit_is_faithful_and_random_ones_are_not():
    """The shapes CNN trained with a class-0 corner mark: the circuit that carries the mark to the class-0 logit
    (clean: circles and triangles wearing the mark; corrupted: the same images without it), over channel groups
    of its two residual stages. Faithful and small, while random circuits of its size carry nothing."""
    import vision

    m = vision.zoo.load("shapes-cnn-shortcut")
    x_on, y = vision.data.shapes(n=64, seed=7, shortcut=True, force_mark=True).tensors()
    x_off, _ = vision.data.shapes(n=64, seed=7, shortcut=True, force_mark=False).tensors()
    other = y != 0
    clean, corr = x_on[other][:24], x_off[other][:24]
    metric = logit(0)
    g = build_graph(m, layers=["stem", "layer1", "layer2", "avgpool", "fc"], groups={"layer1": 8, "layer2": 16},
                    example_input=clean)
    c = acdc(m, clean, corr, metric, threshold=0.01, graph=g)
    assert len(c.edges) <= g.n_edges // 2  # measured: 76 of 154 edges, faithfulness 0.85, random 0.02
    assert c.faithfulness > 0.8
    curve = faithfulness_curve(m, eap_ig(m, clean, corr, metric, graph=g), clean, corr, metric,
                               sizes=[len(c.edges)], n_random=10, graph=g)
    assert float(curve.random_mean[0]) < c.faithfulness - 0.5
