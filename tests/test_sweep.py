"""Sweeps: the label-free objective, and a small sweep end to end through jobs/tune_sweep.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from deimos_ray.cli import INTERRUPTED
from deimos_ray.config import DataConfig
from deimos_ray.config_io import load_yaml
from deimos_ray.data.prepare import prepare_data
from deimos_ray.sweep.objective import objective_scores, reference_space
from deimos_ray.sweep.space import search_space, searcher
from tests.helpers import ROOT, load_job, smoke_may_collapse, write_bad_files, write_image_folder

POINTS = np.array([[0.0], [1.0], [10.0], [11.0]])


def test_the_objective_is_silhouette_less_the_share_of_collapsed_clusters():
    good = objective_scores(POINTS, np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), k=2)
    # By hand: a = 1 for every point; b = 10.5 for the outer points, 9.5 for the inner.
    silhouette = ((10.5 - 1) / 10.5 + (9.5 - 1) / 9.5) / 2
    assert good["silhouette"] == pytest.approx(silhouette)
    assert good["objective"] == pytest.approx(silhouette) and good["collapsed"] == 0

    # Asked for 3, found 2: a third of the clusters is missing.
    short = objective_scores(POINTS, np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), k=3)
    assert short["objective"] == pytest.approx(silhouette - 1 / 3) and short["collapsed"] == 1

    # A mixed clustering of the same points scores worse than the good one.
    mixed = objective_scores(POINTS, np.array([0, 1, 0, 1]), np.array([0, 1, 0, 1]), k=2)
    assert mixed["objective"] < good["objective"]

    # A cluster of one row in 400 is tiny (under 0.5 %); one of 40 in 400 is not, however
    # uneven: natural imbalance is not punished.
    rows = np.r_[np.zeros(399, int), 1]
    assert objective_scores(POINTS, np.array([0, 0, 1, 1]), rows, k=2)["collapsed"] == 1
    uneven = np.r_[np.zeros(360, int), np.ones(40, int)]
    assert objective_scores(POINTS, np.array([0, 0, 1, 1]), uneven, k=2)["collapsed"] == 0


def test_every_trial_is_scored_on_one_sample_in_one_space(ray_session):
    data = prepare_data(DataConfig(spec="digits", limit=120))
    ids, x, text = reference_space(data, sample_size=50, seed=0)
    again_ids, again_x, _ = reference_space(data, sample_size=50, seed=0)
    assert len(ids) == 50 and x.shape == (50, 49) and "PCA of the pixels" in text
    np.testing.assert_array_equal(ids, again_ids)
    np.testing.assert_allclose(x, again_x)


def test_search_spaces_are_checked():
    space = search_space({"model.n_clusters": [3, 4]}, "grid")
    assert space["model.n_clusters"] == {"grid_search": [3, 4]}
    assert search_space({"model.n_clusters": [3, 4]}, "optuna")["model.n_clusters"].categories == [3, 4]
    assert searcher("grid", seed=0) is None
    optuna = searcher("optuna", seed=0)
    assert (optuna.metric, optuna.mode) == ("objective", "max")
    with pytest.raises(ValueError, match="search must be"):
        search_space({"model.n_clusters": [3]}, "bayes")
    with pytest.raises(ValueError, match="at least one key"):
        search_space({}, "grid")


def finished_trials(state_dir: Path) -> int:
    """Trials that Tune's saved experiment state (written every 10 s or so) records as finished."""
    counts = [0]
    for path in state_dir.glob("experiment_state-*.json"):
        try:
            trials = json.loads(path.read_text())["trial_data"]
        except (OSError, ValueError, KeyError):
            continue  # being written
        counts.append(sum(json.loads(state)["status"] == "TERMINATED" for state, _ in trials))
    return max(counts)


