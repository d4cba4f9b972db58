"""DAC's pair loss (Chang, Wang, Meng, Xiang and Pan, "Deep Adaptive Image Clustering",
ICCV 2017, section 3).

An image's "label features" are its k-way softmax, L2-normalised (eq. 2), so the cosine
similarity of two images is the dot product of their label features, in [0, 1]:

    l_i    = softmax(f(x_i)) / ||softmax(f(x_i))||                    (B, k)
    sim_ij = l_i . l_j                                                 (B, B)
    r_ij   = 1 if sim_ij >= u,  0 if sim_ij < l,  else not selected    (eq. 6)
    L      = sum over selected pairs of  -r log sim - (1 - r) log(1 - sim)   (eq. 5)

divided here by the number of selected pairs. The reference code's squared error
(sim - r)^2 is the option ``pair_loss="mse"``. Labelled rows (the DeIMOS extension) add
must-link / cannot-link pairs with the same loss. Everything is vectorised over the
(B, B) similarity matrix: no Python loop over pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-7  # keeps log(sim) and log(1 - sim) finite


def label_features(logits: torch.Tensor) -> torch.Tensor:
    """Softmax, then L2 normalisation (paper, section 3.1)."""
    return F.normalize(torch.softmax(logits, dim=1), p=2, dim=1)


def select_pairs(
    sim: torch.Tensor, upper: float, lower: float, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks of "same" (sim >= upper) and "different" (sim < lower) pairs.

    Args:
        sim: (R, C) similarities, computed without gradient for the selection.
        valid: (R, C) pairs that may be selected (e.g. not an image with itself).
    """
    same, different = sim >= upper, sim < lower
    if valid is not None:
        same, different = same & valid, different & valid
    return same, different


def pair_bce_sum(sim: torch.Tensor, same: torch.Tensor, different: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of binary cross-entropies over the selected pairs, and their number (a
    tensor on ``sim``'s device, so a training step never waits for the GPU).

    A selection with no pair returns a zero that still carries the graph, so
    ``backward`` runs on every worker (DDP needs every rank to reduce gradients).
    """
    s = sim.clamp(EPS, 1 - EPS)
    loss = -(torch.log(s) * same).sum() - (torch.log1p(-s) * different).sum()
    return loss, same.sum() + different.sum()


def pair_squared_sum(sim: torch.Tensor, same: torch.Tensor, different: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squared errors (sim - r)^2 over the selected pairs (reference code's loss),
    and their number; like :func:`pair_bce_sum` otherwise."""
    loss = ((1 - sim) ** 2 * same).sum() + (sim**2 * different).sum()
    return loss, same.sum() + different.sum()


def pair_loss_sum(
    sim: torch.Tensor, same: torch.Tensor, different: torch.Tensor, kind: str = "bce"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pair loss ``kind`` (``bce`` or ``mse``) summed over the selected pairs, and their number."""
    return (pair_bce_sum if kind == "bce" else pair_squared_sum)(sim, same, different)


def labeled_masks(
    known_rows: torch.Tensor, known_cols: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Must-link (equal known labels) and cannot-link (different) masks; -1 is unknown."""
    known = (known_rows[:, None] >= 0) & (known_cols[None, :] >= 0)
    equal = known_rows[:, None] == known_cols[None, :]
    must, cannot = known & equal, known & ~equal
    if valid is not None:
        must, cannot = must & valid, cannot & valid
    return must, cannot
