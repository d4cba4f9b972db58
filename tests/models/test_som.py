"""The SOM layer: grid distances, kernels, the temperature schedule, the SOM loss against
NumPy, the map errors and the U-matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deimos_ray.models import som


def test_grid_distances_are_true_cell_distances():
    d = som.grid_distances(3, 4)  # node k sits at (k // 4, k % 4)
    assert d.shape == (12, 12)
    assert d[0, 11] == 2 + 3  # (0,0) -> (2,3)
    assert d[3, 4] == 1 + 3  # (0,3) -> (1,0): adjacent in index, far on the map
    assert d[5, 6] == 1 and d[1, 5] == 1 and d[7, 7] == 0
    assert torch.equal(d, d.T)
    e = som.grid_distances(3, 4, "euclidean")
    assert e[0, 11] == pytest.approx(np.sqrt(4 + 9))
    # Every pair against a direct computation.
    cells = [(k // 4, k % 4) for k in range(12)]
    expected = [[abs(a[0] - b[0]) + abs(a[1] - b[1]) for b in cells] for a in cells]
    assert d.tolist() == expected


def test_kernels():
    dist = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert som.neighbourhood(dist, 2.0).tolist() == pytest.approx(np.exp(-np.array([0, 1, 4, 9]) / 4).tolist())
    assert som.neighbourhood(dist, 2.0, "window").tolist() == [1.0, 1.0, 1.0, 0.0]


def test_temperature_schedules():
    t = [som.temperature(i, 5, 10.0, 0.1) for i in range(5)]
    assert t[0] == pytest.approx(10.0) and t[-1] == pytest.approx(0.1)
    assert np.allclose(np.diff(np.log(t)), np.log(0.01) / 4)  # a constant ratio: exponential
    assert som.temperature(2, 5, 10.0, 0.1, "linear") == pytest.approx(5.05)
    assert som.temperature(3, 5, 10.0, 0.1, "constant") == 10.0


def test_som_loss_matches_numpy():
    model = som.SOMLayer((2, 3), latent_dim=2)
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
    assert model.loss(d, t).item() == pytest.approx(expected, rel=1e-6)
    assert model.bmus(d).tolist() == bmu.tolist()
    assert not model.weights(d, t).requires_grad  # the BMUs and weights carry no gradient


def test_map_errors():
    grid = som.grid_distances(1, 3)
    d = torch.tensor([[0.0, 1.0, 4.0], [0.0, 9.0, 1.0], [4.0, 0.0, 1.0]])
    # Sample 1's two best units are 0 and 2: not neighbours.
    assert som.topographic_error(d, grid) == pytest.approx(1 / 3)
    assert som.quantization_error(torch.tensor([1.0, 2.0, 3.0])) == 2.0


def test_umatrix_averages_distances_to_grid_neighbours():
    protos = torch.tensor([[0.0], [1.0], [3.0], [3.0]])  # 2x2 map
    u = som.umatrix(protos, 2, 2)
    # (0,0): neighbours (0,1)=1 at distance 1, (1,0)=3 at distance 3 -> 2
    assert torch.allclose(u, torch.tensor([[2.0, 1.5], [1.5, 1.0]]))


def test_map_errors_over_chunks_equal_the_errors_at_once():
    layer = som.SOMLayer((3, 3), latent_dim=2)
    layer.prototypes.data = torch.randn(9, 2, generator=torch.Generator().manual_seed(0))
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        at_once = layer.errors(layer.distances(z))
    chunked = som.som_errors(layer, z, chunk=7)
    assert chunked == pytest.approx(at_once, rel=1e-6)
    with pytest.raises(ValueError, match="kernel"):
        som.SOMLayer((2, 2), 2, kernel="triangle")
