"""Exemplars per latent: ``vision.exemplars.top_exemplars`` on an SAE's latent site (``<site>.latents``) of a
zoo digits CNN, a zoo RL agent and a recurrent agent with its recorded states, each against the brute-force
top-k of latents computed by hand with ``sae.encode``."""

import pytest
import torch
from torch import nn

from interp_core.features import SparseAutoencoder, with_latents


def brute(scores: torch.Tensor, k: int):
    """Stable descending sort of ``[U, M]`` candidates -> (values, positions) of the top k."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), order


def random_sae(d, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=g)
    return SparseAutoencoder.from_weights(W, torch.randn(n, generator=g) * 0.1, W, torch.zeros(d), variant="relu")


@pytest.mark.slow  # ~18 s on the loaded shared machine (zoo load and digits data), ~5 s alone
def test_exemplars_of_latents_on_the_digits_cnn_match_brute_force():
    import vision.data
    import vision.zoo
    from vision.exemplars import top_exemplars

    hm = vision.zoo.load("digits-cnn@seed0")
    x, _ = vision.data.digits_tensors("test")
    x = x[:48]
    _, cache = hm.run_with_cache(x, sites=["layer2.0"])
    act = cache["layer2.0"]  # [B, C, h, w]
    b, c, h, w = act.shape
    sae = random_sae(c, 10)
    lat = sae.encode(act.permute(0, 2, 3, 1).reshape(-1, c)).reshape(b, h * w, 10)  # [B, cells, n]
    hm2 = with_latents(hm, {"layer2.0": sae})
    units = [0, 3, 7]
    res = top_exemplars(hm2, x, "layer2.0.latents", channels=units, k=4, batch_size=16, progress=False)
    vals, idx = brute(lat.amax(1).T[units], 4)
    assert torch.equal(res.indices, idx)
    torch.testing.assert_close(res.scores, vals)
    best_cell = lat.argmax(1).T[units]  # [U, B] the winning cell of each image
    want = torch.stack([best_cell[u, idx[u]] for u in range(len(units))])
    assert torch.equal(res.cells[..., 0] * w + res.cells[..., 1], want)
    assert res.boxes is not None and res.boxes.shape == (3, 4, 4)
    # the same as scoring the base site with the SAE's encoder as features=
    alt = top_exemplars(hm, x, "layer2.0", features=sae.encode, channels=units, k=4, batch_size=16, progress=False)
    assert torch.equal(alt.indices, res.indices)


def test_exemplars_of_latents_on_a_zoo_agent_match_the_rollout():
    import rl
    import rl.zoo
    from vision.exemplars import top_exemplars

    agent = rl.zoo.load("cartpole-ppo@seed0")
    ro = rl.collect(agent, steps=120, sites=["policy.1"], seed=0)
    rows = ro.features("policy.1")
    sae = random_sae(rows.shape[1], 8)
    hm2 = with_latents(agent, {"policy.1": sae})
    assert type(hm2) is type(agent) and hm2.env_id == agent.env_id and not hm2.recurrent
    res = top_exemplars(hm2, torch.as_tensor(ro.obs), "policy.1.latents", k=5, progress=False)
    vals, idx = brute(sae.encode(rows).T, 5)
    assert torch.equal(res.indices, idx)
    torch.testing.assert_close(res.scores, vals, atol=1e-5, rtol=1e-5)


def test_a_recurrent_agent_keeps_needing_its_states_with_latents():
    import rl.agents
    from vision.exemplars import top_exemplars

    class GRUPolicy(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
            self.memory = nn.GRUCell(8, 6)
            self.actor = nn.Linear(6, 2)

    torch.manual_seed(0)
    policy = GRUPolicy().eval()
    agent = rl.agents.wrap(policy, obs_shape=(4,))
    g = torch.Generator().manual_seed(0)
    obs, h = torch.randn(12, 4, generator=g), torch.randn(12, 6, generator=g)
    sae = random_sae(6, 5)
    hm2 = with_latents(agent, {"memory.h": sae})
    assert hm2.recurrent
    with pytest.raises(ValueError, match="recurrent"):
        top_exemplars(hm2, obs, "memory.h.latents", k=3)
    res = top_exemplars(hm2, obs, "memory.h.latents", k=3, states=(h,), batch_size=5, progress=False)
    with torch.no_grad():
        truth = sae.encode(policy.memory(policy.encoder(obs), h))  # each step with its own memory
    vals, idx = brute(truth.T, 3)
    assert torch.equal(res.indices, idx)
    torch.testing.assert_close(res.scores, vals)
