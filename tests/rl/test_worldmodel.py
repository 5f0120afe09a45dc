"""rl.worldmodel: probes with controls and verdicts, and the causal check, against known truths."""

from __future__ import annotations

import json

import pytest

import rl
from rl import worldmodel as wm


def _corridor(ro):
    return (ro.world["position"] >= 1) & (ro.world["at_junction"] == 0)


def test_tmaze_cue_is_in_memory_not_in_the_observation(tmp_path):
    agent = rl.zoo.load("tmaze-recurrent")
    res = wm.probe(agent, variables=["cue"], sites=["encoder.out", "memory.h"], episodes=120, when=_corridor,
                   by="position")
    mem, enc = res.row("memory.h", "cue"), res.row("encoder.out", "cue")
    assert mem["score"] >= 0.95
    # the corridor observation is the same for both cues: the observation probe is at chance exactly
    assert mem["obs_baseline"] == pytest.approx(mem["chance"], abs=1e-9)
    assert 0.35 <= mem["chance"] <= 0.65 and mem["visible_rate"] == 0.0
    assert enc["score"] == pytest.approx(enc["chance"], abs=1e-9) and enc["verdict"] == wm.VERDICT_CHANCE
    assert mem["verdict"].startswith("evidence of memory")
    assert mem["random_init"] is not None  # the twin is reported beside it
    steps = res.breakdown["memory.h|cue|0"]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6] and all(v["score"] >= 0.9 for v in steps.values())
    assert all(v["random_init"] is not None for v in steps.values())
    d = json.loads(json.dumps(res.to_dict()))
    assert d["config"]["split"] == "by episode" and len(d["rows"]) == 2
    res.save(tmp_path / "r.json")
    fig = res.plot()
    assert len(fig.axes) == 1


def test_tmaze_causal_edit_flips_the_turn():
    # edit memory.h while the cue is only in memory (corridor steps), leave the junction step alone: the turn
    # must follow the edited memory; a random direction of the same norm must rarely change it
    agents = [rl.zoo.load(f"tmaze-recurrent@seed{s}") for s in range(3)]
    res = wm.causal_check(agents, "memory.h", "cue", episodes=40, seeds=(0, 1, 2), probe_episodes=100,
                          probe_when=_corridor, when=lambda w: w["position"] >= 1 and not w["at_junction"])
    probe, rand = res.summary["probe"], res.summary["random"]
    assert res.baseline_success_rate >= 0.95
    assert probe["outcome_flip_rate"]["mean"] >= 0.8 and rand["outcome_flip_rate"]["mean"] <= 0.2
    assert probe["decoded_target_rate"]["mean"] >= 0.95  # the edit does what it says
    assert rand["decoded_target_rate"]["mean"] <= 0.2
    assert len(probe["outcome_flip_rate"]["values"]) == 9  # one unit per agent seed x episode seed
    lo, hi = probe["outcome_flip_rate"]["low"], probe["outcome_flip_rate"]["high"]
    assert lo <= probe["outcome_flip_rate"]["mean"] <= hi
    assert res.plot() is not None


def test_doorkey_visible_variables_are_not_evidence():
    agent = rl.zoo.load("doorkey-ppo")
    res = wm.probe(agent, variables=["carrying_key", "door_open", "agent_x", "agent_dir"],
                   sites=["encoder.4", "encoder.out"], episodes=30, control=False)
    for r in res.rows:
        assert r["verdict"].startswith("not evidence") or r["verdict"] == wm.VERDICT_CONSTANT, r
    for var in ("carrying_key", "door_open"):
        r = res.row("encoder.out", var)
        assert r["verdict"] == wm.VERDICT_VISIBLE and r["obs_baseline"] >= 0.9 and r["random_init"] >= 0.9
    # the compass is not in the image, but the observation still gives it away: reported as such
    r = res.row("encoder.out", "agent_dir")
    assert r["visible_rate"] == 0.0 and r["verdict"] == wm.VERDICT_OBS


def test_cartpole_state_is_decodable_sanity():
    agent = rl.zoo.load("cartpole-ppo")
    res = wm.probe(agent, sites=["policy.1"], episodes=4, control=True, future=1)
    for var in ("x", "x_dot", "theta", "theta_dot"):
        r = res.row("policy.1", var)
        assert r["metric"] == "r2" and r["score"] >= 0.98 and r["verdict"] == wm.VERDICT_VISIBLE
        assert r["control"] < 0.5  # random targets per distinct row do not transfer to held-out episodes
        assert res.row("policy.1", var, k=1)["visible_rate"] == 0.0


def test_verdict_rules():
    v = wm._verdict
    assert v(0.99, 0.99, 0.5, 0.5, 1.0, 0.05) == wm.VERDICT_VISIBLE
    assert v(0.99, 0.97, 0.5, 0.5, 0.0, 0.05) == wm.VERDICT_OBS
    assert v(0.52, 0.3, 0.5, 0.5, 0.0, 0.05) == wm.VERDICT_CHANCE
    assert v(0.5, 0.5, 0.5, 0.5, 0.0, 0.05) == wm.VERDICT_CHANCE  # nothing decodes it: not "from observation"
    assert v(0.99, 0.5, 0.97, 0.5, 0.0, 0.05) == wm.VERDICT_TWIN
    assert v(0.99, 0.5, 0.6, 0.5, 0.0, 0.05) == wm.VERDICT_EVIDENCE
    assert v(1.0, 1.0, 1.0, 1.0, 0.0, 0.05, constant=True) == wm.VERDICT_CONSTANT
    # differences that are findings on 1,000 held-out rows are binomial noise on 30
    wide, narrow = wm._margin(0.05, "classification", 30), wm._margin(0.05, "classification", 1000)
    assert narrow == 0.05 and wm._margin(0.05, "regression", 30) == 0.05 and wide > 0.18
    assert v(0.66, 0.48, 0.5, 0.5, 0.0, narrow) == wm.VERDICT_EVIDENCE
    assert v(0.66, 0.48, 0.5, 0.5, 0.0, wide) == wm.VERDICT_CHANCE
    assert v(0.80, 0.65, 0.5, 0.5, 0.0, narrow) == wm.VERDICT_EVIDENCE
    assert v(0.80, 0.65, 0.5, 0.5, 0.0, wide) == wm.VERDICT_OBS


def test_noisy_tmaze_twin_reported_by_corridor_step_and_control_is_selective():
    # with random distractor bits the control task has no recurring types to memorise (control near chance,
    # high selectivity), and the random-init twin's hold on the cue can only fade along the corridor
    agent = rl.zoo.load("tmaze-noisy-recurrent")
    res = wm.probe(agent, variables=["cue"], sites=["memory.h"], episodes=300, when=_corridor, by="position")
    r = res.row("memory.h", "cue")
    steps = res.breakdown["memory.h|cue|0"]
    assert r["score"] >= 0.95 and all(v["score"] >= 0.95 for v in steps.values())
    assert r["obs_baseline"] <= r["chance"] + 0.05
    assert r["control"] <= r["chance"] + 0.15 and r["selectivity"] >= 0.4
    twin = [steps[p]["random_init"] for p in sorted(steps)]
    assert twin[-1] <= steps[max(steps)]["score"] and min(twin) < 1.0
    assert r["verdict"].startswith("evidence of memory")
