"""Every source produces the shared schema; bad inputs are recorded, never lost."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deimos_ray.config import DataConfig
from deimos_ray.data.prepare import prepare_data
from deimos_ray.data.sources import detect_format, list_image_files
from deimos_ray.data.sources import load_source as _load_source
from deimos_ray.data.sources.archive import unsafe_member
from deimos_ray.data.sources.base import rechunk
from deimos_ray.data.sources.hirise import split_augmentation
from tests.helpers import FIXTURES, write_bad_files, write_image_folder


def load_source(spec, **kw):
    return _load_source(DataConfig(spec=str(spec), **kw))


def rows_of(source):
    return source.dataset.to_pandas()


def test_detect_format_and_clear_errors(tmp_path):
    assert detect_format("digits") == ("digits", "")
    assert detect_format(str(tmp_path)) == ("folder", str(tmp_path))
    assert detect_format(str(FIXTURES / "hirise"))[0] == "hirise"
    assert detect_format(str(FIXTURES / "galaxy_zoo"))[0] == "galaxy_zoo"
    assert detect_format(str(FIXTURES / "escape.zip"))[0] == "zip"
    assert detect_format(f"folder:{FIXTURES / 'hirise'}")[0] == "folder"  # prefix wins
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_format(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown source format"):
        detect_format("hdf5:x.h5")
    (tmp_path / "x.h5").write_text("a")
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format(str(tmp_path / "x.h5"))


def test_empty_sources_are_clear_errors(ray_session, tmp_path):
    with pytest.raises(ValueError, match="holds no image files"):
        load_source(tmp_path)
    pd.DataFrame({"path": []}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match="lists no images"):
        load_source(tmp_path / "m.csv")


# -- arrays ---------------------------------------------------------------------------

def test_digits_rows_and_labels(ray_session):
    src = load_source("digits")
    assert (src.num_inputs, src.has_labels, src.image_shape) == (1797, True, (8, 8, 1))
    rows = src.dataset.take_batch(1797)
    assert len(set(rows["id"])) == 1797
    assert sorted(set(rows["label"].tolist())) == list(range(10))
    assert rows["image"].dtype == np.uint8 and rows["image"].max() == 255


def test_rechunk_cuts_a_source_into_small_blocks_in_the_same_order(ray_session):
    # With a backbone the rows go to the actors a block at a time: the digits' one
    # block of 1,797 rows would keep every actor but one idle.
    src = load_source("digits")
    small = rechunk(src.dataset, 64)
    assert small.num_blocks() == 29  # ceil(1797 / 64)
    assert max(len(b["id"]) for b in small.iter_batches(batch_size=None, batch_format="numpy")) == 64
    before, after = src.dataset.take_batch(1797), small.take_batch(1797)
    assert after["id"].tolist() == before["id"].tolist()
    np.testing.assert_array_equal(np.stack(after["image"]), np.stack(before["image"]))


@pytest.mark.parametrize("with_labels", [True, False])
def test_npz_source(ray_session, tmp_path, with_labels):
    images = np.random.default_rng(0).integers(0, 255, (10, 5, 6), dtype=np.uint8)
    arrays = {"images": images, **({"labels": np.arange(10) % 2} if with_labels else {})}
    np.savez(tmp_path / "set.npz", **arrays)
    src = load_source(tmp_path / "set.npz", limit=7)
    rows = src.dataset.take_batch(100)
    assert src.num_inputs == 7 and rows["image"].shape == (7, 5, 6, 1)
    assert rows["id"][0] == "set-000000"
    assert (rows["label"] >= 0).all() if with_labels else (rows["label"] == -1).all()


def test_npz_without_images_is_a_clear_error(ray_session, tmp_path):
    np.savez(tmp_path / "bad.npz", pixels=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="no 'images' array"):
        load_source(tmp_path / "bad.npz")


# -- folders and manifests ----------------------------------------------------------

def test_folder_is_recursive_any_case_and_skips_dotfiles(ray_session, tmp_path):
    paths = write_image_folder(tmp_path)
    assert sorted(list_image_files(tmp_path)) == sorted(paths)
    src = load_source(tmp_path)
    assert src.num_inputs == len(paths) and not src.has_labels
    assert set(rows_of(src)["id"]) == {p.relative_to(tmp_path).as_posix() for p in paths}


def test_labels_from_folders(ray_session, tmp_path):
    for cls in ("spirals", "ellipticals"):
        for split in ("train", "validation"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("L", (8, 8)).save(tmp_path / split / cls / f"{cls}-{split}.png")
    rows = rows_of(load_source(tmp_path, labels_from_folders=True))
    by_class = rows.groupby("class_name")["label"].unique()
    assert by_class["ellipticals"].tolist() == [0] and by_class["spirals"].tolist() == [1]


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifest_resolves_relative_paths_and_keeps_metadata(ray_session, tmp_path, kind):
    paths = write_image_folder(tmp_path / "imgs", n_good=3)
    df = pd.DataFrame({
        "path": [p.relative_to(tmp_path).as_posix() for p in paths],
        "id": ["x", "y", "z"], "label": ["cat", "dog", "cat"], "group": ["g1", "g1", "g2"],
        "exposure_s": [1.5, 2.0, 3.0],
    })
    manifest = tmp_path / f"m.{kind}"
    df.to_csv(manifest, index=False) if kind == "csv" else df.to_parquet(manifest)
    rows = rows_of(load_source(manifest)).set_index("id")
    assert rows.loc["y", "label"] == 1 and rows.loc["y", "class_name"] == "dog"
    assert rows.loc["z", "group"] == "g2" and rows.loc["x", "exposure_s"] == 1.5
    assert Path(rows.loc["x", "file"]).is_file()


def test_manifest_needs_a_path_column(ray_session, tmp_path):
    pd.DataFrame({"file": ["a.png"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match="'path' column"):
        load_source(tmp_path / "m.csv")


# -- zip archives ----------------------------------------------------------------------

def test_unsafe_member_names():
    assert unsafe_member("../evil.png") and unsafe_member("/abs.png") and unsafe_member("a/../../b.png")
    assert unsafe_member("C:\\x.png") and not unsafe_member("sub/ok..png")


def test_zip_is_read_in_place_and_escaping_members_rejected(ray_session):
    src = load_source(FIXTURES / "escape.zip")
    rows = rows_of(src)
    assert sorted(rows["id"]) == ["a.png", "sub/b.png", "sub/deeper/c.png"]  # no __MACOSX, no dotfile
    assert {r["id"] for r in src.rejected} == {"../evil.png", "/abs.png"}
    assert all(r["stage"] == "source" and "unsafe" in r["reason"] for r in src.rejected)
    assert src.num_inputs == 5
    data = prepare_data(DataConfig(spec=str(FIXTURES / "escape.zip"), image_size=8))
    assert data.good_inputs == 3 and len(data.rejected) == 2
    assert data.num_inputs == data.good_inputs + len(data.rejected)


# -- HiRISE ----------------------------------------------------------------------------

def test_split_augmentation():
    assert split_augmentation("ESP_1_RED-0069-r90.jpg") == ("ESP_1_RED-0069.jpg", "r90")
    assert split_augmentation("ESP_1_RED-0069-brt.jpg") == ("ESP_1_RED-0069.jpg", "brt")
    assert split_augmentation("ESP_1_RED-0069.jpg") == ("ESP_1_RED-0069.jpg", "")


def test_hirise_v3_folder_groups_copies_and_counts_missing(ray_session):
    src = load_source(FIXTURES / "hirise")
    rows = rows_of(src).set_index("id")
    assert src.num_inputs == 5 and src.missing == 4  # 9 label lines, 5 files present
    original = "ESP_016631_2535_RED-0021.jpg"
    copies = rows[rows["group"] == original]
    assert len(copies) == 4 and set(copies["augmentation"]) == {"", "brt", "fv", "r90"}
    assert set(copies["label"]) == {4} and set(copies["class_name"]) == {"bright dune"}
    assert rows.loc["ESP_011289_1950_RED-0039.jpg", "class_name"] == "other"
    assert any("4 listed but missing" in n for n in src.notes)


def test_hirise_originals_only(ray_session):
    src = load_source(FIXTURES / "hirise", originals_only=True)
    assert sorted(rows_of(src)["id"]) == ["ESP_011289_1950_RED-0039.jpg", "ESP_016631_2535_RED-0021.jpg"]
    assert src.missing == 1  # the one absent original line


def png_bytes(size=(8, 8)):
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, format="PNG")
    return buffer.getvalue()


def write_hostile_zip(path, prefix=""):
    """One good member and one of each member a zip source must refuse unread."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{prefix}good.png", png_bytes())
        # Over max_member_bytes below, and incompressible.
        zf.writestr(f"{prefix}big.png", np.random.default_rng(0).bytes(2_500_000))
        zf.writestr(f"{prefix}bomb.png", bytes(3 * 2**19))  # 1.5 MiB of zeros, about 1000:1
        link = zipfile.ZipInfo(f"{prefix}link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr(f"{prefix}../escape.png", png_bytes())
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr(f"{prefix}good.png", png_bytes())
    return path


def test_hostile_zip_members_are_rejected_before_they_are_read(ray_session, tmp_path):
    path = write_hostile_zip(tmp_path / "hostile.zip")
    src = load_source(path, max_member_bytes=2_000_000)
    assert rows_of(src)["id"].tolist() == ["good.png"]
    reasons = {r["id"]: r["reason"] for r in src.rejected}
    assert "max_member_bytes=2000000" in reasons["big.png"]
    assert "compression ratio" in reasons["bomb.png"] and "max_compression_ratio=100" in reasons["bomb.png"]
    assert "symbolic link" in reasons["link.png"] and "unsafe" in reasons["../escape.png"]
    assert len(src.rejected) == 5 and "duplicate member name" in src.rejected[-1]["reason"]
    assert src.num_inputs == 6  # every member is an input: 1 read + 5 refused


def test_a_hirise_zip_records_its_refused_members_as_the_plain_zip_does(ray_session, tmp_path):
    path = make_v32_zip(tmp_path, "labels-map-proj_v3_2.txt")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("hirise-map-proj-v3_2/map-proj-v3_2/../../escape.jpg", png_bytes())
        link = zipfile.ZipInfo("hirise-map-proj-v3_2/map-proj-v3_2/link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    src = load_source(path)
    reasons = {r["path"].split("!/")[1]: r["reason"] for r in src.rejected}
    assert "unsafe" in reasons["hirise-map-proj-v3_2/map-proj-v3_2/../../escape.jpg"]
    assert "symbolic link" in reasons["hirise-map-proj-v3_2/map-proj-v3_2/link.jpg"]
    assert src.num_inputs == 5 + 2


def test_tiles_per_image_are_capped_with_the_count(ray_session, tmp_path):
    Image.new("L", (64, 64)).save(tmp_path / "wide.png")
    Image.new("L", (8, 8)).save(tmp_path / "small.png")
    data = prepare_data(DataConfig(spec=str(tmp_path), tile=4, stride=1, max_tiles=100))
    assert data.rejected["id"].tolist() == ["wide.png"]
    assert "would cut 3721 tiles" in data.rejected["reason"][0] and "data.max_tiles=100" in data.rejected["reason"][0]
    assert data.num_rows == 25  # small.png's tiles


def test_pillow_pixel_limit_follows_max_pixels():
    from deimos_ray.data.preprocess import ImageSpec, _preprocess_batch

    spec = ImageSpec((4, 4), 1, max_pixels=300_000_000)  # above Pillow's own default limit
    _preprocess_batch({"id": np.array(["a"]), "bytes": np.array([png_bytes()], dtype=object)}, spec)
    assert Image.MAX_IMAGE_PIXELS == 300_000_000


def test_manifest_and_metadata_columns_cannot_shadow_the_tools_own(ray_session, tmp_path):
    pd.DataFrame({"path": ["a.png"], "cluster": [1], "x": [0.5]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match=r"columns \['cluster', 'x'\] are deimos_ray's own"):
        load_source(tmp_path / "m.csv")
    from deimos_ray.data.metadata import read_metadata

    pd.DataFrame({"id": ["a.png"], "_source_id": ["b"], "exposure": [3.0]}).to_csv(tmp_path / "meta.csv", index=False)
    with pytest.raises(ValueError, match=r"\['_source_id'\] are deimos_ray's own"):
        read_metadata(str(tmp_path / "meta.csv"), "id")


def make_v32_zip(tmp_path, labels_name):
    """The fixture repackaged in the v3.2 layout, zipped with a __MACOSX tree."""
    path = tmp_path / "hirise-map-proj-v3_2.zip"
    lines = (FIXTURES / "hirise" / "labels-map-proj-v3.txt").read_text().splitlines()
    sets = ["train", "val", "test"]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"hirise-map-proj-v3_2/{labels_name}", "\n".join(lines) + "\n")
        zf.writestr("hirise-map-proj-v3_2/labels-map-proj_v3_2_train_val_test.txt",
                    "\n".join(f"{line} {sets[i % 3]}" for i, line in enumerate(lines)) + "\n")
        zf.write(FIXTURES / "hirise" / "landmarks_map-proj-v3_classmap.csv",
                 "hirise-map-proj-v3_2/landmarks_map-proj-v3_2_classmap.csv")
        for img in sorted((FIXTURES / "hirise" / "map-proj-v3").iterdir()):
            zf.write(img, f"hirise-map-proj-v3_2/map-proj-v3_2/{img.name}")
            zf.writestr(f"__MACOSX/hirise-map-proj-v3_2/map-proj-v3_2/._{img.name}", b"\x00\x05")
    return path


@pytest.mark.parametrize("labels_name", ["labels-map-proj_v3_2.txt", "labels-map-proj-v3_2.txt"])
def test_hirise_v32_zip_read_in_place(ray_session, tmp_path, labels_name):
    path = make_v32_zip(tmp_path, labels_name)
    assert detect_format(str(path))[0] == "hirise"
    src = load_source(path)
    rows = rows_of(src)
    assert src.num_inputs == 5 and src.missing == 4
    assert set(rows["set"]) <= {"train", "val", "test"} and rows["set"].str.len().min() > 0
    assert rows["path"].str.contains("!/").all()
    data = prepare_data(DataConfig(spec=str(path), image_size=16))
    assert data.good_inputs == 5 and len(data.rejected) == 0


# -- Galaxy Zoo and Parquet ------------------------------------------------------------

def test_galaxy_zoo_votes_and_derived_labels(ray_session):
    src = load_source(FIXTURES / "galaxy_zoo")
    rows = rows_of(src).set_index("id")
    assert src.num_inputs == 4 and src.missing == 1  # 999999 has no image
    assert sum(c.startswith("Class") for c in rows.columns) == 37
    assert rows["label"].tolist() == [0, 0, 1, -1]  # >0.8 smooth, >0.8 disk, mixed
    strict = rows_of(load_source(FIXTURES / "galaxy_zoo", gz_elliptical=0.88))
    assert strict["label"].tolist() == [0, -1, 1, -1]


def test_parquet_of_encoded_images(ray_session, tmp_path):
    data = [(FIXTURES / "bad" / n).read_bytes() for n in ("good.png", "rgba.png", "zero.png")]
    pq.write_table(pa.table({"bytes": data, "label": [1, 2, 3], "site": ["a", "b", "c"]}), tmp_path / "imgs.parquet")
    assert detect_format(str(tmp_path / "imgs.parquet"))[0] == "parquet"
    prepared = prepare_data(DataConfig(spec=str(tmp_path / "imgs.parquet"), image_size=4))
    assert prepared.good_inputs == 2 and prepared.rejected["id"].tolist() == ["imgs-000002"]
    assert set(prepared.good.to_pandas()["site"]) == {"a", "b"}


# -- bad inputs --------------------------------------------------------------------------

def test_bad_files_are_rejected_with_reasons_and_good_ones_kept(ray_session, tmp_path):
    paths = write_image_folder(tmp_path)
    write_bad_files(tmp_path)
    data = prepare_data(DataConfig(spec=str(tmp_path), image_size=8))
    assert data.num_inputs == len(paths) + 3
    assert data.good_inputs == len(paths)
    assert sorted(data.rejected["id"]) == ["text.jpg", "truncated.jpg", "zero.png"]
    assert all(data.rejected["reason"].str.len() > 0)
    assert set(data.rejected["stage"]) == {"decode"}
    x = data.good.take_batch(100)["x"]
    assert x.shape == (len(paths), 1, 8, 8) and 0.0 <= x.min() and x.max() <= 1.0


def test_committed_bad_folder_accounting(ray_session):
    data = prepare_data(DataConfig(spec=str(FIXTURES / "bad"), image_size=4, channels=3))
    assert sorted(data.rejected["id"]) == ["text.jpg", "truncated.jpg", "zero.png"]
    assert data.good_inputs == 4  # good, 16-bit, RGBA, palette
    assert data.num_inputs == data.good_inputs + len(data.rejected)


def test_too_many_pixels_is_rejected_not_fatal(ray_session, tmp_path):
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    Image.new("L", (5, 5)).save(tmp_path / "small.png")
    data = prepare_data(DataConfig(spec=str(tmp_path), max_pixels=1000))
    assert data.rejected["id"].tolist() == ["big.png"] and "too large" in data.rejected["reason"][0]


def test_fail_mode_names_the_file(ray_session, tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png"):
        prepare_data(DataConfig(spec=str(tmp_path), on_error="fail"))
