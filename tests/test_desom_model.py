"""DESOM's pieces: grid distances, kernels, the temperature schedule, the SOM loss
against NumPy, map errors, the U-matrix and histo-vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deimos_ray.models import desom
from deimos_ray.models.desom import DESOM, DESOMConfig


def test_grid_distances_are_true_cell_distances():
    d = desom.grid_distances(3, 4)  # node k sits at (k // 4, k % 4)
    assert d.shape == (12, 12)
    assert d[0, 11] == 2 + 3  # (0,0) -> (2,3)
    assert d[3, 4] == 1 + 3  # (0,3) -> (1,0): adjacent in index, far on the map
    assert d[5, 6] == 1 and d[1, 5] == 1 and d[7, 7] == 0
    assert torch.equal(d, d.T)
    e = desom.grid_distances(3, 4, "euclidean")
    assert e[0, 11] == pytest.approx(np.sqrt(4 + 9))
    # Every pair against a direct computation.
    cells = [(k // 4, k % 4) for k in range(12)]
    expected = [[abs(a[0] - b[0]) + abs(a[1] - b[1]) for b in cells] for a in cells]
    assert d.tolist() == expected


def test_kernels():
    dist = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert desom.neighbourhood(dist, 2.0).tolist() == pytest.approx(np.exp(-np.array([0, 1, 4, 9]) / 4).tolist())
    assert desom.neighbourhood(dist, 2.0, "window").tolist() == [1.0, 1.0, 1.0, 0.0]


def test_temperature_schedules():
    t = [desom.temperature(i, 5, 10.0, 0.1) for i in range(5)]
    assert t[0] == pytest.approx(10.0) and t[-1] == pytest.approx(0.1)
    assert np.allclose(np.diff(np.log(t)), np.log(0.01) / 4)  # a constant ratio: exponential
    assert desom.temperature(2, 5, 10.0, 0.1, "linear") == pytest.approx(5.05)
    assert desom.temperature(3, 5, 10.0, 0.1, "constant") == 10.0


def test_som_loss_matches_numpy():
    cfg = DESOMConfig(map_size=(2, 3), hidden_dims=(8,), latent_dim=2)
    model = DESOM(cfg, (1, 2, 2))
    model.prototypes.data = torch.tensor([[0.0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]])
    z = torch.tensor([[0.9, 0.1], [2.0, 1.2], [0.1, 0.8]])
    d = model.distances(z)
    np_d = ((z.numpy()[:, None, :] - model.prototypes.detach().numpy()[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d.detach().numpy(), np_d, rtol=1e-6)
    t = 1.5
    bmu = np_d.argmin(1)
    cells = np.array([(k // 3, k % 3) for k in range(6)])
    grid = np.abs(cells[:, None] - cells[None]).sum(-1)
    weights = np.exp(-(grid[bmu] ** 2) / t**2)
    expected = (weights * np_d).sum(1).mean()
    weights_t = desom.neighbourhood(model.grid[d.argmin(1)], t)
    assert desom.som_loss(d, weights_t).item() == pytest.approx(expected, rel=1e-6)
    x = torch.rand(3, 1, 2, 2)
    _, x_hat, d2 = model(x)
    total, parts = model.loss(x, x_hat, d2, t)
    assert parts["loss"] == pytest.approx(parts["reconstruction"] + 1e-3 * parts["som"], rel=1e-6)


def test_map_errors():
    grid = desom.grid_distances(1, 3)
    d = torch.tensor([[0.0, 1.0, 4.0], [0.0, 9.0, 1.0], [4.0, 0.0, 1.0]])
    # Sample 1's two best units are 0 and 2: not neighbours.
    assert desom.topographic_error(d, grid) == pytest.approx(1 / 3)
    assert desom.quantization_error(torch.tensor([1.0, 2.0, 3.0])) == 2.0


def test_umatrix_averages_distances_to_grid_neighbours():
    protos = torch.tensor([[0.0], [1.0], [3.0], [3.0]])  # 2x2 map
    u = desom.umatrix(protos, 2, 2)
    # (0,0): neighbours (0,1)=1 at distance 1, (1,0)=3 at distance 3 -> 2
    assert torch.allclose(u, torch.tensor([[2.0, 1.5], [1.5, 1.0]]))


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
    with pytest.raises(ValueError, match="node_weights"):
        DESOMConfig(node_weights="area")


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
