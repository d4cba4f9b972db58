"""Sources produce the shared schema; preprocessing records every unreadable file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deimos_ray.config import DataConfig
from deimos_ray.data.preprocess import ImageSpec, convert_arrays, decode_file, to_unit_float
from deimos_ray.data.sources import detect_format, list_image_files, load_source
from deimos_ray.pipeline import prepare_data


def write_image_folder(root, n_good=6):
    """Good PNG/JPEG files in nested folders, plus a dotfile and a non-image to skip."""
    rng = np.random.default_rng(0)
    (root / "a" / "b").mkdir(parents=True)
    paths = []
    for i in range(n_good):
        sub = root / ("a" if i % 2 else "a/b")
        ext = ".PNG" if i % 3 == 0 else ".jpg"
        path = sub / f"img{i}{ext}"
        Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)).save(path, format="PNG" if ext == ".PNG" else "JPEG")
        paths.append(path)
    (root / ".hidden.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return paths


def write_bad_files(root):
    """A zero-byte file, a text file named .jpg, and a truncated PNG."""
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("hello")
    good = root / "a" / "img1.jpg"
    (root / "truncated.png").write_bytes(Image.open(good).tobytes()[:50])


def test_detect_format_and_clear_errors(tmp_path):
    assert detect_format("digits") == ("digits", "")
    assert detect_format(str(tmp_path)) == ("folder", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_format(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown source format"):
        detect_format("hdf5:x.h5")
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format(str(tmp_path / "x.csv"))


def test_digits_rows_and_labels(ray_session):
    src = load_source("digits")
    assert (src.num_inputs, src.has_labels, src.image_shape) == (1797, True, (8, 8, 1))
    rows = src.dataset.take_batch(1797)
    assert len(set(rows["id"])) == 1797
    assert sorted(set(rows["label"].tolist())) == list(range(10))
    assert rows["image"].dtype == np.uint8 and rows["image"].max() == 255


@pytest.mark.parametrize("with_labels", [True, False])
def test_npz_source(ray_session, tmp_path, with_labels):
    images = np.random.default_rng(0).integers(0, 255, (10, 5, 6), dtype=np.uint8)
    arrays = {"images": images, **({"labels": np.arange(10) % 2} if with_labels else {})}
    np.savez(tmp_path / "set.npz", **arrays)
    src = load_source(str(tmp_path / "set.npz"), limit=7)
    rows = src.dataset.take_batch(100)
    assert src.num_inputs == 7 and rows["image"].shape == (7, 5, 6, 1)
    assert rows["id"][0] == "set-000000"
    assert (rows["label"] >= 0).all() if with_labels else (rows["label"] == -1).all()


def test_npz_without_images_is_a_clear_error(ray_session, tmp_path):
    np.savez(tmp_path / "bad.npz", pixels=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="no 'images' array"):
        load_source(str(tmp_path / "bad.npz"))


def test_folder_is_recursive_and_skips_dotfiles(ray_session, tmp_path):
    paths = write_image_folder(tmp_path)
    found = list_image_files(tmp_path)
    assert sorted(found) == sorted(paths)
    src = load_source(str(tmp_path))
    assert src.num_inputs == len(paths) and not src.decoded


def test_empty_folder_is_a_clear_error(ray_session, tmp_path):
    with pytest.raises(ValueError, match="holds no image files"):
        load_source(str(tmp_path))


def test_bad_files_are_rejected_with_reasons_and_good_ones_kept(ray_session, tmp_path):
    paths = write_image_folder(tmp_path)
    write_bad_files(tmp_path)
    data = prepare_data(DataConfig(spec=str(tmp_path), image_size=8))
    assert data.num_inputs == len(paths) + 3
    assert data.good.count() == len(paths)
    assert sorted(data.rejected["id"]) == ["empty.png", "text.jpg", "truncated.png"]
    assert all(data.rejected["reason"].str.len() > 0)
    assert set(data.rejected["stage"]) == {"decode"}
    x = data.good.take_batch(100)["x"]
    assert x.shape == (len(paths), 1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0


def test_fail_mode_names_the_file(ray_session, tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png"):
        prepare_data(DataConfig(spec=str(tmp_path), on_error="fail"))


def test_decode_handles_16bit_rgba_and_palette(tmp_path):
    spec = ImageSpec((4, 4), 1)
    Image.fromarray(np.full((6, 6), 65535, np.uint16)).save(tmp_path / "w16.png")
    assert decode_file(str(tmp_path / "w16.png"), spec).min() == pytest.approx(1.0)
    Image.new("RGBA", (6, 6), (255, 255, 255, 0)).save(tmp_path / "rgba.png")
    assert decode_file(str(tmp_path / "rgba.png"), ImageSpec((4, 4), 3)).shape == (3, 4, 4)
    Image.new("P", (6, 6), 3).save(tmp_path / "pal.png")
    assert decode_file(str(tmp_path / "pal.png"), spec).shape == (1, 4, 4)


def test_array_conversion_scales_by_dtype_and_resizes():
    assert to_unit_float(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    assert to_unit_float(np.array([0, 65535], np.uint16)).tolist() == [0.0, 1.0]
    rgb = np.zeros((2, 8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    out = convert_arrays(rgb, ImageSpec((4, 4), 1))
    assert out.shape == (2, 1, 4, 4) and out.max() == pytest.approx(0.299, rel=1e-3)