@pytest.mark.slow
@smoke_may_collapse
def test_a_terminated_optuna_sweep_resumes_keeping_its_finished_trial_and_ends_in_one_clustering(
        ray_session, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    good = write_image_folder(images, n_good=30)
    write_bad_files(images)
    out = tmp_path / "sweep"
    job = load_job("tune_sweep")
    # Optuna draws k for two trials; the rerun restores its searcher with the sweep.
    argv = ["--algorithm", "dec", "--data", str(images), "--image-size", "8", "--smoke-test",
            "--k", "2", "3", "--search", "optuna", "--samples", "2", "--out", str(out)]

    # The sweep's driver is stopped by SIGTERM once Tune has saved one finished trial (it
    # joins this session's Ray, whose workers outlive it): one line, exit status 143 ...
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "tune_sweep.py"), *argv], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while finished_trials(out / "tune" / "sweep") < 1 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already, as it should be
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    assert driver.returncode == 143, err[-3000:]
    assert err.splitlines()[-1] == INTERRUPTED
    assert finished_trials(out / "tune" / "sweep") == 1, "the sweep was not stopped between its two trials"
    finished = {p: os.stat(p).st_mtime_ns for p in out.glob("trials/*/metrics.json")}
    assert len(finished) == 1 and not (out / "trials.parquet").exists()

    # ... and the rerun restores it: the finished trial is kept, not trained again.
    assert job.main(job.get_args_parser().parse_args(argv)) == 0
    assert {p: os.stat(p).st_mtime_ns for p in finished} == finished
    assert len(list(out.glob("trials/*/metrics.json"))) == 2

    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and set(trials["model.n_clusters"]) <= {2, 3} and trials["objective"].notna().all()
    assert (out / "score_vs_k.png").stat().st_size > 0
    best = trials.loc[trials["objective"].idxmax()]
    assert load_yaml(out / "best_config.yaml")["model"]["n_clusters"] == best["model.n_clusters"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sweep"]["best"]["model.n_clusters"] == best["model.n_clusters"]
    assert metrics["accounting"] == {"inputs": len(good) + 3, "assigned": len(good), "rejected": 3}
    rows = pq.read_table(out / "assignments").to_pandas()
    assert len(rows) == len(good) and rows["cluster"].nunique() <= best["model.n_clusters"]
    chosen = pd.read_parquet(best["trial_dir"] + "/assignments").set_index("id")["cluster"]
    assert (rows.set_index("id")["cluster"] == chosen.loc[rows["id"]]).all()  # the trial's own rows
    assert len(pd.read_parquet(out / "rejected.parquet")) == 3
    page = (out / "report" / "index.html").read_text()
    assert "score_vs_k.png" in page and (out / "report" / "score_vs_k.png").is_file()


@pytest.mark.slow
def test_asha_stops_a_trailing_trial_and_the_next_trial_still_gets_workers(ray_session, tmp_path):
    out = tmp_path / "sweep"
    # Reduction factor 100: at the first rung a trial goes on only if it leads every trial
    # before it there; one trial at a time, in the order of k.
    argv = ["--algorithm", "dec", "--smoke-test", "--limit", "200", "--k", "2", "3", "4", "--scheduler", "asha",
            "--grace-period", "1", "--reduction-factor", "100", "--out", str(out)]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    # A process of its own: a stopped trial that kept its Ray Train workers (the hazard of
    # ray-project/ray#54305) would leave the next one waiting for good, and the timeout
    # fails the test instead of hanging it.
    done = subprocess.run([sys.executable, str(ROOT / "jobs" / "tune_sweep.py"), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = pd.read_parquet(out / "trials.parquet").sort_values("trial_id").reset_index(drop=True)
    assert trials.loc[0, "status"] == "finished"  # the first trial leads at every rung it reaches
    stopped = trials.index[trials["status"] == "stopped early"].tolist()
    # A trial before the last was stopped, and every trial has its row: the one after the
    # stopped trial was given workers and trained.
    assert stopped and stopped[0] < 2, trials[["model.n_clusters", "status", "progress_silhouette"]]
    assert trials["model.n_clusters"].tolist() == [2, 3, 4]
    # Stopped at the first rung, after one progress report, with no clustering of its own.
    assert (trials.loc[stopped, "progress_reports"] == 1).all()
    assert not any((out / "trials" / trials.loc[i, "trial_id"] / "assignments").exists() for i in stopped)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sweep"]["stopped_early"] == len(stopped) and metrics["sweep"]["scheduler"] == "asha"
    assert metrics["sweep"]["best"]["model.n_clusters"] in trials.loc[trials["status"] == "finished",
                                                                      "model.n_clusters"].tolist()
    assert "stopped early by ASHA" in done.stdout


def test_bad_sweep_settings_fail_before_any_work(tmp_path, capsys):
    job = load_job("tune_sweep")
    args = job.get_args_parser().parse_args(["--algorithm", "dec", "--grid", "model.lr", "--out", str(tmp_path)])
    assert job.main(args) == 2
    assert "KEY=V1,V2" in capsys.readouterr().err
    args = job.get_args_parser().parse_args(["--algorithm", "dec", "--k", "1", "3", "--out", str(tmp_path)])
    assert job.main(args) == 2
    assert "--k: a sweep compares k >= 2" in capsys.readouterr().err
    args = job.get_args_parser().parse_args(["--algorithm", "dec", "--k", "3", "--num-workers", "0",
                                             "--out", str(tmp_path)])
    assert job.main(args) == 2
    assert "--num-workers must be >= 1" in capsys.readouterr().err
    args = job.get_args_parser().parse_args(["--algorithm", "dec", "--k", "2", "3", "--search", "optuna",
                                             "--scheduler", "asha", "--out", str(tmp_path)])
    assert job.main(args) == 2
    assert "use --scheduler fifo with it" in capsys.readouterr().err
