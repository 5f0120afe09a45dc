"""interp_core.causal on the T-maze agent (``rl.zoo.load("tmaze-recurrent")``, an SB3 LSTM policy).

High-level model: ``turn = cue`` (the cue is shown at step 0 only; the agent must carry it along the
corridor). An interchange at corridor step ``t`` sets a site's (sub)space to a **source episode's** activation
at the same step, recorded with the source's own recurrent state, then the agent acts on in closed loop
(``rl.collect(..., interventions=)``, the edit applied at forward call ``t`` only); IIA is the share of
episodes whose turn at the junction matches the **source's** cue. Pairs are random, so an intervention with
no effect scores the share of pairs whose cues already agree (about 1/2: chance).

Ground truth used here:
- the observation encoder sees the same corridor observation in every episode, so interchanging it at a
  corridor step is exactly a no-op: IIA equals the share of same-cue pairs;
- the LSTM's whole state ``(memory.h, memory.c)`` carries everything the future depends on, so
  interchanging both gives the source's turn on every pair (IIA 1);
- ``memory.h`` alone is measured, not assumed: this agent keeps part of the cue in the cell state, so a
  swapped ``h`` is partly restored from the base's ``c`` (IIA clearly above chance, below 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rl
from interp_core import HookedModel
from interp_core.causal import DAS, IIAResult, Interchange, binomial_ci, iia

N = 64
SEED = 3
STEP = 2  # a corridor step for every corridor length (3..6)


@pytest.fixture(scope="module")
def agent():
    return rl.zoo.load("tmaze-recurrent")


@pytest.fixture(scope="module")
def base_rollout(agent):
    ro = rl.collect(agent, episodes=N, n_envs=N, seed=SEED, sites=["memory.h", "memory.c", "encoder.out"])
    cue = np.array([ro.world["cue"][(ro.episode == i) & (ro.step == 0)][0] for i in range(N)])
    return ro, cue


def _turns(ro) -> np.ndarray:
    """The action at each episode's last step (the junction), episodes 0..N-1 (env i's first episode)."""
    return np.array([ro.actions[ro.episode == i][np.argmax(ro.step[ro.episode == i])] for i in range(N)])


def closed_loop_iia(agent, ro, cue, subspaces: dict, t: int, perm: np.ndarray) -> IIAResult:
    """IIA of interchanging ``{site: subspace}`` at step ``t`` from episode ``perm[i]`` into episode ``i``."""
    rows = np.array([np.flatnonzero((ro.episode == i) & (ro.step == t))[0] for i in range(N)])
    ivs = {site: Interchange(ro.activations[site][rows][perm], sub, calls=[t]) for site, sub in subspaces.items()}
    edited = rl.collect(agent, episodes=N, n_envs=N, seed=SEED, interventions=ivs)
    return IIAResult.from_predictions(_turns(edited), cue[perm], _turns(ro), config={"sites": list(subspaces)})


def test_tmaze_closed_loop_iia_memory_vs_encoder(agent, base_rollout):
    ro, cue = base_rollout
    assert np.array_equal(_turns(ro), cue)  # the agent solves the task: turn = cue without intervention
    perm = np.random.default_rng(0).permutation(N)
    same = float((cue == cue[perm]).mean())
    assert 0.3 < same < 0.7  # random pairs: about half agree already
    enc = closed_loop_iia(agent, ro, cue, {"encoder.out": None}, STEP, perm)
    assert enc.unchanged == pytest.approx(same)
    assert enc.accuracy == pytest.approx(same)  # the encoder at a corridor step holds no cue: a no-op, chance
    state = closed_loop_iia(agent, ro, cue, {"memory.h": None, "memory.c": None}, STEP, perm)
    assert state.accuracy == 1.0 and state.ci[0] > 0.9
    assert state.ci == pytest.approx(binomial_ci(N, N))
    h = closed_loop_iia(agent, ro, cue, {"memory.h": None}, STEP, perm)
    assert h.ci[0] > same + 0.1  # memory.h carries the cue causally, above chance ...
    assert h.accuracy < 1.0  # ... but not all of it: the cell state restores part of it (measured 0.84 here)
    assert set(h.per_class) == {0, 1}


class Unroll(nn.Module):
    """The agent's policy stepped over a fixed-length observation sequence ``[N, T, obs]`` from a given LSTM
    state; returns the last step's action logits. Each policy sub-module then runs ``T`` times, so its
    per-step activations are the per-call sites ``policy.memory_h#t`` (interp_core's reused-module sites)."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, obs_seq: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
        state = (h0, c0)
        for t in range(obs_seq.shape[1]):
            out = self.policy(obs_seq[:, t], state, None)
            state = out.state
        return out.logits


def _sequences(agent, n: int, seed: int, length: int = 4):
    ro = rl.collect(agent, episodes=n, n_envs=n, seed=seed, sites=["memory.h"],
                    env_kwargs={"corridor_length": length})
    order = np.lexsort((ro.step, ro.episode))
    obs = torch.as_tensor(ro.obs[order].reshape(n, length + 2, -1)).float()
    cue = torch.as_tensor(ro.world["cue"][order].reshape(n, length + 2)[:, 0])
    return ro, obs, cue


def test_tmaze_das_at_a_corridor_step_agrees_with_the_probe(agent):
    from interp_core.probes import LinearProbe

    n, t = 96, 1
    unrolled = HookedModel(Unroll(agent.model), adapter="generic")
    ro, obs, cue = _sequences(agent, n, seed=0)
    z = torch.zeros(1, n, 32)
    perm = torch.as_tensor(np.random.default_rng(0).permutation(n))
    site = f"policy.memory_h#{t}"
    das = DAS(k=1, epochs=8, lr=0.05, batch_size=32, seed=0).fit(unrolled, site, (obs, z, z), (obs[perm], z, z),
                                                                 cue[perm])
    # held-out pairs
    _, obs2, cue2 = _sequences(agent, n, seed=1)
    p2 = torch.as_tensor(np.random.default_rng(1).permutation(n))
    base, source, target = (obs2, z, z), (obs2[p2], z, z), cue2[p2]
    X, y = ro.features("memory.h").float(), ro.world["cue"]
    rows = ro.step == t
    probe = LinearProbe(kind="logistic", l2=1.0, standardize=False, max_iter=1000).fit(X[rows], y[rows])
    u = probe.coef_[0].float()
    cmp = das.compare(unrolled, base, source, target, probe_direction=u, seeds=(0, 1, 2))
    same = float((cue2 == target).float().mean())
    # the 1-d DAS subspace does what the whole 32-d hidden state does, and lies along the probe direction
    assert cmp.das == pytest.approx(cmp.full, abs=0.03) and cmp.das > same + 0.1
    assert cmp.probe_cosine > 0.95
    assert cmp.probe == pytest.approx(cmp.das, abs=0.03)
    assert max(cmp.random) <= same + 0.05  # random 1-d subspaces: chance
    # the whole recurrent state (hidden and cell) at step t, interchanged jointly: IIA 1
    joint = iia(unrolled, base, source, [site, f"policy.memory_c#{t}"], lambda b, s: s, base_vars=cue2,
                source_vars=target)
    assert joint.accuracy == 1.0
    # the observation encoder at the same step: a no-op (same corridor observation), chance
    enc = iia(unrolled, base, source, f"policy.features_out#{t}", lambda b, s: s, base_vars=cue2,
              source_vars=target)
    assert enc.accuracy == pytest.approx(same) and enc.unchanged == pytest.approx(same)
