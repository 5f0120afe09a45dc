"""rl.zoo: shipped checkpoints, their cards, re-evaluation and deterministic training."""

from __future__ import annotations

import json

import pytest

from rl import zoo

TARGETS = {"cartpole-ppo": ("mean_return", 475.0), "doorkey-ppo": ("success_rate", 0.90),
           "tmaze-recurrent": ("success_rate", 0.95), "tmaze-noisy-recurrent": ("success_rate", 0.95)}


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


@pytest.mark.parametrize("name", ["tmaze-recurrent@seed0", "tmaze-recurrent@seed2", "doorkey-ppo@seed1"])
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
