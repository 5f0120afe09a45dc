"""rl: the interp-suite adapter for reinforcement-learning agents."""
