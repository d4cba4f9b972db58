"""DESOM: Deep Embedded Self-Organising Map (Forest, Lebbah, Azzag and Lacaille, ESANN 2019).

An autoencoder and a self-organising map (:class:`deimos_ray.models.som.SOMLayer`)
trained together:

    z = encoder(x),   d_k = ||z - w_k||^2 for every map node k
    L = ||x - decoder(z)||^2  +  gamma * SOM loss(d, T)                  (gamma 1e-3)

and the temperature T of the SOM's neighbourhood decays from Tmax = 10 to Tmin = 0.1
over the training iterations (exponentially by default, as in the paper; linear and
constant as options). Prototypes start as encodings of random samples.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from deimos_ray.models.autoencoder import ConvAutoencoder, DenseAutoencoder
from deimos_ray.models.som import DECAYS, GRID_METRICS, KERNELS, SOMLayer


@dataclass(frozen=True)
class DESOMConfig:
    """Hyperparameters of DESOM. Defaults follow the paper unless noted.

    Attributes:
        map_size: (rows, cols) of the map (the paper's benchmark: 8 x 8).
        n_clusters: ``None``: each map node is a cluster. A number: k-means over the
            trained prototypes groups the nodes into this many clusters (how the paper
            turns an 8x8 map into 10 clusters for its benchmark).
        autoencoder: ``dense`` (D-500-500-2000-d) or ``conv``.
        hidden_dims: Hidden widths of the dense autoencoder.
        latent_dim: Size of the embedding z (paper: 10).
        gamma: Weight of the SOM loss against reconstruction (paper: 1e-3).
        iterations: Training steps (the paper's reference trains 10,000).
        batch_size: Mini-batch size per step, global across workers (256).
        lr: Adam learning rate.
        t_max, t_min: Temperature at the first and the last iteration (10 and 0.1).
        decay: ``exponential`` (paper), ``linear`` or ``constant`` (stays at ``t_max``).
        kernel: ``gaussian`` (paper) or ``window``.
        grid_metric: ``manhattan`` (paper) or ``euclidean`` cell distance.
        kmeans_n_init: Restarts of the k-means over prototypes (with ``n_clusters``).
            That k-means weighs each node by its hits (the training samples whose
            best-matching unit it is), so the clusters follow where the data are and
            sparsely hit nodes between two groups do not pull a centroid; neither the
            paper nor its reference code fixes this step.
    """

    map_size: tuple[int, int] = (8, 8)
    n_clusters: int | None = None
    autoencoder: str = "dense"
    hidden_dims: tuple[int, ...] = (500, 500, 2000)
    latent_dim: int = 10
    gamma: float = 1e-3
    iterations: int = 10_000
    batch_size: int = 256
    lr: float = 1e-3
    t_max: float = 10.0
    t_min: float = 0.1
    decay: str = "exponential"
    kernel: str = "gaussian"
    grid_metric: str = "manhattan"
    kmeans_n_init: int = 10

    def __post_init__(self) -> None:
        if len(self.map_size) != 2 or min(self.map_size) < 1:
            raise ValueError(f"model.map_size must be two positive numbers, got {self.map_size}")
        if self.n_clusters is not None and not 2 <= self.n_clusters <= self.nodes:
            raise ValueError(f"model.n_clusters must be between 2 and the {self.nodes} map nodes")
        if self.autoencoder not in ("dense", "conv"):
            raise ValueError(f"model.autoencoder must be dense or conv, got {self.autoencoder!r}")
        if self.kernel not in KERNELS or self.decay not in DECAYS or self.grid_metric not in GRID_METRICS:
            raise ValueError(f"model.kernel in {KERNELS}, model.decay in {DECAYS}, "
                             f"model.grid_metric in {GRID_METRICS}")
        if not 0 < self.t_min <= self.t_max:
            raise ValueError("model.t_min and model.t_max must satisfy 0 < t_min <= t_max")
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("model.iterations and model.batch_size must be >= 1")

    @property
    def nodes(self) -> int:
        return self.map_size[0] * self.map_size[1]

    @property
    def clusters(self) -> int:
        """Number of clusters in the output: ``n_clusters``, or one per node."""
        return self.n_clusters or self.nodes


def build_autoencoder(cfg: DESOMConfig, input_shape: tuple[int, ...]) -> nn.Module:
    """The autoencoder named by ``cfg`` for inputs of ``input_shape`` ((C, H, W) or (D,))."""
    if cfg.autoencoder == "conv":
        if len(input_shape) != 3:
            raise ValueError(f"the conv autoencoder needs images (C, H, W), got {input_shape}")
        c, h, w = input_shape
        return ConvAutoencoder(c, (h, w), cfg.latent_dim)
    return DenseAutoencoder(math.prod(input_shape), cfg.hidden_dims, cfg.latent_dim)


class DESOM(nn.Module):
    """An autoencoder and a :class:`~deimos_ray.models.som.SOMLayer` on its embeddings.

    ``forward(x)`` returns ``(z, x_hat, d)``: embeddings, reconstructions in the
    autoencoder's layout (flat for dense) and squared distances to every prototype.
    """

    def __init__(self, cfg: DESOMConfig, input_shape: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.input_shape = tuple(input_shape)
        self.autoencoder = build_autoencoder(cfg, self.input_shape)
        self.flat = isinstance(self.autoencoder, DenseAutoencoder)
        self.som = SOMLayer(cfg.map_size, cfg.latent_dim, cfg.kernel, cfg.grid_metric)

    @property
    def prototypes(self) -> nn.Parameter:
        """The map's (M, latent) prototypes."""
        return self.som.prototypes

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the autoencoder takes it (flattened for dense)."""
        return x.flatten(1) if self.flat else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings z of a batch of inputs (the encoder alone)."""
        return self.autoencoder.encoder(self.prepare(x))

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """(B, M) squared Euclidean distances from each embedding to each prototype."""
        return self.som.distances(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, x_hat = self.autoencoder(self.prepare(x))
        return z, x_hat, self.som.distances(z)

    def loss(self, x: torch.Tensor, x_hat: torch.Tensor, d: torch.Tensor, t: float) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction + gamma x SOM loss at temperature ``t``."""
        reconstruction = nn.functional.mse_loss(x_hat, self.prepare(x))
        som = self.som.loss(d, t)
        total = reconstruction + self.cfg.gamma * som
        return total, {"loss": float(total.detach()), "reconstruction": float(reconstruction.detach()),
                       "som": float(som.detach())}

    @torch.no_grad()
    def decode_prototypes(self) -> torch.Tensor:
        """The decoder's image of every prototype, shaped like the inputs: (M, *input_shape)."""
        return self.autoencoder.decoder(self.prototypes).reshape(-1, *self.input_shape)


def node_clusters(prototypes: torch.Tensor, k: int | None, n_init: int, seed: int,
                  weights: torch.Tensor | None = None) -> list[int]:
    """Cluster of every node: k-means (seeded) over the prototypes, each weighted by
    ``weights`` (e.g. its hit count; equal when ``None``), or the node itself."""
    if k is None:
        return list(range(len(prototypes)))
    from sklearn.cluster import KMeans

    hit = None if weights is None else int((weights > 0).sum())
    if hit is not None and hit < k:
        warnings.warn(f"only {hit} map nodes are hit, fewer than the {k} clusters: "
                      "the k-means over prototypes weighs every node equally", stacklevel=2)
        weights = None
    sample_weight = None if weights is None else weights.detach().cpu().double().numpy()
    km = KMeans(k, n_init=n_init, random_state=seed).fit(prototypes.detach().cpu().numpy(),
                                                         sample_weight=sample_weight)
    return [int(c) for c in km.labels_]


@torch.no_grad()
def node_hits(model: DESOM, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """How many rows of ``x`` have each node as best-matching unit: (M,) float.
    (:func:`deimos_ray.report.hit_counts` counts written assignments per grid cell.)"""
    hits = torch.zeros(model.cfg.nodes, device=model.prototypes.device)
    for start in range(0, len(x), chunk):
        z = model.encode(x[start:start + chunk].to(hits.device))
        hits += torch.bincount(model.distances(z).argmin(dim=1), minlength=len(hits)).to(hits.dtype)
    return hits


def histo_vectors(groups: list[str], nodes: list[int] | torch.Tensor, n_nodes: int,
                  clip_quantile: float = 0.99) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """One vector per group: its members' counts over the map nodes, normalised.

    Normalisation (the astro pipeline's "normalised" histo-vectors): counts become the
    share of the group's members on each node, so groups of different sizes compare;
    each node's shares are clipped at their ``clip_quantile`` across groups (outliers);
    then each node is standardised to zero mean and unit variance (nodes that never
    vary stay 0).

    Returns:
        The group names (sorted), the (G, n_nodes) normalised vectors and the raw counts.
    """
    names = sorted(set(groups))
    index = {g: i for i, g in enumerate(names)}
    counts = torch.zeros(len(names), n_nodes)
    rows = torch.tensor([index[g] for g in groups])
    # A copy: ``nodes`` often comes from a read-only Parquet column.
    node_index = torch.from_numpy(np.array(nodes, dtype=np.int64))
    counts.index_put_((rows, node_index), torch.ones(len(rows)), accumulate=True)
    shares = counts / counts.sum(dim=1, keepdim=True)
    if len(names) > 1:
        shares = torch.minimum(shares, torch.quantile(shares, clip_quantile, dim=0, keepdim=True))
    std = shares.std(dim=0, unbiased=False, keepdim=True)
    vectors = torch.where(std > 0, (shares - shares.mean(dim=0, keepdim=True)) / std.clamp(min=1e-12),
                          torch.zeros_like(shares))
    return names, vectors, counts
