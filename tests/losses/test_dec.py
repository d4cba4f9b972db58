"""DEC's soft assignment, target distribution and KL loss against NumPy references."""

import numpy as np
import pytest
import torch

from deimos_ray.losses.dec import kl_clustering_loss, soft_assignment, target_distribution


def np_soft_assignment(z, mu, alpha):
    d2 = ((z[:, None, :] - mu[None, :, :]) ** 2).sum(-1)
    k = (1 + d2 / alpha) ** (-(alpha + 1) / 2)
    return k / k.sum(1, keepdims=True)


def np_target(q):
    w = q**2 / q.sum(0)
    return w / w.sum(1, keepdims=True)


@pytest.mark.parametrize("alpha", [1.0, 0.5, 3.0])
def test_soft_assignment_matches_numpy(alpha):
    rng = np.random.default_rng(0)
    z, mu = rng.normal(size=(7, 3)), rng.normal(size=(4, 3))
    q = soft_assignment(torch.tensor(z), torch.tensor(mu), alpha).numpy()
    np.testing.assert_allclose(q, np_soft_assignment(z, mu, alpha), rtol=1e-6)
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-9)


def test_soft_assignment_hand_computed():
    # z at 0; centres at distance 1 and 2: kernels 1/2 and 1/5 -> q = (5/7, 2/7).
    q = soft_assignment(torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[1.0], [2.0]], dtype=torch.float64))
    np.testing.assert_allclose(q.numpy(), [[5 / 7, 2 / 7]])


def test_target_distribution_uses_given_frequencies():
    rng = np.random.default_rng(1)
    q = rng.dirichlet(np.ones(3), size=6)
    p = target_distribution(torch.tensor(q), torch.tensor(q.sum(0))).numpy()
    np.testing.assert_allclose(p, np_target(q), rtol=1e-9)
    # Targets for a subset of rows, computed with the full dataset's f, equal the rows of
    # the full target: that is what lets each worker form p for its own shard.
    sub = target_distribution(torch.tensor(q[:2]), torch.tensor(q.sum(0))).numpy()
    np.testing.assert_allclose(sub, np_target(q)[:2], rtol=1e-9)


def test_a_size_prior_and_the_frequency_power_by_hand():
    q = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    f = torch.tensor([3.0, 1.0], dtype=torch.float64)  # cluster 0 three times as large
    uniform = target_distribution(q, f)
    np.testing.assert_allclose(uniform.numpy(), [[0.25, 0.75]] * 2)  # the paper pulls towards equal sizes
    np.testing.assert_allclose(target_distribution(q, f, torch.tensor([0.5, 0.5], dtype=torch.float64)),
                               uniform)  # a uniform prior is the paper's target
    start = target_distribution(q, f, torch.tensor([0.75, 0.25], dtype=torch.float64))
    np.testing.assert_allclose(start.numpy(), [[0.5, 0.5]] * 2)  # sizes as the prior says: no pull
    np.testing.assert_allclose(target_distribution(q, f, power=0.0).numpy(), [[0.5, 0.5]] * 2)
    half = target_distribution(q, f, power=0.5).numpy()[0, 1]
    assert half == pytest.approx(1 / (1 + 3**-0.5))


def test_target_sharpens_assignments():
    q = torch.tensor([[0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
    p = target_distribution(q, q.sum(0))
    assert p[0, 0] > q[0, 0] and p[1, 1] > q[1, 1]


def test_kl_loss_matches_numpy():
    rng = np.random.default_rng(2)
    q, p = rng.dirichlet(np.ones(4), size=5), rng.dirichlet(np.ones(4), size=5)
    expected = (p * np.log(p / q)).sum() / len(q)
    got = kl_clustering_loss(torch.tensor(q), torch.tensor(p)).item()
    assert got == pytest.approx(expected, rel=1e-9)
    assert kl_clustering_loss(torch.tensor(p), torch.tensor(p)).item() == pytest.approx(0.0, abs=1e-12)
