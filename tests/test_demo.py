"""``interp demo --quick``: the end-to-end report on the embedded models, and its key findings."""

import json

import pytest

from interp_core.cli import main
from interp_core.demo import run_demo


@pytest.mark.slow
def test_demo_writes_a_report_whose_findings_hold(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    assert str(tmp_path / "report.html") in capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    html = (tmp_path / "report.html").read_text()
    assert len(list((tmp_path / "figures").glob("*.png"))) >= 10
    assert html.count("<img") >= 10 and "data:image/png;base64," in html

    def section(prefix):
        return next(v for k, v in results.items() if k.startswith(prefix))

    patching = section("Vision: where does the ViT decide")["numbers"]
    assert patching["clean_metric"] > 0 > patching["corrupted_metric"]
    assert patching["spearman_attribution_vs_exact"] > 0.3
    shortcut = section("Vision: finding the planted shortcut")["numbers"]
    assert shortcut["ig_mass_on_mark"] > 10 * 9 / 1024
    assert shortcut["p_class0_corner_patched"] < 0.25 * shortcut["p_class0_marked"]
    assert shortcut["mark_probe_accuracy"] > 0.95
    feature = section("Vision: the mark as a feature")["numbers"]
    assert feature["top_cells_from_marked_images"] >= 0.9  # chance ~0.5
    steer = [row["mean"] for row in feature["steering"]]
    assert steer[-1] > steer[0] + 0.2 and steer == sorted(steer)
    featvis = section("Vision: what each digit looks like")["numbers"]
    assert featvis["classified_as_target"] == featvis["classes"]
    lens = section("Vision: logit lens")["table"]
    assert lens[-1]["accuracy"] > 0.95 and lens[0]["accuracy"] < lens[-1]["accuracy"]
    universality = section("Universality")["table"]
    assert all(r["cka_depth"] > r["cka_depth_baseline"] for r in universality)
    causal = section("RL: does the agent use that memory?")["numbers"]
    assert causal["probe"]["outcome_flip_rate"]["mean"] >= 0.8 >= 0.2 >= causal["random"]["outcome_flip_rate"]["mean"]
    sae = section("Features: a sparse autoencoder on the digits CNN")["numbers"]
    assert sae["fvu"] < 0.3 and sae["splice"]["kept"]["accuracy"]["zero"] > 0.9
    latents = section("Features: which SAE latents decide 3 vs 8?")["table"]
    assert {latents[0]["label (top exemplars)"], latents[1]["label (top exemplars)"]} & {"digit 3", "digit 8"}
    circuit = section("Circuits: the digits ViT's 3-vs-8 circuit")["numbers"]
    assert 0 < circuit["circuit_edges"] < circuit["n_edges"] // 2 and circuit["faithfulness"] > 0.8
    curve = section("Circuits: faithfulness against random circuits")["numbers"]
    at = curve["sizes"].index(circuit["circuit_edges"])
    assert curve["random_mean"][at] < curve["faithfulness"][at] - 0.4
    assert curve["faithfulness"][-1] == pytest.approx(1.0, abs=1e-4)  # every edge: the clean model
    memory = section("RL: a sparse autoencoder on the T-maze agent's memory")["numbers"]
    success = memory["success"]
    assert memory["cue_latents"] and success["SAE spliced in"] >= 0.9
    ablated = next(v for k, v in success.items() if k.endswith("cue latents ablated"))
    assert ablated < 0.75 and success["memory.h zero-ablated"] < 0.75  # the cue latents carry the turn
    toy = section("Features: superposition in toy models")["numbers"]
    assert toy["n_represented"][-1] >= 4 and toy["n_represented"][-1] > toy["n_represented"][0]  # sparse: shared
    doorkey = section("RL: DoorKey")["table"]
    assert all(r["verdict"].startswith("not evidence") for r in doorkey)
    assert all(r["score"] > 0.98 for r in section("RL: CartPole")["table"])
    from .test_report_browser import check_in_browser

    check_in_browser(tmp_path / "report.html", "report-demo-quick.png", min_images=15)


def test_a_missing_domain_is_reported_not_fatal(tmp_path):
    run_demo(tmp_path, quick=True, domains=("no_such_domain.demo",))
    results = json.loads((tmp_path / "results.json").read_text())
    assert "pip install" in results["no_such_domain.demo: not run"]["text"]


def test_demo_stages_report_progress_and_resume_after_an_interruption(tmp_path, monkeypatch):
    """A run that dies in its second stage resumes there: the first stage's sections come from the cache."""
    import sys
    import types

    import matplotlib.pyplot as plt

    calls = {"a": 0, "b": 0}
    state = {"fail": True}

    def stage_a(report):
        calls["a"] += 1
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        report.add("A <first>", text="first stage", figure=fig, table=[{"x": 1.5}], numbers={"n": 3})

    def stage_b(report):
        calls["b"] += 1
        if state["fail"]:
            raise KeyboardInterrupt
        report.add("B", text="second stage")

    fake = types.ModuleType("fake_demo")
    fake.stages = lambda quick: [("a", stage_a), ("b", stage_b)]
    monkeypatch.setitem(sys.modules, "fake_demo", fake)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        run_demo(tmp_path, domains=("fake_demo",), on_stage=lambda *a: lines.append(a))
    assert calls == {"a": 1, "b": 1} and lines[0][:3] == (1, 2, "fake_demo: a")
    state["fail"] = False
    lines.clear()
    path = run_demo(tmp_path, domains=("fake_demo",), on_stage=lambda *a: lines.append(a))
    assert calls == {"a": 1, "b": 2}
    assert [(i, cached) for i, n, name, s, cached in lines] == [(1, True), (2, False)]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["A <first>"]["numbers"] == {"n": 3} and "B" in results
    assert path.read_text().count("<img") == 1
    run_demo(tmp_path, domains=("fake_demo",), fresh=True)
    assert calls == {"a": 2, "b": 3}
