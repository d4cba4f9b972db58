"""DAC's pair loss against a pair-by-pair NumPy reference, and the labelled-pair masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deimos_ray.losses import dac


def numpy_pair_loss(feats: np.ndarray, upper: float, lower: float) -> float:
    """The paper's loss written pair by pair: mean BCE over the selected pairs i != j."""
    total, count = 0.0, 0
    for i in range(len(feats)):
        for j in range(len(feats)):
            if i == j:
                continue
            s = float(np.clip(feats[i] @ feats[j], 1e-7, 1 - 1e-7))
            if s >= upper:
                total, count = total - np.log(s), count + 1
            elif s < lower:
                total, count = total - np.log(1 - s), count + 1
    return total / max(count, 1)


def test_pair_loss_matches_a_numpy_reference():
    logits = torch.randn(12, 4, generator=torch.Generator().manual_seed(0)) * 3
    feats = dac.label_features(logits)
    assert torch.allclose(feats.norm(dim=1), torch.ones(12)) and (feats >= 0).all()
    sim = feats @ feats.T
    valid = ~torch.eye(12, dtype=torch.bool)
    same, different = dac.select_pairs(sim, 0.8, 0.3, valid)
    total, count = dac.pair_bce_sum(sim, same, different)
    count = int(count)
    assert 0 < count < 12 * 11  # some pairs selected, some ignored
    assert total.item() / count == pytest.approx(numpy_pair_loss(feats.numpy(), 0.8, 0.3), rel=1e-5)


def test_squared_pair_loss_matches_a_numpy_reference():
    feats = dac.label_features(torch.randn(9, 3, generator=torch.Generator().manual_seed(4)) * 3)
    sim = feats @ feats.T
    same, different = dac.select_pairs(sim, 0.7, 0.7, ~torch.eye(9, dtype=torch.bool))
    total, count = dac.pair_loss_sum(sim, same, different, "mse")
    s = sim.numpy()
    expected = sum((1.0 - s[i, j]) ** 2 if s[i, j] >= 0.7 else s[i, j] ** 2
                   for i in range(9) for j in range(9) if i != j)
    assert int(count) == 72  # one threshold: every pair but the diagonal is selected
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_labeled_masks_link_equal_labels_and_ignore_unknown():
    must, cannot = dac.labeled_masks(torch.tensor([0, 0, 1, -1]), torch.tensor([0, 0, 1, -1]))
    assert must.tolist()[0] == [True, True, False, False]
    assert cannot.tolist()[0] == [False, False, True, False]
    assert not must[3].any() and not cannot[3].any() and not cannot[:, 3].any()
