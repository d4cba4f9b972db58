"""DEC's soft assignment, target distribution and losses against NumPy references."""

import numpy as np
import pytest
import torch

from deimos_ray.models.autoencoder import ConvAutoencoder, DenoisingLayerPair, DenseAutoencoder
from deimos_ray.models.dec import (
    DEC,
    DECConfig,
    build_autoencoder,
    kl_clustering_loss,
    soft_assignment,
    target_distribution,
)


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


def test_dec_freezes_decoder_and_idec_adds_reconstruction():
    torch.manual_seed(0)
    x, p = torch.rand(8, 1, 4, 4), torch.full((8, 3), 1 / 3)
    dec = DEC(DECConfig(n_clusters=3, latent_dim=2), DenseAutoencoder(16, (8,), 2))
    assert not any(q.requires_grad for q in dec.autoencoder.decoder_parameters())
    loss, parts = dec.loss(x, p)
    assert set(parts) == {"kl"}
    idec_cfg = DECConfig(n_clusters=3, latent_dim=2, variant="idec", gamma=0.1)
    idec = DEC(idec_cfg, DenseAutoencoder(16, (8,), 2))
    loss, parts = idec.loss(x, p)
    assert loss.item() == pytest.approx(parts["recon"] + 0.1 * parts["kl"], rel=1e-5)


def test_dense_autoencoder_shapes_and_linear_ends():
    ae = DenseAutoencoder(20, (16, 8), 3)
    x = torch.randn(5, 20)
    z, x_hat = ae(x)
    assert z.shape == (5, 3) and x_hat.shape == (5, 20)
    assert (z < 0).any() and (x_hat < 0).any()  # embedding and output are linear
    assert (ae.encode_upto(x, 1) >= 0).all()  # hidden layers are ReLU


def test_denoising_pair_activations():
    ae = DenseAutoencoder(10, (6,), 2)
    first, last = DenoisingLayerPair(ae, 0, 0.2), DenoisingLayerPair(ae, 1, 0.2)
    assert first.relu_hidden and not first.relu_output
    assert not last.relu_hidden and last.relu_output
    assert first(torch.rand(4, 10)).ndim == 0


@pytest.mark.parametrize("size", [(28, 28), (16, 16), (13, 21)])
def test_conv_autoencoder_restores_any_size(size):
    ae = ConvAutoencoder(1, size, 5)
    z, x_hat = ae(torch.rand(2, 1, *size))
    assert z.shape == (2, 5) and x_hat.shape == (2, 1, *size)


def test_config_resolves_papers_defaults():
    assert DECConfig().pretrain == "end_to_end"
    assert DECConfig().pretrain_optimizer == ("adam", 1e-3)
    assert DECConfig(pretrain="layerwise").pretrain_optimizer == ("sgd", 0.1)
    assert DECConfig().cluster_optimizer == ("sgd", 0.01)
    assert DECConfig(variant="idec").cluster_optimizer == ("adam", 1e-3)
    with pytest.raises(ValueError, match="layerwise needs the dense"):
        DECConfig(autoencoder="conv", pretrain="layerwise")
    with pytest.raises(ValueError, match="n_clusters"):
        DECConfig(n_clusters=1)
    assert isinstance(build_autoencoder(DECConfig(), (1, 8, 8)), DenseAutoencoder)
