"""jobs/train_desom.py end to end on tiny data: map columns, pictures, redrawing, the
restarts' consensus and the two-level pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deimos_ray.assignments import read_metadata
from deimos_ray.consensus import combine_labelings
from deimos_ray.new_images import assign_new
from deimos_ray.train.checkpoint import load_state
from tests.helpers import ROOT, load_job, smoke_may_collapse


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 50


@smoke_may_collapse
def test_train_desom_on_digits_writes_the_map_and_its_pictures(ray_session, tmp_path):
    out = tmp_path / "run"
    job = load_job("train_desom")
    args = job.get_args_parser().parse_args(
        ["--out", str(out), "--smoke-test", "--limit", "120", "--map-size", "3", "4", "--k", "3",
         "--num-workers", "0"])
    assert job.main(args) == 0

    rows = pq.read_table(out / "assignments").to_pandas()
    assert len(rows) == 120
    assert {"som_row", "som_col", "bmu_distance", "cluster", "embedding"} <= set(rows.columns)
    assert rows["som_row"].between(0, 2).all() and rows["som_col"].between(0, 3).all()
    assert rows["cluster"].between(0, 2).all() and (rows["bmu_distance"] >= 0).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["som"]) == {"quantization_error", "topographic_error"}
    assert 0 <= metrics["som"]["topographic_error"] <= 1
    assert metrics["training"]["iterations"] == 30
    for name in ("prototypes.png", "hits.png", "umatrix.png"):
        assert_png(out / "report" / name)

    # The pictures come back from the run directory alone.
    for png in (out / "report").glob("*.png"):
        png.unlink()
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "report.py"), "--no-images", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("prototypes.png", "hits.png", "umatrix.png"):
        assert_png(out / "report" / name)


@smoke_may_collapse
def test_restarts_vote_the_clusters_and_keep_the_lowest_loss_map(ray_session, tmp_path):
    out = tmp_path / "run"
    job = load_job("train_desom")
    parser = job.get_args_parser()
    assert job.main(parser.parse_args(["--out", str(out), "--smoke-test", "--limit", "120", "--map-size", "3", "4",
                                       "--k", "3", "--restarts", "2", "--num-workers", "0", "--set", "model.iterations=400",
                                       "--set", "checkpoint_interval_s=30"])) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    records = metrics["restarts"]
    assert [r["seed"] for r in records] == [0, 1000]
    kept = next(r for r in records if r["kept"])
    assert kept["objective"] == min(r["objective"] for r in records)
    assert metrics["training"]["loss"] == pytest.approx(kept["objective"])
    assert load_state(out / "checkpoint")["seed"] == kept["seed"]
    restart_rows = [pq.read_table(out / "restarts" / str(r) / "assignments").to_pandas().set_index("id")
                    for r in range(2)]
    final = pq.read_table(out / "assignments").to_pandas()
    assert len(final) == 120
    # The map columns are the kept restart's, in its row order; the clusters the vote.
    own = restart_rows[kept["restart"]]
    assert (final["id"].to_numpy() == own.index.to_numpy()).all()
    assert (final["som_row"].to_numpy() == own["som_row"].to_numpy()).all()
    combined, share, agreement = combine_labelings(
        [rows.loc[final["id"], "cluster"].to_numpy() for rows in restart_rows], 3, seed=0)
    assert (final["cluster"].to_numpy() == combined).all()
    np.testing.assert_allclose(final["confidence"].to_numpy(), share)
    assert [r["agreement"] for r in records] == pytest.approx(agreement)
    assert read_metadata(out / "assignments")["consensus"]["kept"] == kept["restart"]
    assert_png(out / "report" / "prototypes.png")

    # Assigned again with both restarts' models, the training images keep the run's clusters.
    assert final["cluster"].nunique() == 3
    assign_new(out, "digits", tmp_path / "again", report=False)
    again = pq.read_table(tmp_path / "again" / "assignments").to_pandas().set_index("id").loc[final["id"]]
    assert (again["cluster"].to_numpy() == final["cluster"].to_numpy()).all()

    # Without --k every node is a cluster, and nodes of two maps do not correspond.
    assert job.main(parser.parse_args(["--out", str(tmp_path / "no-k"), "--smoke-test", "--restarts", "2"])) == 2


@smoke_may_collapse
def test_two_level_pipeline_maps_the_source_images_of_tiles(ray_session, tmp_path):
    images = tmp_path / "exposures"
    images.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):  # 8 "exposures" of 16x16, each cut into four 8x8 tiles
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(images / f"exp{i}.png")
    out = tmp_path / "run"
    job = load_job("train_desom")
    args = job.get_args_parser().parse_args(
        ["--data", str(images), "--out", str(out), "--smoke-test", "--tile", "8", "--map-size", "2", "3",
         "--levels", "2", "--level2-map-size", "2", "2", "--num-workers", "0"])
    assert job.main(args) == 0

    tiles = pq.read_table(out / "assignments").to_pandas()
    assert len(tiles) == 32 and tiles["group"].nunique() == 8
    groups = pq.read_table(out / "groups.parquet").to_pandas()
    assert list(groups.columns) == ["group", "som_row", "som_col", "cluster", "members", "bmu_distance"]
    assert sorted(groups["group"]) == sorted(tiles["group"].unique())
    assert (groups["members"] == 4).all()
    assert groups["som_row"].between(0, 1).all() and groups["som_col"].between(0, 1).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["level2"]["groups"] == 8
    for name in ("hits.png", "umatrix.png", "members.png"):
        assert_png(out / "level2" / "report" / name)


def test_two_levels_need_groups(ray_session, tmp_path):
    job = load_job("train_desom")
    args = job.get_args_parser().parse_args(
        ["--out", str(tmp_path / "run"), "--smoke-test", "--limit", "40", "--levels", "2"])
    with pytest.raises(ValueError, match="needs rows grouped"):
        job.main(args)
