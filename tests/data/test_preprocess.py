"""Decoding of every image mode, array conversion and tiling geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from deimos_ray.config import DataConfig
from deimos_ray.data.prepare import prepare_data
from deimos_ray.data.preprocess import (
    ImageSpec,
    convert_arrays,
    cut_tiles,
    decode_file,
    split_table,
    tile_positions,
    to_unit_float,
)

BAD = Path(__file__).resolve().parents[1] / "fixtures" / "bad"


def test_decode_scales_16bit_and_handles_rgba_and_palette():
    gray = ImageSpec((4, 4), 1)
    assert decode_file(str(BAD / "gray16.png"), gray).min() == pytest.approx(1.0)  # 65535 -> 1
    rgba = decode_file(str(BAD / "rgba.png"), ImageSpec((4, 4), 3))
    assert rgba.shape == (3, 4, 4) and rgba[0].mean() == pytest.approx(1.0) and rgba[1].max() == 0.0
    assert decode_file(str(BAD / "palette.gif"), gray).shape == (1, 4, 4)
    assert decode_file(str(BAD / "good.png"), gray).mean() == pytest.approx(128 / 255)


@pytest.mark.parametrize("name", ["zero.png", "text.jpg", "truncated.jpg"])
def test_decode_raises_on_bad_files(name):
    with pytest.raises(Exception):  # noqa: B017 - Pillow raises OSError or its subclasses
        decode_file(str(BAD / name), ImageSpec((4, 4), 1))


def test_float_images_are_min_max_scaled(tmp_path):
    Image.fromarray(np.array([[-2.0, 2.0], [0.0, 0.0]], np.float32), mode="F").save(tmp_path / "f.tif")
    x = decode_file(str(tmp_path / "f.tif"), ImageSpec((2, 2), 1))
    assert x.min() == pytest.approx(0.0) and x.max() == pytest.approx(1.0)


def test_array_conversion_scales_by_dtype_and_resizes():
    assert to_unit_float(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    assert to_unit_float(np.array([0, 65535], np.uint16)).tolist() == [0.0, 1.0]
    rgb = np.zeros((2, 8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    out, _ = convert_arrays(rgb, ImageSpec((4, 4), 1))
    assert out.shape == (2, 1, 4, 4) and out.max() == pytest.approx(0.299, rel=1e-3)


def test_tile_positions_geometry():
    # 10 x 7 image, tile 4, stride 3: y in {0, 3, 6}, x in {0, 3}; tiles past the edge dropped.
    assert tile_positions(10, 7, 4, 3) == [(0, 0), (0, 3), (3, 0), (3, 3), (6, 0), (6, 3)]
    assert tile_positions(3, 3, 4, 4) == []


def test_cut_tiles_takes_the_right_pixels():
    full = np.arange(64, dtype=np.float32).reshape(1, 8, 8) / 64
    tiles, positions = cut_tiles(full, ImageSpec((4, 4), 1, tile=4, stride=4))
    assert positions == [(0, 0), (0, 4), (4, 0), (4, 4)]
    np.testing.assert_allclose(tiles[3, 0], full[0, 4:, 4:], atol=1e-6)
    with pytest.raises(ValueError, match="smaller than one tile"):
        cut_tiles(full, ImageSpec((4, 4), 1, tile=16, stride=16))


def test_tiling_through_ray_data(ray_session, tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8)).save(tmp_path / "exp1.png")
    Image.new("L", (6, 6)).save(tmp_path / "tiny.png")  # smaller than a tile
    data = prepare_data(DataConfig(spec=str(tmp_path), tile=10, stride=10))
    rows = data.good.to_pandas()
    assert len(rows) == 6 and set(rows["group"]) == {"exp1.png"}  # 2 x 3 tiles
    assert "exp1.png@y10x20" in set(rows["id"])
    assert data.good_inputs == 1 and data.rejected["id"].tolist() == ["tiny.png"]
    assert data.num_inputs == data.good_inputs + len(data.rejected)


def test_split_table_keeps_the_readable_rows_and_the_reasons_of_the_others():
    table = pa.table({"id": ["a", "b", "c"], "path": ["a.png", "b.png", "c.png"], "x": [1.0, 2.0, 3.0],
                      "ok": [True, False, True], "reason": ["", "OSError: truncated", ""],
                      "stage": ["decode", "decode", "features"]})
    good, bad = split_table(table)
    assert good.column_names == ["id", "path", "x"] and good.column("id").to_pylist() == ["a", "c"]
    assert bad.to_dict("records") == [{"id": "b", "path": "b.png", "reason": "OSError: truncated",
                                       "stage": "decode"}]
