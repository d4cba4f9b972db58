"""DESOM: Deep Embedded Self-Organising Map (Forest, Lebbah, Azzag and Lacaille, ESANN 2019).

An autoencoder and a self-organising map trained together:

    z = encoder(x),   d_k = ||z - w_k||^2 for every map node k           (SOM layer)
    bmu = argmin_k d_k,  h_k = K(delta(bmu, k), T)                       (no gradient)
    L = ||x - decoder(z)||^2  +  gamma * sum_k h_k d_k                   (gamma 1e-3)

delta is the distance between two cells on the map grid, K the neighbourhood kernel
(Gaussian exp(-delta^2 / T^2), or a window 1[delta <= T]), and the temperature T decays
from Tmax = 10 to Tmin = 0.1 over the training iterations (exponentially by default, as
in the paper; linear and constant as options). The grid distance is the true
Manhattan (or Euclidean) distance between (row, column) cells; the reference
implementation computes the row difference with a formula that is wrong for some pairs
of cells, which is not reproduced. Prototypes start as encodings of random samples.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from deimos_ray.config import check_restarts
from deimos_ray.models.autoencoder import ConvAutoencoder, DenseAutoencoder

KERNELS = ("gaussian", "window")
DECAYS = ("exponential", "linear", "constant")
GRID_METRICS = ("manhattan", "euclidean")
NODE_WEIGHTS = ("hits", "none")


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
        node_weights: How the k-means over prototypes weighs each node: ``hits``
            (default) by the number of training samples whose best-matching unit it is,
            so the clusters follow where the data are and sparsely hit nodes between
            two groups do not pull a centroid; ``none`` weighs every node equally.
            Neither the paper nor its reference code fixes this step. On the same
            trained 8x8 maps (three seeds), ``hits`` gave the higher median NMI and ARI
            on digits and USPS, and the higher accuracy on digits but not on USPS.
        restarts: Independent trainings, from seeds ``seed``, ``seed + 1000``, ...
            Not in the paper, which trains once; the grouping of the nodes varies
            from seed to seed. Costs ``restarts`` times the training.
        restart_combine: ``consensus`` (default; needs ``n_clusters``): every
            restart's map assigns the rows and ``cluster`` is the vote of the
            restarts' groupings, matched to a reference partition
            (:func:`deimos_ray.assign.combine_desom_assignments`); the map columns,
            the pictures and ``checkpoint/`` are the lowest-loss restart's.
            ``lowest_loss``: the restart with the lowest final loss (reconstruction +
            gamma x SOM) is the result. Neither uses a label.
        concurrent_restarts: Restarts trained at the same time, each a Ray Train run
            of ``scaling.num_workers`` workers of its own (as DAC's).
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
    node_weights: str = "hits"
    restarts: int = 1
    restart_combine: str = "consensus"
    concurrent_restarts: int = 1

    def __post_init__(self) -> None:
        check_restarts(self.restarts, self.restart_combine, self.concurrent_restarts)
        if self.restarts > 1 and self.restart_combine == "consensus" and self.n_clusters is None:
            raise ValueError("model.restart_combine=consensus combines the restarts' groupings of "
                             "the nodes: it needs model.n_clusters (--k); without it every node is a "
                             "cluster and one map's nodes do not correspond to another's "
                             "(or use model.restart_combine=lowest_loss)")
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
        if self.node_weights not in NODE_WEIGHTS:
            raise ValueError(f"model.node_weights must be one of {NODE_WEIGHTS}, got {self.node_weights!r}")
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("model.iterations and model.batch_size must be >= 1")

    @property
    def nodes(self) -> int:
        return self.map_size[0] * self.map_size[1]

    @property
    def clusters(self) -> int:
        """Number of clusters in the output: ``n_clusters``, or one per node."""
        return self.n_clusters or self.nodes


def grid_distances(rows: int, cols: int, metric: str = "manhattan") -> torch.Tensor:
    """(M, M) distances between map cells, M = rows x cols, node k at (k // cols, k % cols)."""
    k = torch.arange(rows * cols)
    r, c = k // cols, k % cols
    dr = (r[:, None] - r[None, :]).abs().float()
    dc = (c[:, None] - c[None, :]).abs().float()
    return dr + dc if metric == "manhattan" else torch.sqrt(dr**2 + dc**2)


def neighbourhood(distance: torch.Tensor, temperature: float, kernel: str = "gaussian") -> torch.Tensor:
    """Kernel weights from grid distances: exp(-d^2 / T^2), or 1[d <= T] for ``window``."""
    if kernel == "window":
        return (distance <= temperature).to(distance.dtype)
    return torch.exp(-(distance**2) / temperature**2)


def temperature(iteration: int, iterations: int, t_max: float, t_min: float, decay: str = "exponential") -> float:
    """T at ``iteration`` (0-based) of ``iterations``: t_max at the first, t_min at the last."""
    if decay == "constant" or iterations <= 1:
        return t_max
    frac = min(iteration, iterations - 1) / (iterations - 1)
    if decay == "linear":
        return t_max - (t_max - t_min) * frac
    return t_max * (t_min / t_max) ** frac


def som_loss(d: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of sum_k h_k d_k; ``weights`` (B, M) carry no gradient."""
    return (weights * d).sum(dim=1).mean()


def build_autoencoder(cfg: DESOMConfig, input_shape: tuple[int, ...]) -> nn.Module:
    """The autoencoder named by ``cfg`` for inputs of ``input_shape`` ((C, H, W) or (D,))."""
    if cfg.autoencoder == "conv":
        if len(input_shape) != 3:
            raise ValueError(f"the conv autoencoder needs images (C, H, W), got {input_shape}")
        c, h, w = input_shape
        return ConvAutoencoder(c, (h, w), cfg.latent_dim)
    return DenseAutoencoder(math.prod(input_shape), cfg.hidden_dims, cfg.latent_dim)


class DESOM(nn.Module):
    """Autoencoder plus SOM prototypes (rows x cols x latent, stored as (M, latent)).

    ``forward(x)`` returns ``(z, x_hat, d)``: embeddings, reconstructions in the
    autoencoder's layout (flat for dense) and squared distances to every prototype.
    """

    def __init__(self, cfg: DESOMConfig, input_shape: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.input_shape = tuple(input_shape)
        self.autoencoder = build_autoencoder(cfg, self.input_shape)
        self.flat = isinstance(self.autoencoder, DenseAutoencoder)
        self.prototypes = nn.Parameter(torch.zeros(cfg.nodes, cfg.latent_dim))
        self.register_buffer("grid", grid_distances(*cfg.map_size, cfg.grid_metric), persistent=False)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The input as the autoencoder takes it (flattened for dense)."""
        return x.flatten(1) if self.flat else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings z of a batch of inputs (the encoder alone)."""
        return self.autoencoder.encoder(self.prepare(x))

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """(B, M) squared Euclidean distances from each embedding to each prototype."""
        return (z[:, None, :] - self.prototypes[None, :, :]).pow(2).sum(dim=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, x_hat = self.autoencoder(self.prepare(x))
        return z, x_hat, self.distances(z)

    def loss(self, x: torch.Tensor, x_hat: torch.Tensor, d: torch.Tensor, t: float) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction + gamma x SOM loss at temperature ``t``; BMUs and weights
        without gradient."""
        with torch.no_grad():
            bmu = d.argmin(dim=1)
            weights = neighbourhood(self.grid[bmu], t, self.cfg.kernel)
        reconstruction = nn.functional.mse_loss(x_hat, self.prepare(x))
        som = som_loss(d, weights)
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


def quantization_error(d_bmu: torch.Tensor) -> float:
    """Mean Euclidean distance from each embedding to its best-matching prototype."""
    return float(d_bmu.mean())


def topographic_error(d: torch.Tensor, grid: torch.Tensor) -> float:
    """Share of samples whose first and second BMUs are not neighbours on the map
    (grid distance above 1)."""
    two = d.topk(2, dim=1, largest=False).indices
    return float((grid[two[:, 0], two[:, 1]] > 1).float().mean())


def umatrix(prototypes: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """(rows, cols) mean distance from each prototype to those of its 4 grid neighbours."""
    w = prototypes.reshape(rows, cols, -1)
    total = torch.zeros(rows, cols)
    count = torch.zeros(rows, cols)
    for dr, dc in ((0, 1), (1, 0)):
        a = w[: rows - dr, : cols - dc]
        b = w[dr:, dc:]
        dist = (a - b).norm(dim=-1)
        total[: rows - dr, : cols - dc] += dist
        count[: rows - dr, : cols - dc] += 1
        total[dr:, dc:] += dist
        count[dr:, dc:] += 1
    return total / count.clamp(min=1)


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
