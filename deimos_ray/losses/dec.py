"""DEC's clustering loss (Xie, Girshick and Farhadi, ICML 2016, eqs. 1-3).

    q_ij = (1 + ||z_i - mu_j||^2 / alpha)^(-(alpha+1)/2) / sum_j' (same)      (eq. 1)
    p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'),   f_j = sum_i q_ij       (eq. 3)
    L    = KL(P || Q) = sum_i sum_j p_ij log(p_ij / q_ij)                      (eq. 2)

``f_j`` sums over the WHOLE dataset, never a batch: in data-parallel training each
worker sums its shard and the sums are all-reduced (``deimos_ray.train.dec_loop``).
IDEC (Guo et al., IJCAI 2017) adds the reconstruction loss, L = L_r + gamma L_c
(``deimos_ray.models.dec.DEC.loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_assignment(z: torch.Tensor, centres: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Student's t similarity between embeddings and centres (DEC eq. 1).

    Args:
        z: Embeddings, (B, d).
        centres: Cluster centres, (K, d).
        alpha: Degrees of freedom.

    Returns:
        q: (B, K), rows sum to 1.
    """
    dist2 = torch.cdist(z, centres).pow(2)  # (B, K)
    kernel = (1.0 + dist2 / alpha).pow(-(alpha + 1.0) / 2.0)
    return kernel / kernel.sum(dim=1, keepdim=True)


def target_distribution(q: torch.Tensor, frequencies: torch.Tensor, prior: torch.Tensor | None = None,
                        power: float = 1.0) -> torch.Tensor:
    """Auxiliary target p from q and the dataset-wide cluster frequencies (DEC eq. 3),
    optionally against a size prior:

        p_ij = w_ij / sum_j' w_ij',   w_ij = q_ij^2 / (f_j / pi_j)^power

    With a uniform prior and ``power`` 1 (the defaults) this is the paper's eq. 3: the
    division by f_j keeps large clusters from taking over, and so pulls towards equal
    sizes. A prior pi (the cluster shares at the k-means start) makes the pull towards
    those shares instead; ``power`` 0 drops the frequency term (sharpening only).

    Args:
        q: Soft assignments of some samples, (B, K).
        frequencies: f_j = sum of q_ij over ALL samples of the dataset, (K,).
        prior: pi_j, (K,) summing to 1; None: uniform (the paper).
        power: The frequency term's exponent (the paper: 1).

    Returns:
        p: (B, K), rows sum to 1; no gradient flows through it.
    """
    scale = frequencies if prior is None else frequencies / prior
    weight = q.pow(2) / scale.pow(power)  # (B, K)
    return (weight / weight.sum(dim=1, keepdim=True)).detach()


def kl_clustering_loss(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) averaged over the batch (DEC eq. 2 divided by the batch size).

    Args:
        q: Soft assignments, (B, K), with gradient.
        p: Targets, (B, K), constant.

    Returns:
        Scalar loss.
    """
    return F.kl_div(q.clamp_min(1e-12).log(), p, reduction="batchmean")
