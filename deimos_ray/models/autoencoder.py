"""Autoencoders used by DEC/IDEC (and later DESOM): a dense stack and a small conv net.

Shapes: the dense autoencoder takes flat vectors ``(B, D)``; the convolutional one takes
images ``(B, C, H, W)``. Both expose ``encoder(x) -> z`` of shape ``(B, latent_dim)`` and
``decoder(z) -> x_hat`` with the input's shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DenseAutoencoder(nn.Module):
    """Symmetric fully connected autoencoder ``D-500-500-2000-d`` (DEC's default).

    Every layer uses ReLU except the embedding layer and the reconstruction layer, which
    are linear, as in Xie et al. (2016), section 4.3: the embedding keeps full
    information and the output can reproduce inputs of any sign.

    The layers are kept as lists of ``nn.Linear`` so greedy layer-wise pretraining can
    train one encoder/decoder pair at a time (:func:`layer_pair`).

    Args:
        input_dim: Flattened input size D.
        hidden_dims: Widths of the hidden layers, encoder side (DEC: 500, 500, 2000).
        latent_dim: Embedding size d (DEC: 10).
    """

    def __init__(self, input_dim: int, hidden_dims: Sequence[int], latent_dim: int):
        super().__init__()
        dims = [input_dim, *hidden_dims, latent_dim]
        self.dims = dims
        self.enc_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        # Decoder layer i mirrors encoder layer i: it maps dims[i+1] back to dims[i].
        self.dec_layers = nn.ModuleList(nn.Linear(b, a) for a, b in zip(dims[:-1], dims[1:], strict=True))

    @property
    def num_layers(self) -> int:
        return len(self.enc_layers)

    def encode_upto(self, x: torch.Tensor, depth: int) -> torch.Tensor:
        """Output of the first ``depth`` encoder layers (with their activations)."""
        h = x
        for i in range(depth):
            h = self.enc_layers[i](h)
            if i < self.num_layers - 1:
                h = torch.relu(h)
        return h

    def encoder(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, latent_dim)."""
        return self.encode_upto(x, self.num_layers)

    def decoder(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, D)."""
        h = z
        for i in reversed(range(self.num_layers)):
            h = self.dec_layers[i](h)
            if i > 0:
                h = torch.relu(h)
        return h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters used only by the decoder (frozen when DEC drops the decoder)."""
        return list(self.dec_layers.parameters())

    def layer_pair(self, i: int) -> nn.ModuleList:
        """Encoder layer ``i`` with its mirror decoder layer: one denoising autoencoder."""
        return nn.ModuleList([self.enc_layers[i], self.dec_layers[i]])


class DenoisingLayerPair(nn.Module):
    """One stage of DEC's greedy layer-wise pretraining (Xie et al. 2016, section 3.2).

    A two-layer denoising autoencoder on the previous stage's output h:
    ``h~ = Dropout(h); y = g1(W1 h~); y~ = Dropout(y); h^ = g2(W2 y~)``, trained with the
    least-squares loss ``||h - h^||^2``. g1 is ReLU except in the deepest pair (the
    embedding stays linear); g2 is ReLU except in the first pair (it reconstructs the
    data, which may take any sign).

    Args:
        autoencoder: The dense autoencoder whose layer pair ``index`` is trained.
        index: Which encoder layer and its mirror decoder layer.
        dropout: Corruption rate for the input and the hidden code (DEC: 0.2).
    """

    def __init__(self, autoencoder: DenseAutoencoder, index: int, dropout: float):
        super().__init__()
        self.encode = autoencoder.enc_layers[index]
        self.decode = autoencoder.dec_layers[index]
        self.relu_hidden = index < autoencoder.num_layers - 1
        self.relu_output = index > 0
        self.dropout = dropout

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, D_in) -> scalar mean squared reconstruction error of h."""
        y = self.encode(nn.functional.dropout(h, self.dropout, self.training))
        if self.relu_hidden:
            y = torch.relu(y)
        h_hat = self.decode(nn.functional.dropout(y, self.dropout, self.training))
        if self.relu_output:
            h_hat = torch.relu(h_hat)
        return nn.functional.mse_loss(h_hat, h)


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder: three strided convolutions (32-64-128) and a dense code.

    The shape follows the convolutional autoencoder of DCEC (Guo et al., ICONIP 2017):
    5x5, 5x5 and 3x3 kernels with stride 2, a dense embedding, and transposed
    convolutions back to the exact input size, for any H and W.

    Args:
        in_channels: 1 or 3.
        image_size: (H, W) of the inputs.
        latent_dim: Embedding size.
        widths: Channels of the three convolutions.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        latent_dim: int,
        widths: Sequence[int] = (32, 64, 128),
    ):
        super().__init__()
        c1, c2, c3 = widths
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(in_channels, c1, 5, stride=2, padding=2),
                nn.Conv2d(c1, c2, 5, stride=2, padding=2),
                nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            ]
        )
        self.deconvs = nn.ModuleList(
            [
                nn.ConvTranspose2d(c3, c2, 3, stride=2, padding=1),
                nn.ConvTranspose2d(c2, c1, 5, stride=2, padding=2),
                nn.ConvTranspose2d(c1, in_channels, 5, stride=2, padding=2),
            ]
        )
        # Record every intermediate size so the decoder can restore it exactly.
        sizes = [tuple(image_size)]
        h, w = image_size
        for conv in self.convs:
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            sizes.append((h, w))
        self.sizes = sizes
        self.code_shape = (c3, h, w)
        self.to_latent = nn.Linear(c3 * h * w, latent_dim)
        self.from_latent = nn.Linear(latent_dim, c3 * h * w)

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters used only by the decoder (frozen when DEC drops the decoder)."""
        return [*self.from_latent.parameters(), *self.deconvs.parameters()]

    def encoder(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, latent_dim)."""
        h = x
        for conv in self.convs:
            h = torch.relu(conv(h))
        return self.to_latent(h.flatten(1))

    def decoder(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, C, H, W)."""
        h = torch.relu(self.from_latent(z)).view(-1, *self.code_shape)
        out_sizes = list(reversed(self.sizes[:-1]))
        for i, (deconv, size) in enumerate(zip(self.deconvs, out_sizes, strict=True)):
            h = deconv(h, output_size=size)
            if i < len(self.deconvs) - 1:
                h = torch.relu(h)
        return h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z)
