"""DEC and IDEC: Student's t soft assignment, target distribution and losses.

DEC: Xie, Girshick and Farhadi, "Unsupervised Deep Embedding for Clustering Analysis",
ICML 2016. IDEC: Guo, Gao, Liu and Yin, "Improved Deep Embedded Clustering with Local
Structure Preservation", IJCAI 2017.

Notation (DEC, eqs. 1-3): embeddings ``z_i`` (B, d), centres ``mu_j`` (K, d),

    q_ij = (1 + ||z_i - mu_j||^2 / alpha)^(-(alpha+1)/2) / sum_j' (same)      (eq. 1)
    p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'),   f_j = sum_i q_ij       (eq. 3)
    L    = KL(P || Q) = sum_i sum_j p_ij log(p_ij / q_ij)                      (eq. 2)

IDEC adds the autoencoder's reconstruction loss: L = L_r + gamma * L_c (eq. 7).

The cluster frequencies ``f_j`` are sums over the WHOLE dataset, not a batch; in
data-parallel training each worker sums its shard and the sums are all-reduced
(``deimos_ray.train.dec_loop``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deimos_ray.losses.dec import kl_clustering_loss, soft_assignment
from deimos_ray.models.autoencoder import ConvAutoencoder, DenseAutoencoder

VARIANTS = ("dec", "idec")
AUTOENCODERS = ("dense", "conv")
PRETRAIN_MODES = ("layerwise", "end_to_end")
OPTIMIZERS = ("sgd", "adam")
SIZE_PRIORS = ("uniform", "start")


@dataclass(frozen=True)
class DECConfig:
    """Hyperparameters of DEC / IDEC. Defaults come from the papers unless noted.

    Attributes:
        n_clusters: Number of clusters K. 1 is allowed (every row in one cluster, the
            autoencoder still trained), as scikit-learn's k-means allows it.
        variant: ``dec`` (KL loss only) or ``idec`` (KL + gamma x reconstruction).
        autoencoder: ``dense`` (D-500-500-2000-d, the papers' net) or ``conv``.
        hidden_dims: Hidden widths of the dense autoencoder (DEC: 500, 500, 2000).
        latent_dim: Embedding size d (DEC: 10).
        pretrain: ``end_to_end`` (default: the whole autoencoder trained at once with
            Adam, as in the IDEC paper and the Keras reference implementation of DEC) or
            ``layerwise`` (the DEC paper's procedure: greedy layer-wise denoising
            autoencoders with SGD, then end-to-end fine-tuning). This is a deliberate
            departure from the DEC paper's default: its SGD schedule is written for
            50,000 iterations per layer and 100,000 of fine-tuning, and at the budgets a
            job runs here (hundreds of epochs) it leaves a poor embedding.
        pretrain_epochs: Epochs of autoencoder training. In layerwise mode every layer
            pair gets half this many epochs and the fine-tuning gets all of them
            (the paper's 50,000 : 100,000 iteration ratio).
        pretrain_lr: Learning rate of pretraining. ``None``: 0.1 with SGD (DEC paper's
            layer-wise solver, divided by 10 after 40% of each stage, as its 20,000 of
            50,000 iterations), 1e-3 with Adam (IDEC).
        dropout: Input and hidden dropout of the layer-wise denoising stages (DEC: 0.2).
        epochs: Upper bound on clustering epochs (passes over the data); training
            usually stops earlier on ``tol``. 0: the k-means start is the model (the
            DEC paper's "AE+k-means" baseline).
        batch_size: Mini-batch size per step, global across workers (DEC/IDEC: 256).
        lr: Clustering learning rate. ``None``: 0.01 (SGD, momentum 0.9) for DEC as in
            its paper, 1e-3 (Adam) for IDEC as in its paper.
        update_interval: Steps between recomputations of the target distribution over
            the whole dataset (reference code: 140 for MNIST, 30 for USPS).
        tol: Stop when fewer than this fraction of labels changed between two target
            updates (DEC: 0.1%).
        alpha: Degrees of freedom of the Student's t kernel (DEC: 1).
        gamma: Weight of the clustering loss against reconstruction in IDEC (0.1).
        kmeans_n_init: Restarts of the k-means that initialises the centres (DEC: 20).
        kmeans_max_samples: Embeddings gathered for the k-means initialisation; larger
            datasets are subsampled (seeded) so rank 0 never holds them all.
        size_prior: What the target's frequency term pulls the cluster sizes towards
            (:func:`deimos_ray.losses.dec.target_distribution`): ``uniform`` (the paper:
            equal sizes) or ``start`` (the shares of the k-means start, for collections
            whose classes are uneven). Not in the papers.
        frequency_power: The exponent of the target's frequency term (the paper: 1; 0
            sharpens q without any pull on the sizes). Not in the papers.
    """

    n_clusters: int = 10
    variant: str = "dec"
    autoencoder: str = "dense"
    hidden_dims: tuple[int, ...] = (500, 500, 2000)
    latent_dim: int = 10
    pretrain: str = "end_to_end"
    pretrain_epochs: int = 100
    pretrain_lr: float | None = None
    dropout: float = 0.2
    epochs: int = 200
    batch_size: int = 256
    lr: float | None = None
    update_interval: int = 140
    tol: float = 0.001
    alpha: float = 1.0
    gamma: float = 0.1
    kmeans_n_init: int = 20
    kmeans_max_samples: int = 50_000
    size_prior: str = "uniform"
    frequency_power: float = 1.0

    def __post_init__(self) -> None:
        checks = [
            (self.n_clusters >= 1, f"model.n_clusters must be >= 1, got {self.n_clusters}"),
            (self.variant in VARIANTS, f"model.variant must be one of {VARIANTS}"),
            (self.autoencoder in AUTOENCODERS, f"model.autoencoder must be one of {AUTOENCODERS}"),
            (self.pretrain in PRETRAIN_MODES, f"model.pretrain must be one of {PRETRAIN_MODES}"),
            (self.size_prior in SIZE_PRIORS, f"model.size_prior must be one of {SIZE_PRIORS}"),
            (self.frequency_power >= 0, f"model.frequency_power must be >= 0, got {self.frequency_power}"),
            (
                not (self.autoencoder == "conv" and self.pretrain == "layerwise"),
                "model.pretrain=layerwise needs the dense autoencoder; use end_to_end with conv",
            ),
            (self.pretrain_epochs >= 0, "model.pretrain_epochs must be >= 0"),
            (self.epochs >= 0, "model.epochs must be >= 0"),
            (self.batch_size >= 1, "model.batch_size must be >= 1"),
            (self.update_interval >= 1, "model.update_interval must be >= 1"),
            (0 <= self.tol < 1, "model.tol must be in [0, 1)"),
            (self.alpha > 0, "model.alpha must be > 0"),
            (0 <= self.dropout < 1, "model.dropout must be in [0, 1)"),
            (self.latent_dim >= 1, "model.latent_dim must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def cluster_optimizer(self) -> tuple[str, float]:
        """(optimizer, learning rate) of the clustering phase, from each paper."""
        if self.variant == "idec":
            return "adam", self.lr if self.lr is not None else 1e-3
        return "sgd", self.lr if self.lr is not None else 0.01

    @property
    def pretrain_optimizer(self) -> tuple[str, float]:
        """(optimizer, learning rate) of pretraining, from each paper."""
        if self.pretrain == "layerwise":
            return "sgd", self.pretrain_lr if self.pretrain_lr is not None else 0.1
        return "adam", self.pretrain_lr if self.pretrain_lr is not None else 1e-3


def build_autoencoder(cfg: DECConfig, input_shape: tuple[int, ...]) -> nn.Module:
    """The autoencoder named by ``cfg`` for inputs of shape ``input_shape`` = (C, H, W)."""
    if cfg.autoencoder == "conv":
        c, h, w = input_shape
        return ConvAutoencoder(c, (h, w), cfg.latent_dim)
    input_dim = 1
    for s in input_shape:
        input_dim *= s
    return DenseAutoencoder(input_dim, cfg.hidden_dims, cfg.latent_dim)


class DEC(nn.Module):
    """Encoder plus trainable cluster centres; with ``variant=idec`` also the decoder.

    ``forward`` returns ``(z, q, x_hat)``: embeddings (B, d), soft assignments (B, K)
    and the reconstruction (``None`` for DEC, which drops the decoder as in the paper).
    """

    def __init__(self, cfg: DECConfig, autoencoder: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.autoencoder = autoencoder
        self.centres = nn.Parameter(torch.zeros(cfg.n_clusters, cfg.latent_dim))
        if cfg.variant == "dec":
            # DEC discards the decoder after pretraining; freezing it also keeps DDP from
            # waiting for gradients that never come.
            for param in autoencoder.decoder_parameters():
                param.requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (B, d)."""
        return self.autoencoder.encoder(self._shape(x))

    def _shape(self, x: torch.Tensor) -> torch.Tensor:
        # Dense nets take flat vectors, conv nets images; the data carry (C, H, W).
        if isinstance(self.autoencoder, DenseAutoencoder):
            return x.flatten(1)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = self._shape(x)
        z = self.autoencoder.encoder(x)
        q = soft_assignment(z, self.centres, self.cfg.alpha)
        x_hat = self.autoencoder.decoder(z) if self.cfg.variant == "idec" else None
        return z, q, x_hat

    def loss(self, x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """DEC: KL(P||Q). IDEC: MSE reconstruction + gamma * KL(P||Q) (IDEC eq. 7)."""
        _, q, x_hat = self(x)
        return self.loss_from_outputs(x, p, q, x_hat)

    def loss_from_outputs(
        self, x: torch.Tensor, p: torch.Tensor, q: torch.Tensor, x_hat: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss from a forward pass already made (e.g. through a DDP wrapper)."""
        kl = kl_clustering_loss(q, p)
        if x_hat is None:
            return kl, {"kl": kl.item()}
        recon = F.mse_loss(x_hat, self._shape(x))
        return recon + self.cfg.gamma * kl, {"kl": kl.item(), "recon": recon.item()}
