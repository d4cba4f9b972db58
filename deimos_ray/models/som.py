"""A differentiable self-organising map layer (Forest, Lebbah, Azzag and Lacaille, "Deep
Embedded Self-Organizing Map", ESANN 2019), for DESOM and any model with an embedding.

For embeddings z (B, d) and prototypes w (M, d), M = rows x cols map nodes:

    d_k  = ||z - w_k||^2                            squared distances        (B, M)
    bmu  = argmin_k d_k                             best-matching units      (B,)
    h_k  = K(delta(bmu, k), T)                      neighbourhood weights    (B, M)
    L    = mean over the batch of sum_k h_k d_k     the SOM loss

(the loss itself: :func:`deimos_ray.losses.som.som_loss`). delta is the distance between two cells of the map grid, K the neighbourhood kernel
(Gaussian exp(-delta^2 / T^2), or a window 1[delta <= T]); the BMUs and weights carry no
gradient, so the loss pulls each prototype towards the embeddings it neighbours. The
grid distance is the true Manhattan (or Euclidean) distance between (row, column)
cells; the reference implementation computes the row difference with a formula that is
wrong for some pairs of cells, which is not reproduced.
"""

from __future__ import annotations

import torch
from torch import nn

from deimos_ray.losses.som import som_loss

KERNELS = ("gaussian", "window")
DECAYS = ("exponential", "linear", "constant")
GRID_METRICS = ("manhattan", "euclidean")


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
    """T at ``iteration`` (0-based) of ``iterations``: t_max at the first, t_min at the
    last; exponential decay as in the paper, linear or constant as options."""
    if decay == "constant" or iterations <= 1:
        return t_max
    frac = min(iteration, iterations - 1) / (iterations - 1)
    if decay == "linear":
        return t_max - (t_max - t_min) * frac
    return t_max * (t_min / t_max) ** frac


class SOMLayer(nn.Module):
    """Prototypes on a rows x cols grid (stored as (M, d)) and the SOM loss over them.

    Args:
        map_size: (rows, cols) of the map.
        latent_dim: Size d of the embeddings the map organises.
        kernel: ``gaussian`` (paper) or ``window``.
        grid_metric: ``manhattan`` (paper) or ``euclidean`` cell distance.
    """

    def __init__(self, map_size: tuple[int, int], latent_dim: int, kernel: str = "gaussian",
                 grid_metric: str = "manhattan"):
        super().__init__()
        if kernel not in KERNELS or grid_metric not in GRID_METRICS:
            raise ValueError(f"kernel must be one of {KERNELS}, grid_metric one of {GRID_METRICS}")
        self.map_size = (int(map_size[0]), int(map_size[1]))
        self.kernel = kernel
        self.prototypes = nn.Parameter(torch.zeros(self.nodes, latent_dim))
        self.register_buffer("grid", grid_distances(*self.map_size, grid_metric), persistent=False)

    @property
    def nodes(self) -> int:
        """Number of map nodes M."""
        return self.map_size[0] * self.map_size[1]

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """(B, M) squared Euclidean distances from each embedding (B, d) to each prototype."""
        return (z[:, None, :] - self.prototypes[None, :, :]).pow(2).sum(dim=2)

    @staticmethod
    def bmus(d: torch.Tensor) -> torch.Tensor:
        """(B,) best-matching unit of each row of the (B, M) distances."""
        return d.argmin(dim=1)

    @torch.no_grad()
    def weights(self, d: torch.Tensor, t: float) -> torch.Tensor:
        """(B, M) neighbourhood weights of every node around each row's BMU at temperature t."""
        return neighbourhood(self.grid[self.bmus(d)], t, self.kernel)

    def loss(self, d: torch.Tensor, t: float) -> torch.Tensor:
        """The SOM loss of (B, M) distances at temperature ``t``; BMUs and weights
        without gradient."""
        return som_loss(d, self.weights(d, t))

    def errors(self, d: torch.Tensor) -> dict[str, float]:
        """Quantisation and topographic errors of (N, M) squared distances."""
        return {"quantization_error": quantization_error(d.min(dim=1).values.clamp(min=0).sqrt()),
                "topographic_error": topographic_error(d, self.grid) if self.nodes > 1 else 0.0}


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


@torch.no_grad()
def som_errors(som: SOMLayer, embeddings: torch.Tensor, chunk: int = 8192) -> dict[str, float]:
    """Quantisation error (mean distance to the BMU prototype) and topographic error
    (share whose two best units are not grid neighbours) over all ``embeddings``,
    ``chunk`` rows at a time so the (N, M) distances never need to fit at once."""
    totals = {"quantization_error": 0.0, "topographic_error": 0.0}
    for start in range(0, len(embeddings), chunk):
        d = som.distances(embeddings[start : start + chunk])
        for name, value in som.errors(d).items():
            totals[name] += value * len(d)
    return {name: value / max(len(embeddings), 1) for name, value in totals.items()}
