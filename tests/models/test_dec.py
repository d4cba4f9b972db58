"""DEC / IDEC models and their autoencoders: shapes, frozen parts, the papers' defaults."""

import pytest
import torch

from deimos_ray.models.autoencoder import ConvAutoencoder, DenoisingLayerPair, DenseAutoencoder
from deimos_ray.models.dec import DEC, DECConfig, build_autoencoder


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
        DECConfig(n_clusters=0)
    assert isinstance(build_autoencoder(DECConfig(), (1, 8, 8)), DenseAutoencoder)
