"""DESOM's model: the autoencoder and SOM layer together, the grouping of nodes, and
histo-vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deimos_ray.models import desom
from deimos_ray.models.desom import DESOM, DESOMConfig


def test_desom_loss_is_reconstruction_plus_gamma_times_the_som_loss():
    model = DESOM(DESOMConfig(map_size=(2, 3), hidden_dims=(8,), latent_dim=2), (1, 2, 2))
    x = torch.rand(3, 1, 2, 2)
    z, x_hat, d = model(x)
    assert torch.allclose(d, model.som.distances(z))
    total, parts = model.loss(x, x_hat, d, 1.5)
    assert parts["loss"] == pytest.approx(parts["reconstruction"] + 1e-3 * parts["som"], rel=1e-6)
    assert parts["som"] == pytest.approx(model.som.loss(d, 1.5).item(), rel=1e-6)
    assert model.prototypes is model.som.prototypes


def test_histo_vectors_count_members_per_node_and_standardise():
    groups = ["b", "a", "a", "a", "b", "c", "c", "c", "c"]
    nodes = np.array([0, 0, 0, 1, 2, 1, 1, 1, 2])
    nodes.flags.writeable = False  # as a Parquet column reads
    names, vectors, counts = desom.histo_vectors(groups, nodes, 3, clip_quantile=1.0)
    assert names == ["a", "b", "c"]
    assert counts.tolist() == [[2, 1, 0], [1, 0, 1], [0, 3, 1]]
    shares = counts / counts.sum(1, keepdim=True)
    expected = (shares - shares.mean(0)) / shares.std(0, unbiased=False)
    assert torch.allclose(vectors, expected, atol=1e-6)
    assert torch.allclose(vectors.mean(0), torch.zeros(3), atol=1e-6)
    # Node 0 holds 10%, 20% and 90% of the three groups; the median clip caps 90% at 20%.
    groups = ["a"] * 10 + ["b"] * 10 + ["c"] * 10
    nodes = [0] + [1] * 9 + [0] * 2 + [1] * 8 + [0] * 9 + [1]
    _, clipped, _ = desom.histo_vectors(groups, nodes, 2, clip_quantile=0.5)
    capped = torch.tensor([0.1, 0.2, 0.2])
    assert torch.allclose(clipped[:, 0], (capped - capped.mean()) / capped.std(unbiased=False), atol=1e-5)
    _, constant, _ = desom.histo_vectors(["a", "b"], [0, 0], 2)
    assert constant.abs().sum() == 0  # nodes that never vary stay 0


def test_config_validation():
    with pytest.raises(ValueError, match="between 2 and the 4"):
        DESOMConfig(map_size=(2, 2), n_clusters=5)
    assert DESOMConfig(map_size=(8, 8)).clusters == 64
    assert DESOMConfig(map_size=(8, 8), n_clusters=10).clusters == 10


def test_node_hits_count_best_matching_units():
    model = DESOM(DESOMConfig(map_size=(1, 3), hidden_dims=(4,), latent_dim=2), (1, 2, 2))
    x = torch.rand(7, 1, 2, 2)
    z = model.encode(x).detach()
    model.prototypes.data.copy_(z[[0, 1, 2]])
    # NumPy reference: each row's nearest prototype; rows 0-2 sit on nodes 0-2 exactly.
    zn = z.numpy()
    nearest = ((zn[:, None, :] - zn[None, [0, 1, 2], :]) ** 2).sum(axis=2).argmin(axis=1)
    expected = np.bincount(nearest, minlength=3)
    hits = desom.node_hits(model, x, chunk=3)  # chunks of 3, 3 and 1 rows
    assert hits.tolist() == expected.tolist() and hits.sum() == 7 and (hits >= 1).all()


def test_node_clusters_follow_the_hits():
    protos = torch.tensor([[0.0], [1.0], [5.0], [20.0]])  # four nodes on a line, k = 2
    assert desom.node_clusters(protos, None, 1, 0) == [0, 1, 2, 3]
    # Equal weights: the far node is a cluster of its own ({0, 1, 5} | {20}: cost 14
    # against 113 for {0, 1} | {5, 20}).
    plain = desom.node_clusters(protos, 2, 5, 0)
    assert plain[0] == plain[1] == plain[2] != plain[3]
    # By hits, the far node holds 1 sample and the others 100 each: the split goes
    # between the populated nodes instead (cost 271 against 1,400).
    weighted = desom.node_clusters(protos, 2, 5, 0, torch.tensor([100.0, 100.0, 100.0, 1.0]))
    assert weighted[0] == weighted[1] != weighted[2] == weighted[3]
    with pytest.warns(UserWarning, match="only 1 map nodes are hit"):
        fallback = desom.node_clusters(protos, 2, 5, 0, torch.tensor([0.0, 0.0, 5.0, 0.0]))
    assert fallback == plain
