"""Pictures from files: mosaics in row-major order, hit counts, and DESOM's three maps
drawn from a model and its rows."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from deimos_ray.models.desom import DESOM, DESOMConfig
from deimos_ray.report.pictures import draw_desom_pictures, draw_members, hit_counts, mosaic


def test_mosaic_lays_images_row_major_with_white_gaps():
    images = np.stack([np.full((1, 2, 2), v / 10) for v in range(6)]).astype(np.float32)
    canvas = mosaic(images, rows=2, cols=3, pad=1)
    assert canvas.shape == (2 * 3 + 1, 3 * 3 + 1)
    assert canvas[1, 1] == 0.0 and canvas[1, 4] == 0.1 and canvas[4, 1] == 0.3  # image 3 opens row 2
    assert canvas[0].min() == 1.0 and canvas[:, 3].min() == 1.0  # the gaps are white
    rgb = mosaic(np.ones((1, 3, 2, 2), np.float32), 1, 1)
    assert rgb.shape == (4, 4, 3)


def test_hit_counts_count_rows_per_cell():
    hits = hit_counts(np.array([0, 0, 1, 1, 1]), np.array([0, 0, 2, 2, 0]), rows=2, cols=3)
    assert hits.tolist() == [[2, 0, 0], [1, 0, 2]]


def test_desom_pictures_are_written_for_images_and_for_vectors(tmp_path):
    torch.manual_seed(0)
    images = DESOM(DESOMConfig(map_size=(2, 3), hidden_dims=(8,), latent_dim=2), (1, 4, 4)).eval()
    written = draw_desom_pictures(images, np.array([0, 1]), np.array([2, 0]), tmp_path / "images")
    assert [p.name for p in written] == ["prototypes.png", "hits.png", "umatrix.png"]
    vectors = DESOM(DESOMConfig(map_size=(2, 2), hidden_dims=(8,), latent_dim=2), (5,)).eval()
    written = draw_desom_pictures(vectors, np.array([0]), np.array([1]), tmp_path / "vectors")
    assert [p.name for p in written] == ["hits.png", "umatrix.png"]  # no images to decode into
    for path in written:
        with Image.open(path) as picture:
            assert picture.format == "PNG" and min(picture.size) > 50


def test_members_show_each_occupied_cell(tmp_path):
    cells = {(0, 0): np.zeros((4, 1, 3, 3), np.float32), (1, 2): np.ones((2, 1, 3, 3), np.float32)}
    path = draw_members(cells, 2, 3, tmp_path / "members.png")
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size[0] > picture.size[1] / 2
