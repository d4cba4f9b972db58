"""jobs/train_dec.py end to end on tiny data: the run directory and the accounting."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq

from deimos_ray import commands
from deimos_ray.assignments import read_metadata
from tests.helpers import ROOT, load_job, write_bad_files, write_image_folder


def test_train_dec_end_to_end_on_a_folder_with_bad_files(ray_session, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    good = write_image_folder(images, n_good=24)
    write_bad_files(images)
    # A catalogue covering only some images: the others get nulls, not errors.
    catalogue = tmp_path / "catalogue.csv"
    catalogue.write_text("name,site\n" + "".join(f"{p.name},site{i % 2}\n" for i, p in enumerate(good[:10])))
    out = tmp_path / "run"
    job = load_job("train_dec")
    args = job.get_args_parser().parse_args(
        ["--data", str(images), "--out", str(out), "--smoke-test", "--k", "3", "--image-size", "8",
         "--metadata", str(catalogue), "--metadata-key", "name"]
    )
    assert job.main(args) == 0

    for name in ("config.yaml", "metrics.json", "rejected.parquet", "checkpoint/state.pt"):
        assert (out / name).exists(), name
    files = sorted((out / "assignments").glob("*.parquet"))
    assert len(files) == 1  # few files, not one per block
    table = pq.read_table(out / "assignments")
    assert table.num_rows == len(good)
    assert {"id", "cluster", "confidence", "label", "embedding", "path", "group"} <= set(table.column_names)
    assert len(set(table.column("id").to_pylist())) == len(good)
    assert set(table.column("label").to_pylist()) == {-1}
    assert all(0 < c <= 1 for c in table.column("confidence").to_pylist())
    sites = table.column("site").to_pylist()
    assert sites.count(None) == len(good) - 10 and {"site0", "site1"} <= set(sites)

    rejected = pq.read_table(out / "rejected.parquet")
    assert rejected.column_names == ["id", "path", "reason", "stage"] and rejected.num_rows == 3

    # The export: a CSV row per assigned image, and a folder per cluster linking the files.
    assert commands.main(["export", str(out), "--csv", str(tmp_path / "c.csv"), "--folders",
                          str(tmp_path / "by_cluster")]) == 0
    rows = pd.read_csv(tmp_path / "c.csv")
    assert list(rows.columns[:4]) == ["id", "path", "cluster", "confidence"] and len(rows) == len(good)
    assert "embedding" not in rows and rows["cluster"].value_counts().is_monotonic_decreasing
    links = sorted((tmp_path / "by_cluster").glob("cluster_*/*"))
    assert len(links) == len(good) and all(link.is_symlink() and link.resolve().is_file() for link in links)
    for link in links:
        assert rows.loc[rows["path"] == str(link.resolve()), "cluster"].item() == int(link.parent.name[8:])

    metrics = json.loads((out / "metrics.json").read_text())
    acc = metrics["accounting"]
    assert acc["inputs"] == acc["assigned"] + acc["rejected"] == len(good) + 3
    assert set(metrics["scores"]) == {"dec", "kmeans", "ward"}
    assert "silhouette" in metrics["scores"]["kmeans"] and "accuracy" not in metrics["scores"]["dec"]

    meta = read_metadata(out / "assignments")
    assert meta["config"]["model"]["n_clusters"] == 3 and meta["job"] == "train_dec"
    assert not [p for p in out.iterdir() if p.name.startswith(".assignments")]  # no staging left


def test_labelled_source_gets_external_scores(ray_session, tmp_path):
    job = load_job("train_dec")
    out = tmp_path / "run"
    args = job.get_args_parser().parse_args(["--out", str(out), "--smoke-test", "--num-workers", "0",
                                             "--set", "baseline_umap=true"])  # off in smoke tests by default
    assert job.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accounting"] == {"inputs": 300, "assigned": 300, "rejected": 0}
    assert metrics["score_rows"]["umap_ward_fit"] == 300
    for method in ("dec", "kmeans", "ward", "umap_ward"):
        assert 0.0 <= metrics["scores"][method]["accuracy"] <= 1.0
    table = pq.read_table(out / "assignments")
    assert sorted(set(table.column("label").to_pylist())) == list(range(10))


def test_hirise_fixture_end_to_end_keeps_metadata_and_reports_missing(ray_session, tmp_path):
    job = load_job("train_dec")
    out = tmp_path / "run"
    fixture = ROOT / "tests" / "fixtures" / "hirise"
    args = job.get_args_parser().parse_args(
        ["--data", str(fixture), "--out", str(out), "--smoke-test", "--num-workers", "0",
         "--k", "2", "--image-size", "16"]
    )
    assert job.main(args) == 0
    table = pq.read_table(out / "assignments").to_pandas()
    assert len(table) == 5 and {"class_name", "augmentation", "set"} <= set(table.columns)
    assert set(table.loc[table["augmentation"] != "", "group"]) == {"ESP_016631_2535_RED-0021.jpg"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accounting"] == {"inputs": 5, "assigned": 5, "rejected": 0, "listed_but_missing": 4}


def test_a_run_stopped_by_an_unreadable_input_leaves_the_folder_as_it_was(ray_session, tmp_path, capsys):
    # on_error=fail stops while the data are read, before any check has passed: nothing
    # in the folder may change, so an earlier run's files never sit beside this run's config.
    images = tmp_path / "images"
    images.mkdir()
    write_image_folder(images, n_good=4)
    (images / "empty.png").write_bytes(b"")
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"scores": {}}')
    job = load_job("train_dec")
    args = job.get_args_parser().parse_args(
        ["--data", str(images), "--out", str(out), "--smoke-test", "--on-error", "fail", "--num-workers", "0",
         "--k", "2"])
    assert job.main(args) == 2
    assert "empty.png" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert (out / "metrics.json").read_text() == '{"scores": {}}'
