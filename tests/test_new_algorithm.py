"""The Algorithm seam: a fourth method written only in tests/ (k-means on the rows)
runs through a job, a sweep with restarts, the assignment of new images and the report,
with no file of the package naming it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
from sklearn.metrics import adjusted_rand_score

from deimos_ray import cli
from deimos_ray.algorithms import get_algorithm
from deimos_ray.config_io import override_all
from deimos_ray.new_images import assign_new
from deimos_ray.sweep.driver import run_sweep
from tests.toy.kmeans_algorithm import KMEANS


def write_blobs(path, n=60, seed=0):
    """Three well-separated groups of 4x4 images (labels 0-2) as an .npz source."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n // 3)
    images = np.clip(labels[:, None, None] * 100 + rng.normal(20, 5, (n, 4, 4)), 0, 255).astype(np.uint8)
    np.savez(path, images=images, labels=labels, ids=np.array([f"blob-{seed}-{i:03d}" for i in range(n)]))
    return labels


def test_a_fourth_algorithm_runs_through_job_sweep_assignment_and_report(ray_session, tmp_path):
    labels = write_blobs(tmp_path / "blobs.npz")
    assert get_algorithm("centres") is KMEANS

    # A job, from the algorithm's own flags, with restarts combined by its vote.
    run = tmp_path / "run"
    parser = cli.job_parser(KMEANS, None)
    args = parser.parse_args(["--data", f"npz:{tmp_path / 'blobs.npz'}", "--k", "3", "--restarts", "2",
                              "--n-init", "2", "--num-workers", "0", "--out", str(run)])
    assert cli.main(KMEANS, args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["job"] == "train_centres" and metrics["accounting"]["assigned"] == 60
    assert len(metrics["restarts"]) == 2 and metrics["scores"]["centres"]["nmi"] == 1.0
    rows = pq.read_table(run / "assignments").to_pandas().set_index("id")
    assert adjusted_rand_score(labels, rows.loc[[f"blob-0-{i:03d}" for i in range(60)], "cluster"]) == 1.0

    # The report calls the algorithm's own pictures.
    page = (run / "report" / "index.html").read_text()
    assert "centres.png" in page and (run / "report" / "centres.png").is_file()

    # New images: every restart assigns, combined with the run's saved matching.
    write_blobs(tmp_path / "new.npz", seed=1)
    assign_new(run, f"npz:{tmp_path / 'new.npz'}", tmp_path / "new", report=False)
    new = pq.read_table(tmp_path / "new" / "assignments").to_pandas()
    new_labels = new["id"].str[-3:].astype(int) // 20
    assert adjusted_rand_score(new_labels, new["cluster"]) == 1.0
    again = assign_new(run, f"npz:{tmp_path / 'blobs.npz'}", tmp_path / "again", report=False)
    assert again["accounting"]["assigned"] == 60
    same = pq.read_table(tmp_path / "again" / "assignments").to_pandas().set_index("id").loc[rows.index]
    assert (same["cluster"] == rows["cluster"]).all()  # the training rows keep their clusters

    # A sweep with two restarts per trial, in Ray Train workers (one value of k: each trial
    # costs two trainings).
    cfg = override_all(KMEANS.config_class(), {"data.spec": f"npz:{tmp_path / 'blobs.npz'}",
                                               "restarts.count": 2, "scaling.num_workers": 1})
    trials = run_sweep(KMEANS, cfg, {"model.n_clusters": [3]}, tmp_path / "sweep", sample_size=60)
    assert list(trials["k"]) == [3] and trials["stability"].iloc[0] == 1.0  # both restarts find the blobs
    best = json.loads((tmp_path / "sweep" / "metrics.json").read_text())
    assert best["job"] == "train_centres" and best["sweep"]["best"]["model.n_clusters"] == 3
    assert (tmp_path / "sweep" / "report" / "centres.png").is_file()
