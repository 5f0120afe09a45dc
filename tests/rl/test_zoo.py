"""rl.zoo: shipped checkpoints, their cards, re-evaluation and deterministic training."""

from __future__ import annotations

import json

import pytest

from rl import zoo

TARGETS = {"cartpole-ppo": ("mean_return", 475.0), "doorkey-ppo": ("success_rate", 0.90),
           "tmaze-recurrent": ("success_rate", 0.95), "tmaze-noisy-recurrent": ("success_rate", 0.95),
           "memory-recurrent": ("success_rate", 0.90)}


def test_every_agent_ships_three_seeds_with_cards_meeting_targets():
    have = set(zoo.available())
    for name, (metric, threshold) in TARGETS.items():
        for seed in range(3):
            assert f"{name}@seed{seed}" in have
            card = json.loads((zoo.CHECKPOINT_DIR / f"{name}@seed{seed}.json").read_text())
            assert card["seed"] == seed and card["evaluation"]["n_episodes"] == 100
            assert card["evaluation"][metric] >= threshold and card["target"]["reached"]
            assert card["command"].startswith(f"python -m rl.zoo.train {name} --seed {seed}")
            assert card["steps"] > 0 and card["train_time_s"] > 0 and card["env"]


@pytest.mark.parametrize("name", ["tmaze-recurrent@seed0", "tmaze-recurrent@seed2", "doorkey-ppo@seed1",
                                  "memory-recurrent@seed1"])
def test_agent_reproduces_its_card(name):
    # the Agent's own act() (argmax of the hooked forward) re-runs the card's 100 seeded episodes exactly
    agent = zoo.load(name)
    ev = zoo.evaluate(agent, n_episodes=100)
    assert ev["success_rate"] == agent.card["evaluation"]["success_rate"]
    assert ev["mean_return"] == pytest.approx(agent.card["evaluation"]["mean_return"], abs=1e-9)


def test_cartpole_balances_and_random_twin_does_not():
    assert zoo.evaluate(zoo.load("cartpole-ppo@seed2"), n_episodes=3)["mean_return"] >= 475
    assert zoo.evaluate(zoo.load("cartpole-ppo-random@seed2"), n_episodes=3)["mean_return"] < 100


@pytest.mark.slow
def test_training_is_deterministic_from_the_seed(tmp_path):
    from rl.zoo.train import train

    a = train("tmaze-recurrent", seed=4, out=tmp_path / "a", total_timesteps=1024, n_eval_episodes=5)
    b = train("tmaze-recurrent", seed=4, out=tmp_path / "b", total_timesteps=1024, n_eval_episodes=5)
    train("tmaze-recurrent", seed=5, out=tmp_path / "c", total_timesteps=1024, n_eval_episodes=5)
    blob = lambda d: (d / "tmaze-recurrent@seed4.safetensors").read_bytes()  # noqa: E731
    assert blob(tmp_path / "a") == blob(tmp_path / "b")
    assert (tmp_path / "c" / "tmaze-recurrent@seed5.safetensors").read_bytes() != blob(tmp_path / "a")
    assert a["evaluation"] == b["evaluation"]
    agent = zoo.load("tmaze-recurrent@seed4", checkpoint_dir=tmp_path / "a")
    assert agent.card["steps"] == 1024


@pytest.mark.slow
def test_stop_at_target_keeps_the_weights_it_evaluated(tmp_path, monkeypatch):
    import dataclasses

    from rl.zoo import specs
    from rl.zoo.train import train

    spec = dataclasses.replace(specs.get_spec("tmaze-recurrent"), total_timesteps=20_480, eval_every=1024)
    monkeypatch.setitem(specs.SPECS, "tmaze-recurrent", spec)
    card = train("tmaze-recurrent", seed=0, out=tmp_path, n_eval_episodes=20)
    steps, values = zip(*card["evaluations"])
    assert card["target"]["reached"] and card["steps"] == steps[-1] < card["max_steps"] == 20_480
    assert values[-1] >= 0.95 and all(v < 0.95 for v in values[:-1])
    assert all(s >= 1024 * (i + 1) for i, s in enumerate(steps))  # evaluated at the interval, no more often
    # the checkpoint is the policy that was evaluated, not one trained on a further rollout
    ev = zoo.evaluate(zoo.load("tmaze-recurrent@seed0", checkpoint_dir=tmp_path), n_episodes=20)
    assert ev["success_rate"] == card["evaluation"]["success_rate"]
    assert ev["mean_return"] == pytest.approx(card["evaluation"]["mean_return"], abs=1e-9)


def test_missing_checkpoint_is_a_store_error_and_evaluate_shows_progress(capsys):
    from interp_core.errors import StoreError

    with pytest.raises(StoreError, match="rl.zoo.train cartpole-ppo --seed 7"):
        zoo.load("cartpole-ppo@seed7")
    agent = zoo.load("tmaze-recurrent")
    assert not agent.training  # zoo agents are built in eval mode: no train-mode warnings
    quiet = zoo.evaluate(agent, n_episodes=5, progress=False)
    assert capsys.readouterr().err == ""
    shown = zoo.evaluate(agent, n_episodes=5, progress=True)
    err = capsys.readouterr().err
    assert "evaluate tmaze-recurrent@seed0" in err and "/5" in err
    assert shown == quiet and quiet["n_episodes"] == 5
