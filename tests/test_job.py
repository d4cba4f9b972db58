"""The job contract, the same for every algorithm: every input assigned or rejected, the
columns and Parquet metadata, no staging folder left, and a rerun that resumes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from deimos_ray import __version__
from deimos_ray.algorithms import ALGORITHMS
from deimos_ray.assignments import read_metadata
from deimos_ray.config_io import override_all, to_dict
from deimos_ray.job import run_training_job
from tests.helpers import (
    backbone_job,
    backbone_smoke_settings,
    load_job,
    smoke_may_collapse,
    write_bad_files,
    write_image_folder,
)

COMMON_COLUMNS = {"id", "path", "group", "label", "cluster", "embedding"}
OWN_COLUMNS = {
    "dac": {"confidence", "topk_clusters", "topk_probs"},
    "dec": {"confidence"},
    "desom": {"som_row", "som_col", "bmu_distance"},
}
OWN_SETTINGS = {"dac": {}, "dec": {}, "desom": {"model.map_size": [2, 2]}}
RESUMED_AT = {"dac": "resumed_at_epoch", "dec": "resumed_at_epoch", "desom": "resumed_at_iteration"}
# Every algorithm trains in the driver here (a worker group costs about 30 s to start,
# twice per test); the jobs run through worker groups in tests/test_worker_failure.py
# (DEC, two workers) and tests/test_cluster_submit.py (DAC), every loop's in tests/train/.
NUM_WORKERS = {"dac": 0, "dec": 0, "desom": 0}


@pytest.mark.slow
@smoke_may_collapse
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_keeps_the_job_contract(ray_session, tmp_path, name):
    images = tmp_path / "images"
    images.mkdir()
    good = write_image_folder(images, n_good=20)
    write_bad_files(images)
    algorithm = ALGORITHMS[name]
    settings = {**load_job(algorithm.job).SMOKE, "data.spec": str(images), "data.image_size": 8,
                "model.n_clusters": 3, "scaling.num_workers": NUM_WORKERS[name], **OWN_SETTINGS[name]}
    cfg = override_all(algorithm.config_class(), settings)
    out = tmp_path / "run"
    metrics = run_training_job(algorithm, cfg, out)

    # Every input is assigned or rejected, with the reason.
    accounting = metrics["accounting"]
    assert accounting == {"inputs": len(good) + 3, "assigned": len(good), "rejected": 3}
    rejected = pq.read_table(out / "rejected.parquet").to_pandas()
    assert len(rejected) == 3 and rejected["reason"].str.len().gt(0).all()
    rows = pq.read_table(out / "assignments").to_pandas()
    assert len(rows) == len(good) and rows["id"].is_unique
    assert COMMON_COLUMNS | OWN_COLUMNS[name] <= set(rows.columns)
    assert rows["cluster"].between(0, 2).all()

    # The files say how they were made, and the staging folder is gone.
    meta = read_metadata(out / "assignments")
    assert meta["config"] == to_dict(cfg) and meta["job"] == algorithm.job
    assert meta["package_version"] == __version__
    assert json.loads((out / "metrics.json").read_text())["accounting"] == accounting
    assert set(metrics["scores"]) == {algorithm.model_name(cfg), "kmeans", "ward"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # The report page: a montage per cluster, the 2-D map coordinates in the rows.
    page = (out / "report" / "index.html").read_text()
    assert "map2d.png" in page and all(f"cluster_{c}_confident.png" in page for c in rows["cluster"].unique())
    assert {"x2d", "y2d"} <= set(pq.read_table(out / "assignments").column_names)

    # The same settings again: the training resumes from its checkpoint and the rows
    # come out the same.
    again = run_training_job(algorithm, cfg, out)
    assert again["training"][RESUMED_AT[name]] is not None
    rerun = pq.read_table(out / "assignments").to_pandas()
    assert (rerun["id"] == rows["id"]).all() and (rerun["cluster"] == rows["cluster"]).all()
    assert again["accounting"] == accounting


def test_a_settings_error_stops_the_job_before_the_run_folder_is_touched(tmp_path):
    algorithm = ALGORITHMS["dac"]
    cfg = override_all(algorithm.config_class(), {"data.metadata": str(tmp_path / "m.csv"),
                                                  "data.metadata_features": ["airmass"]})
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="DAC trains on images"):
        run_training_job(algorithm, cfg, out)
    assert not out.exists()


@pytest.mark.slow
@smoke_may_collapse
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_runs_on_cropped_rotation_pooled_backbone_features(ray_session, tmp_path, name):
    images = tmp_path / "images"
    images.mkdir()
    good = write_image_folder(images, n_good=16)
    write_bad_files(images)
    algorithm = ALGORITHMS[name]
    settings = {**backbone_smoke_settings(algorithm, images, data__crop="auto", features__views="rot4"),
                **OWN_SETTINGS[name]}
    cfg = override_all(algorithm.config_class(), settings)
    metrics = run_training_job(algorithm, cfg, tmp_path / "run")

    # The decode's rejections pass through the feature stage with their reasons.
    assert metrics["accounting"] == {"inputs": len(good) + 3, "assigned": len(good), "rejected": 3}
    rejected = pq.read_table(tmp_path / "run" / "rejected.parquet").to_pandas()
    assert set(rejected["stage"]) == {"decode"} and rejected["reason"].str.len().gt(0).all()
    assert metrics["representation"] == "efficientnet_lite0"
    assert "efficientnet_lite0 features" in metrics["scores_space"]
    assert metrics["score_rows"]["rows"] == metrics["score_rows"]["silhouette_and_dunn"] == len(good)
    stats = np.load(tmp_path / "run" / "feature_stats.npz")
    assert stats["mean"].shape == stats["std"].shape == (1280,)
    rows = pq.read_table(tmp_path / "run" / "assignments").to_pandas()
    assert len(rows) == len(good) and rows["cluster"].between(0, 2).all()
    assert rows["crop_bottom"].gt(rows["crop_top"]).all() and "crop_note" in rows  # what the crop kept
    assert [p.name for p in (tmp_path / "run" / "features").iterdir()][0].startswith("efficientnet_lite0-32-")


@pytest.mark.slow
@smoke_may_collapse
def test_dac_fine_tunes_the_backbone_on_the_images(ray_session, tmp_path):
    good, metrics, _ = backbone_job(tmp_path, "dac", model__fine_tune_backbone=True)
    algorithm = ALGORITHMS["dac"]

    assert metrics["fine_tuned_backbone"] == "efficientnet_lite0" and metrics["representation"] == "pixels"
    assert not (tmp_path / "run" / "features").exists()  # images, not cached features
    rows = pq.read_table(tmp_path / "run" / "assignments").to_pandas()
    assert len(rows) == len(good) and rows["cluster"].between(0, 2).all()
    with pytest.raises(ValueError, match="needs --backbone"):
        algorithm.check(override_all(algorithm.config_class(), {"model.fine_tune_backbone": True}))


@pytest.mark.slow
@smoke_may_collapse
def test_dac_pairs_two_views_from_a_bank_of_augmented_views_on_features(ray_session, tmp_path):
    good, metrics, run = backbone_job(tmp_path, "dac", features__views="augment:2")
    assert metrics["accounting"]["assigned"] == len(good)
    # The bank is in the feature cache, beside each image's own features, not in the outputs.
    entry = next((run / "features").iterdir())
    cached = pq.read_table(entry / "features.parquet")
    assert np.asarray(cached.column("_views")[0].as_py()).shape == (2, 1280)
    assert "_views" not in pq.read_table(run / "assignments").column_names
    # Training drew its "same" pairs from the bank: every image with one of its views at least.
    history = metrics["training"]["history"]
    assert all(epoch["same_fraction"] > 0 for epoch in history)
