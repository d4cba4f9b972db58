"""The run folder: a rerun resumes only the same training on the same rows, --overwrite
replaces a run, every file appears whole, a crash at a rename leaves a folder the next run
finishes, and errors a user can act on come as one line before the folder changes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from deimos_ray.algorithms import ALGORITHMS
from deimos_ray.config_io import override_all
from deimos_ray.errors import UsageError
from deimos_ray.files import check_writable, write_text
from deimos_ray.identity import IDENTITY_FILE, check_identity, settings_identity, write_identity
from tests import crash_at
from tests.helpers import ROOT, load_job, write_bad_files, write_image_folder

DEC = ALGORITHMS["dec"]
QUICK = ["--smoke-test", "--limit", "40", "--num-workers", "0", "--k", "3"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` (but the feature cache) with its size and mtime."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and "features" not in p.parts}


def test_the_identity_check_names_what_differs(tmp_path):
    cfg = override_all(DEC.config_class(), {"features.backbone": "efficientnet_lite0"})
    out = tmp_path / "run"
    out.mkdir()
    stored = settings_identity("train_dec", cfg, (1280,))
    stored["data"].update(rows=100, ids_sha256="abc")
    del stored["model"]["tol"]  # written by a version without this field: counts as its default
    write_identity(out, stored)

    same = settings_identity("train_dec", override_all(cfg, {"features.cache": str(tmp_path)}), (1280,))
    check_identity(out, same, cfg)  # settings only (before the rows are known), cache folder aside
    check_identity(out, {**same, "data": {**same["data"], "rows": 100, "ids_sha256": "abc"}}, cfg)
    with pytest.raises(UsageError, match=r"features.normalize \('standardize' then, 'l2' now\)"):
        check_identity(out, settings_identity("train_dec", override_all(cfg, {"features.normalize": "l2"})), cfg)
    with pytest.raises(UsageError, match=r"data.rows \(100 then, 90 now\).*--overwrite"):
        check_identity(out, {**same, "data": {**same["data"], "rows": 90, "ids_sha256": "abc"}}, cfg)
    check_identity(out, settings_identity("train_dec", DEC.config_class()), cfg, overwrite=True)

    (out / IDENTITY_FILE).unlink()
    (out / "ray").mkdir()  # a training from a version that wrote no identity
    with pytest.raises(UsageError, match="cannot check"):
        check_identity(out, same, cfg)


def test_a_rerun_on_other_rows_or_another_seed_is_refused_before_the_folder_changes(ray_session, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    write_image_folder(images, n_good=12)
    job = load_job("train_dec")
    parser = job.get_args_parser()
    out = tmp_path / "run"
    argv = ["--data", str(images), "--image-size", "8", *QUICK, "--out", str(out)]
    assert job.main(parser.parse_args(argv)) == 0
    before = snapshot(out)
    assert json.loads((out / IDENTITY_FILE).read_text())["data"]["rows"] == 12

    # The same settings on a folder that has gained two images: refused once the rows are known.
    shutil.copy(images / "a" / "img1.jpg", images / "new1.jpg")
    shutil.copy(images / "a" / "img5.jpg", images / "new2.jpg")
    assert job.main(parser.parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert "data.rows (12 then, 14 now)" in err and "data.ids_sha256" in err and "--overwrite" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    # Another setting is refused before Ray reads anything.
    assert job.main(parser.parse_args([*argv, "--seed", "1"])) == 2
    assert "seed (0 then, 1 now)" in capsys.readouterr().err
    assert snapshot(out) == before

    assert job.main(parser.parse_args([*argv, "--overwrite"])) == 0
    assert json.loads((out / IDENTITY_FILE).read_text())["data"]["rows"] == 14
    assert pq.read_table(out / "assignments").num_rows == 14


def test_a_crash_at_any_rename_leaves_whole_files_and_the_next_run_finishes(ray_session, tmp_path):
    job = load_job("train_dec")
    out = tmp_path / "run"
    argv = [*QUICK, "--out", str(out)]
    assert job.main(job.get_args_parser().parse_args(argv)) == 0
    first = pq.read_table(out / "assignments").to_pandas()

    # The crashing runs join this session's Ray instead of starting their own (10 s each).
    address = ray_session.get_runtime_context().gcs_address
    for point in ("checkpoint", "assignments", "metrics.json"):
        env = {**os.environ, "RAY_ADDRESS": address}
        done = subprocess.run([sys.executable, str(ROOT / "tests" / "crash_at.py"), point,
                               str(ROOT / "jobs" / "train_dec.py"), *argv], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == crash_at.EXIT_CODE, done.stderr[-2000:]
        # The run is not marked finished, and every file there reads whole.
        assert not (out / "metrics.json").exists()
        assert json.loads((out / IDENTITY_FILE).read_text())["seed"] == 0
        assert pq.read_table(out / "assignments").num_rows == 40
        assert pq.read_table(out / "rejected.parquet").num_rows == 0
        assert (out / "checkpoint" / "state.pt").is_file()
        assert [p.name for p in out.iterdir() if p.name.startswith(".")], "the crash left its partial file"

    assert job.main(job.get_args_parser().parse_args(argv)) == 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    again = pq.read_table(out / "assignments").to_pandas()
    assert (again["id"] == first["id"]).all() and (again["cluster"] == first["cluster"]).all()
    assert json.loads((out / "metrics.json").read_text())["accounting"]["assigned"] == 40


def test_driver_checkpoints_stay_in_the_run_and_a_corrupt_one_falls_back(ray_session, tmp_path):
    job = load_job("train_dec")
    out = tmp_path / "run"
    argv = [*QUICK, "--out", str(out)]
    temporary = set(Path(tempfile.gettempdir()).glob("deimos_ray_ckpt_*"))
    assert job.main(job.get_args_parser().parse_args(argv)) == 0
    assert set(Path(tempfile.gettempdir()).glob("deimos_ray_ckpt_*")) == temporary
    kept = sorted((out / "ray" / "train" / "driver").glob("checkpoint_*"))
    assert len(kept) == 2  # the last two of the run's reports

    # A torn newest checkpoint: the rerun names it and resumes from the one before.
    (kept[-1] / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match=f"checkpoint {kept[-1] / 'state.pt'} cannot be read"):
        assert job.main(job.get_args_parser().parse_args(argv)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["resumed_at_epoch"] is not None
    assert metrics["accounting"]["assigned"] == 40


def test_a_written_file_replaces_the_old_one_whole(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "old")
    write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_an_all_bad_folder_writes_its_reasons_and_stops(ray_session, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    write_bad_files(images)
    job = load_job("train_dec")
    out = tmp_path / "run"
    assert job.main(job.get_args_parser().parse_args(["--data", str(images), "--out", str(out),
                                                      "--num-workers", "0", "--k", "2"])) == 2
    err = capsys.readouterr().err
    assert "none of the 3 inputs" in err and "most common reasons" in err and "rejected.parquet" in err
    rejected = pq.read_table(out / "rejected.parquet").to_pandas()
    assert len(rejected) == 3 and rejected["reason"].str.len().gt(0).all()
    assert not (out / IDENTITY_FILE).exists()


def test_more_clusters_than_readable_rows_stops_before_training(ray_session, tmp_path, capsys):
    # 7 files are enough for k = 5 before decoding (deimos_ray.preflight); only 4 can be read.
    images = tmp_path / "images"
    images.mkdir()
    write_image_folder(images, n_good=4)
    write_bad_files(images)
    job = load_job("train_dec")
    out = tmp_path / "run"
    argv = ["--data", str(images), "--image-size", "8", "--num-workers", "0", "--k", "5", "--out", str(out)]
    assert job.main(job.get_args_parser().parse_args(argv)) == 2
    assert "4 readable rows cannot make 5 clusters" in capsys.readouterr().err
    assert not (out / IDENTITY_FILE).exists()


def test_config_and_folder_errors_are_one_line_before_any_work(tmp_path, capsys):
    job = load_job("train_dec")
    parser = job.get_args_parser()
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  epochs: [1, 2\n")
    cases = [
        (["--config", str(bad_yaml)], f"config file {bad_yaml}, line 3 is not valid YAML"),
        (["--set", "model.epochs=abc"], "model.epochs must be an integer, got 'abc'"),
        (["--set", "data.max_pixels=true"], "data.max_pixels must be an integer, got True"),
        (["--out", str(bad_yaml / "run")], f"{bad_yaml} is a file, not a folder"),
    ]
    for argv, message in cases:
        assert job.main(parser.parse_args([*argv, "--smoke-test"])) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    # YAML reads 1e-3 as a string; a float field takes it as the number it means.
    assert job.build_config(parser.parse_args(["--set", "model.lr=1e-3"])).model.lr == 0.001
    with pytest.raises(UsageError, match="MiB free on its file system"):
        check_writable(tmp_path / "run", min_free=2**62)
