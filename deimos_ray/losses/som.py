"""The SOM loss of DESOM (Forest, Lebbah, Azzag and Lacaille, "Deep Embedded
Self-Organizing Map: Joint Representation Learning and Self-Organization", ESANN 2019,
eq. 2): the neighbourhood-weighted squared distances of each embedding to every map
prototype,

    L_SOM = mean over the batch of sum_k h_k(bmu, T) ||z - w_k||^2

with the best-matching units and the neighbourhood weights h held without gradient
(:class:`deimos_ray.models.som.SOMLayer` computes both), so the loss pulls each
prototype towards the embeddings it neighbours.
"""

from __future__ import annotations

import torch


def som_loss(d: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of sum_k h_k d_k.

    Args:
        d: (B, M) squared distances of B embeddings to the M prototypes.
        weights: (B, M) neighbourhood weights around each row's BMU, without gradient.

    Returns:
        The scalar loss.
    """
    return (weights * d).sum(dim=1).mean()  # (B, M) -> (B,) -> ()
