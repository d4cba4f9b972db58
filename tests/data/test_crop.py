"""Crops before resizing: the central fraction keeps the expected pixels; ``auto`` finds
a bright disc on a dark frame and falls back on a flat image; the rows record the box;
the feature cache's key follows the crop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from deimos_ray.config import DataConfig, FeatureConfig
from deimos_ray.data.crop import WHOLE_IMAGE_NOTE, centre_box, object_box
from deimos_ray.data.feature_cache import cache_key
from deimos_ray.data.preprocess import (
    CROP_COLUMNS,
    CROP_NOTE,
    ImageSpec,
    decode_file,
    decode_image,
    preprocess,
)
from deimos_ray.data.sources import load_source


def disc(height=90, width=120, centre=(30, 80), radius=12, seed=0) -> np.ndarray:
    """A bright disc on a dark, slightly noisy frame, uint8."""
    rng = np.random.default_rng(seed)
    image = 20 + rng.normal(0, 2, (height, width))
    yy, xx = np.mgrid[:height, :width]
    image[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = 230
    return np.clip(image, 0, 255).astype(np.uint8)


def test_a_central_fraction_keeps_the_central_pixels(tmp_path):
    pixels = np.arange(100 * 100, dtype=np.uint32).reshape(100, 100) % 251
    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "grid.png")
    x = decode_file(str(tmp_path / "grid.png"), ImageSpec((50, 50), 1, crop=0.5))
    np.testing.assert_allclose(x[0], pixels[25:75, 25:75] / 255.0, atol=1e-6)
    assert centre_box(90, 120, 0.5) == (22, 30, 67, 90)


def test_auto_finds_a_bright_disc_and_squares_its_box():
    box = object_box(disc() / 255.0)
    top, left, bottom, right = box
    assert bottom - top == right - left  # square
    assert top <= 30 - 12 and bottom > 30 + 12 and left <= 80 - 12 and right > 80 + 12  # holds the disc
    assert bottom - top < 40  # and little else: the disc's 25 px, padded


def test_auto_falls_back_to_the_whole_image_when_nothing_stands_out(tmp_path):
    Image.fromarray(np.full((40, 60), 90, np.uint8)).save(tmp_path / "flat.png")
    with Image.open(tmp_path / "flat.png") as img:
        x, box, note = decode_image(img, ImageSpec((20, 30), 1, crop="auto"))
    assert box == (0.0, 0.0, 1.0, 1.0) and note == WHOLE_IMAGE_NOTE and x.shape == (1, 20, 30)


def test_the_rows_record_what_the_crop_kept(ray_session, tmp_path):
    Image.fromarray(disc()).save(tmp_path / "disc.png")
    Image.fromarray(np.full((40, 60), 90, np.uint8)).save(tmp_path / "flat.png")
    cfg = DataConfig(spec=str(tmp_path), image_size=16, crop="auto")
    rows = preprocess(load_source(cfg).dataset, ImageSpec((16, 16), 1, crop="auto")).take_all()
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    kept = by_name["disc.png"]
    top, left, bottom, right = (kept[c] for c in CROP_COLUMNS)
    assert 0 < top < 30 / 90 < bottom < 1 and 0 < left < 80 / 120 < right <= 1
    assert kept[CROP_NOTE] == "" and kept["x"].mean() > 0.3  # a third disc or more; the whole image 0.12
    assert by_name["flat.png"][CROP_NOTE] == WHOLE_IMAGE_NOTE


def test_the_crop_and_the_views_are_part_of_the_feature_cache_key(tmp_path):
    Image.fromarray(disc()).save(tmp_path / "disc.png")
    plain = DataConfig(spec=str(tmp_path))
    source = load_source(plain)
    features = FeatureConfig(backbone="efficientnet_lite0")
    keys = {crop: cache_key(source, dataclasses.replace(plain, crop=crop), features, 224) for crop in (None, 0.5, "auto")}
    assert len(set(keys.values())) == 3
    assert keys[0.5] == cache_key(source, dataclasses.replace(plain, crop=0.5), features, 224)
    views = {v: cache_key(source, plain, FeatureConfig(backbone="efficientnet_lite0", views=v), 224)
             for v in ("none", "rot4", "dihedral")}
    assert len(set(views.values())) == 3 and views["none"] == keys[None]


@pytest.mark.parametrize("bad", ["0", "1.5", "middle", -0.2])
def test_a_crop_must_be_a_fraction_or_auto(bad):
    with pytest.raises(ValueError, match="data.crop"):
        DataConfig(crop=bad)
    with pytest.raises(ValueError, match="tiles"):
        DataConfig(crop=0.5, tile=32)
