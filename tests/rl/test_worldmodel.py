"""rl.worldmodel: probes with controls and verdicts, and the causal check, against known truths."""

from __future__ import annotations

import json

import numpy as np
import pytest

import rl
from interp_core.errors import InputError, InterpError
from interp_core.probes import control_labels, input_types, train_test_split_by_group
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
    # the interval is over the 3 agents, each the mean of its 3 episode seeds (Student-t, by hand here)
    per_agent = np.array([np.mean([u["outcome_flip_rate"] for u in res.units if u["edit"] == "probe"
                                   and u["agent"] == a.name]) for a in agents])
    assert probe["outcome_flip_rate"]["values"] == pytest.approx(per_agent.tolist())
    lo, hi = probe["outcome_flip_rate"]["low"], probe["outcome_flip_rate"]["high"]
    if per_agent.std() > 0:
        from scipy import stats

        half = stats.t.ppf(0.975, df=2) * per_agent.std(ddof=1) / np.sqrt(3)
        assert lo == pytest.approx(max(0.0, per_agent.mean() - half))
        assert hi == pytest.approx(min(1.0, per_agent.mean() + half))
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
    # the control task is Hewitt & Liang's by input type (here: the observation, 16 distinct corridor
    # observations from 4 random distractor bits, which recur across the episode split): memory.h carries the
    # current observation, so a linear probe partly memorises the types' random labels; the cue is still
    # decoded well above that. The random-init twin's hold on the cue can only fade along the corridor.
    agent = rl.zoo.load("tmaze-noisy-recurrent")
    res = wm.probe(agent, variables=["cue"], sites=["memory.h"], episodes=300, when=_corridor, by="position")
    r = res.row("memory.h", "cue")
    steps = res.breakdown["memory.h|cue|0"]
    assert r["score"] >= 0.95 and all(v["score"] >= 0.95 for v in steps.values())
    assert r["obs_baseline"] <= r["chance"] + 0.05
    assert r["selectivity"] == pytest.approx(r["score"] - r["control"]) and r["selectivity"] >= 0.1
    twin = [steps[p]["random_init"] for p in sorted(steps)]
    assert twin[-1] <= steps[max(steps)]["score"] and min(twin) < 1.0
    assert r["verdict"].startswith("evidence of memory")


def test_causal_check_on_a_continuous_variable_says_so_without_listing_values():
    agent = rl.zoo.load("cartpole-ppo")
    with pytest.raises(InputError, match=r"'x' is a continuous variable with \d+ distinct values.*bin it") as e:
        wm.causal_check(agent, "policy.1", "x", episodes=2, seeds=(0,), probe_episodes=2)
    assert len(str(e.value)) < 400  # the count, not the values


def _user_ppo():
    from stable_baselines3 import PPO

    return PPO("MlpPolicy", rl.envs.make("CartPole-v1"), seed=0, device="cpu")


def test_probe_on_a_users_own_sb3_agent_builds_or_takes_a_twin(monkeypatch):
    model = _user_ppo()  # not a zoo agent: there is no zoo twin to load
    res = wm.probe(model, env="CartPole-v1", sites=["policy.1"], variables=["theta"], episodes=3, control=False)
    r = res.row("policy.1", "theta")
    assert r["random_init"] is not None and res.config["random_twin"].endswith("-random@seed0")
    # an explicit twin is used as given
    twin = rl.agents.wrap(_user_ppo().policy, env_id="CartPole-v1", name="my-twin")
    res = wm.probe(model, env="CartPole-v1", sites=["policy.1"], variables=["theta"], episodes=3, control=False,
                   twin=twin)
    assert res.config["random_twin"] == "my-twin"
    # when no twin can be built the error says how to pass one
    def refuse(agent, seed=None):
        raise InterpError("cannot rebuild")
    monkeypatch.setattr(rl.agents, "random_twin", refuse)
    with pytest.raises(InputError, match=r"pass twin=.*or twin=None"):
        wm.probe(model, env="CartPole-v1", sites=["policy.1"], variables=["theta"], episodes=3)
    assert wm.probe(model, env="CartPole-v1", sites=["policy.1"], variables=["theta"], episodes=3,
                    twin=None).row("policy.1", "theta")["random_init"] is None
    # without rl.agents.random_twin only zoo agents have a twin: the error names the argument and the fix
    monkeypatch.delattr(rl.agents, "random_twin")
    with pytest.raises(InputError, match=r"twin: 'ActorCriticPolicy' is not a zoo agent.*pass twin="):
        wm.probe(model, env="CartPole-v1", sites=["policy.1"], variables=["theta"], episodes=3)
    with pytest.raises(InputError, match="same argument"):
        wm.probe(model, env="CartPole-v1", twin=None, random_twin=None)


def test_control_task_is_the_core_one_by_observation_type():
    # the sweep's control score equals a probe fitted by hand on interp_core's control labels, types = the
    # distinct observations, on the same episode split
    agent = rl.zoo.load("tmaze-recurrent")
    ro = rl.collect(agent, episodes=40, sites=["obs", "memory.h"], seed=0)
    res = wm.probe(agent, rollout=ro, sites=["memory.h"], variables=["cue"], twin=None, seed=0)
    y = np.asarray(ro.world["cue"])
    tr, te = train_test_split_by_group(len(ro), ro.episode, 0.3, 0)
    yc = control_labels(y, inputs=ro.obs, seed=0)
    # identical observations (e.g. the same corridor cell under either cue) share one control label
    types = input_types(ro.obs)
    assert all(len(set(yc[types == t])) == 1 for t in np.unique(types))
    X = ro.features("memory.h").float()
    by_hand = wm.make_probe("classification").fit(X[tr], yc[tr]).score(X[te], yc[te])
    assert res.row("memory.h", "cue")["control"] == pytest.approx(by_hand)


def test_confidence_interval_is_the_t_interval():
    from scipy.stats import t

    v = np.array([0.8, 0.9, 1.0, 0.85, 0.95])
    half = t.ppf(0.975, 4) * v.std(ddof=1) / np.sqrt(5)
    ci = wm._ci(v, 0.95)
    assert ci["low"] == pytest.approx(v.mean() - half) and ci["high"] == pytest.approx(v.mean() + half)
    assert wm._ci(v, 0.95, rate=True)["high"] == pytest.approx(min(1.0, v.mean() + half))
    assert wm._ci([0.5, 0.5, 0.5], 0.95)["low"] == 0.5  # no spread: a zero-width interval
