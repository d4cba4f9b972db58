"""jobs/train_dac.py end to end on tiny data: columns, accounting, labelled pairs, the
small-cluster merge, restarts and their consensus, and the recipes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from deimos_ray.algorithms.dac import known_label_mask
from deimos_ray.assignments import read_metadata
from deimos_ray.consensus import combine_probabilities
from deimos_ray.metrics import external_scores
from deimos_ray.new_images import assign_new
from deimos_ray.train.checkpoint import load_state
from tests.helpers import load_job, smoke_may_collapse, write_image_folder


def test_train_dac_on_digits_with_labelled_pairs_and_merged_clusters(ray_session, tmp_path):
    out = tmp_path / "run"
    job = load_job("train_dac")
    args = job.get_args_parser().parse_args(
        ["--out", str(out), "--smoke-test", "--limit", "150", "--labeled-fraction", "0.2",
         "--min-cluster-size", "20", "--schedule", "official", "--num-workers", "0"]
    )
    # 150 images in clusters of at least 20 leave at most 7 of the 10 asked for, and the job
    # says so, as scikit-learn does.
    with pytest.warns(UserWarning, match=r"DAC returned \d+ distinct clusters, fewer than n_clusters=10") as caught:
        assert job.main(args) == 0

    table = pq.read_table(out / "assignments")
    assert table.num_rows == 150
    rows = table.to_pandas()
    assert {"cluster", "confidence", "topk_clusters", "topk_probs", "embedding"} <= set(rows.columns)
    topk = np.stack(rows["topk_clusters"].to_numpy())
    probs = np.stack(rows["topk_probs"].to_numpy())
    assert topk.shape == probs.shape == (150, 3)
    assert (np.diff(probs, axis=1) <= 0).all() and np.allclose(probs[:, 0], rows["confidence"])
    sizes = rows["cluster"].value_counts()
    assert (sizes >= 20).all()  # every cluster left is at least the minimum size
    assert any(f"returned {len(sizes)} distinct clusters" in str(w.message) for w in caught)

    metrics = json.loads((out / "metrics.json").read_text())
    moved = metrics["images_moved"]
    assert moved == int((rows["cluster"].to_numpy() != topk[:, 0]).sum())
    assert set(metrics["scores"]) == {"dac", "kmeans", "ward"}
    assert metrics["training"]["epochs"] == 2
    history = metrics["training"]["history"]
    assert history[0]["upper"] == history[0]["lower"] == 0.99 and "labeled_loss" in history[0]
    config = read_metadata(out / "assignments")["config"]
    assert config["min_cluster_size"] == 20

    # The labels training saw are left out of the held-out scores, for DAC and k-means alike.
    seen = known_label_mask(rows["id"].to_numpy(), rows["label"].to_numpy(), 0.2, config["seed"])
    assert 0 < seen.sum() < 150
    unseen = rows[~seen]
    expected = external_scores(unseen["label"].to_numpy(), unseen["cluster"].to_numpy())
    dac = metrics["scores"]["dac"]
    assert {f"heldout_{k}": dac[f"heldout_{k}"] for k in expected} == pytest.approx(
        {f"heldout_{k}": v for k, v in expected.items()})
    assert set(metrics["scores"]["kmeans"]) >= {f"heldout_{k}" for k in expected}


@smoke_may_collapse
def test_restarts_are_combined_by_consensus_and_resume(ray_session, tmp_path):
    out = tmp_path / "run"
    job = load_job("train_dac")
    parser = job.get_args_parser()
    # The reference recipe for 4 epochs: unlike the smoke test's 2, the runs find several clusters.
    restarts = ["--out", str(out), "--smoke-test", "--limit", "60", "--restarts", "2", "--recipe", "reference",
                "--set", "model.epochs=4"]
    # Trained at the same time, the two restarts overlap.
    assert job.main(parser.parse_args([*restarts, "--concurrent-restarts", "2"])) == 0

    metrics = json.loads((out / "metrics.json").read_text())
    records = metrics["restarts"]
    assert [r["seed"] for r in records] == [0, 1000]
    assert records[1]["started_s"] < records[0]["finished_s"] and records[0]["started_s"] < records[1]["finished_s"]
    kept = [r for r in records if r["kept"]]
    assert len(kept) == 1 and kept[0]["objective"] == min(r["objective"] for r in records)
    # The reported training and the exported checkpoint are the lowest-loss run's ...
    assert metrics["training"]["history"][-1]["pair_loss"] == pytest.approx(kept[0]["objective"])
    assert load_state(out / "checkpoint")["seed"] == kept[0]["seed"]
    assert (out / "ray" / "train").is_dir() and (out / "ray" / "train-restart1").is_dir()
    assert not any(k.startswith("heldout_") for k in metrics["scores"]["dac"])  # no labels were seen
    # ... and the assignments are the consensus of both restarts' own assignments.
    restart_rows = [pq.read_table(out / "restarts" / str(r) / "assignments").to_pandas().set_index("id")
                    for r in range(2)]
    assert [load_state(out / "restarts" / str(r) / "checkpoint")["seed"] for r in range(2)] == [0, 1000]
    final = pq.read_table(out / "assignments").to_pandas()
    assert len(final) == 60
    probabilities = []
    for rows in restart_rows:
        features = np.stack(rows.loc[final["id"], "embedding"].to_numpy())
        probabilities.append(features / features.sum(axis=1, keepdims=True))
    mean, agreement = combine_probabilities(probabilities, seed=0)
    assert (final["cluster"].to_numpy() == mean.argmax(axis=1)).all()
    assert [r["agreement"] for r in records] == pytest.approx(agreement)
    assert read_metadata(out / "assignments")["consensus"]["agreement"] == pytest.approx(agreement)
    # Assigned again with both restarts' models, the training images keep the run's clusters.
    assert final["cluster"].nunique() >= 2
    assign_new(out, "digits", tmp_path / "again", report=False)
    again = pq.read_table(tmp_path / "again" / "assignments").to_pandas().set_index("id").loc[final["id"]]
    assert (again["cluster"].to_numpy() == final["cluster"].to_numpy()).all()

    # Rerun into the same folder one restart after another (the default): both trainings
    # resume where they finished (no epoch trains again) and give the same clusters.
    assert job.main(parser.parse_args(restarts)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    again = metrics["restarts"]
    assert again[1]["started_s"] >= again[0]["finished_s"]
    assert [r["objective"] for r in again] == [r["objective"] for r in records]
    assert metrics["training"]["resumed_at_epoch"] == 4
    rerun = pq.read_table(out / "assignments").to_pandas()
    assert (rerun["id"] == final["id"]).all() and (rerun["cluster"] == final["cluster"]).all()


def test_labeled_fraction_without_labels_is_refused(ray_session, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    write_image_folder(images, n_good=6)
    job = load_job("train_dac")
    args = job.get_args_parser().parse_args(["--data", str(images), "--out", str(tmp_path / "run"),
                                             "--smoke-test", "--k", "3", "--labeled-fraction", "0.5"])
    assert job.main(args) == 2
    assert "--labeled-fraction needs a source with labels" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before the run folder is written


def test_recipe_sits_under_smoke_test_flags_and_set():
    job = load_job("train_dac")
    parser = job.get_args_parser()
    reference = job.build_config(parser.parse_args(["--recipe", "reference"])).model
    assert (reference.selection, reference.pair_loss, reference.epochs) == ("chunk", "mse", 20)
    # The reference code's RMSprop decay (Keras's default) is the default of both recipes.
    assert reference.rmsprop_alpha == job.build_config(parser.parse_args([])).model.rmsprop_alpha == 0.9
    flagged = job.build_config(parser.parse_args(["--recipe", "reference", "--pair-loss", "bce",
                                                   "--set", "model.inner_passes=2"])).model
    assert (flagged.selection, flagged.pair_loss, flagged.inner_passes) == ("chunk", "bce", 2)
    smoke = job.build_config(parser.parse_args(["--recipe", "reference", "--smoke-test"])).model
    assert smoke.epochs == 2 and smoke.selection == "chunk"
    assert job.build_config(parser.parse_args([])).model.selection == "batch"
    assert job.build_config(parser.parse_args(["--restarts", "3"])).restarts.count == 3
    with pytest.raises(ValueError, match="must be >= 1"):
        job.build_config(parser.parse_args(["--restarts", "0"]))
    assert job.build_config(parser.parse_args(["--concurrent-restarts", "2"])).restarts.concurrent == 2
    assert job.build_config(parser.parse_args(["--min-cluster-size", "5"])).min_cluster_size == 5
    with pytest.raises(ValueError, match="needs --num-workers >= 1"):
        job.build_config(parser.parse_args(["--restarts", "2", "--concurrent-restarts", "2", "--num-workers", "0"]))
