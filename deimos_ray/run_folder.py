"""The run folder (``DIR`` = ``--out``): the one module that opens, finishes and reads it,
for training jobs, sweeps and the assignment of new images alike.

- :func:`prepare_rows` reads the source into ``DIR/features`` (the feature cache); a
  source with no readable input is recorded in ``DIR/rejected.parquet`` (when ``DIR``
  holds no other run) and refused.
- :func:`open_run` checks that ``DIR`` holds no other training (:mod:`deimos_ray.identity`),
  then writes ``identity.json``, ``config.yaml``, ``rejected.parquet`` (and
  ``feature_stats.npz``, ``reducer.pkl``) and removes an earlier run's ``metrics.json``
  and partial files.
- :func:`finish_run` checks the accounting (inputs = assigned + rejected), scores the
  rows beside the baselines, writes ``metrics.json`` (written last: it marks a finished
  run) and prints the accounting and the score table.
- :func:`read_run` and :func:`check_assignable` read a finished folder back: its
  algorithm and config (``best_config.yaml`` for a sweep), and whether it can assign new
  images.

Every file appears complete or not at all (:mod:`deimos_ray.files`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from deimos_ray import __version__
from deimos_ray.algorithms import algorithm_for_job
from deimos_ray.algorithms.base import Algorithm
from deimos_ray.assignments import read_metadata
from deimos_ray.config import JobConfig, UmapConfig
from deimos_ray.config_io import from_dict, load_yaml, save_yaml
from deimos_ray.data.prepare import (
    NothingReadable,
    PreparedData,
    collect_features,
    prepare_data,
    write_rejected,
)
from deimos_ray.data.reduce import REDUCER_FILE, save_reducer
from deimos_ray.errors import UsageError
from deimos_ray.files import remove_partials, save_npz, write_json
from deimos_ray.identity import IDENTITY_FILE, check_identity, clear_run, write_identity
from deimos_ray.metrics import format_table
from deimos_ray.scoring import score_run

METRICS_FILE = "metrics.json"


class NotAFinishedRun(UsageError):
    """The folder holds no finished run (no ``metrics.json`` or no ``assignments/``)."""


def prepare_rows(out: Path, algorithm: Algorithm, cfg: JobConfig, use_gpu: bool = False,
                 feature_stats: dict[str, Any] | None = None, reducer: Any = None) -> PreparedData:
    """The rows of ``cfg.data`` as ``algorithm`` takes them (decoded pixels, or cached
    backbone features; :func:`deimos_ray.data.prepare.prepare_data`).

    Raises:
        UsageError: No input could be read; every one is then in ``out/rejected.parquet``
            unless ``out`` holds another run, which is left as it is.
    """
    try:
        return prepare_data(cfg.data, cfg.features, out / "features", use_gpu,
                            extract=not algorithm.fine_tunes_backbone(cfg), feature_stats=feature_stats,
                            umap=cfg.umap, seed=cfg.seed, reducer=reducer)
    except NothingReadable as exc:
        if not (out / IDENTITY_FILE).exists() and not (out / "ray").exists():  # no other run's folder
            out.mkdir(parents=True, exist_ok=True)
            write_rejected(exc.rejected, out / "rejected.parquet")
            raise UsageError(f"{exc} (every one in {out / 'rejected.parquet'})") from exc
        raise


def open_run(out: Path, identity: dict[str, Any] | None, cfg: JobConfig, data: PreparedData,
             overwrite: bool = False) -> None:
    """Make ``out`` this run's folder, once every check has passed.

    Args:
        out: The folder.
        identity: What the run trains (:mod:`deimos_ray.identity`), checked against the
            one stored there; None for a folder that trains nothing (new images).
        cfg: The run's config, written as ``config.yaml``.
        data: Its rows; the rejected ones are written as ``rejected.parquet``, the
            statistics the features were standardised with as ``feature_stats.npz``
            and the UMAP model of ``--reduce umap`` as ``reducer.pkl``.
        overwrite: Replace the run that is there (``--overwrite``).

    Raises:
        UsageError: ``out`` holds another training (:func:`deimos_ray.identity.check_identity`).
    """
    if identity is not None:
        check_identity(out, identity, cfg, overwrite)
        if overwrite:
            clear_run(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_partials(out)
    # An earlier run's scores must not sit beside this run's config while it trains (or
    # after it fails): metrics.json appears again only when this run has finished.
    (out / METRICS_FILE).unlink(missing_ok=True)
    if identity is not None:
        write_identity(out, identity)
    save_yaml(cfg, out / "config.yaml")
    write_rejected(data.rejected, out / "rejected.parquet")
    if data.feature_stats is not None:  # new images must be standardised the same way
        save_npz(out / "feature_stats.npz", **data.feature_stats)
    if data.reducer is not None:  # and embedded by the same UMAP model
        save_reducer(data.reducer, out / REDUCER_FILE)


def account(cfg: JobConfig, data: PreparedData, assigned_rows: int) -> dict[str, int]:
    """Check that every input is assigned or rejected and return the counts.

    Raises:
        RuntimeError: The assignments lost or added rows, or inputs != assigned + rejected.
    """
    n_rows = data.num_rows
    if assigned_rows != n_rows:
        raise RuntimeError(f"{n_rows} readable rows but {assigned_rows} assignment rows")
    accounting = {"inputs": data.num_inputs, "assigned": data.good_inputs, "rejected": len(data.rejected)}
    if cfg.data.tile:
        accounting["tiles"] = n_rows
    if data.missing:
        accounting["listed_but_missing"] = data.missing
    if accounting["assigned"] + accounting["rejected"] != accounting["inputs"]:
        raise RuntimeError(f"inputs != assigned + rejected: {accounting}")
    return accounting


def score_rows(algorithm: Algorithm, cfg: JobConfig, data: PreparedData, assignments: pd.DataFrame,
               labels_seen: Any = None) -> dict[str, dict[str, float]]:
    """The score table of the assigned rows: the model beside k-means, Ward and UMAP then
    Ward on the same input (:func:`deimos_ray.scoring.score_run`)."""
    ids, features = collect_features(data.good)
    return score_run(assignments, ids, features, algorithm.n_clusters(cfg), cfg.seed, cfg.metrics_sample,
                     cfg.baseline_n_init, data.has_labels, algorithm.model_name(cfg), labels_seen,
                     ward=cfg.baseline_ward, umap=umap_baseline(cfg))


def umap_baseline(cfg: JobConfig) -> UmapConfig | None:
    """UMAP's settings when the score table has the ``umap_ward`` baseline: asked for,
    and the input not already UMAP's embedding (``--reduce umap``), where Ward's column
    is UMAP then Ward."""
    return cfg.umap if cfg.baseline_umap and cfg.features.reduce == "none" else None


def finish_run(out: Path, metrics: dict[str, Any], prefix: str, k: int, scores_title: str = "scores") -> None:
    """Write ``out/metrics.json`` (the mark of a finished run) and print its accounting
    and score table."""
    write_json(out / METRICS_FILE, metrics)
    accounting = metrics["accounting"]
    tiles = f" ({accounting['tiles']} tiles)" if "tiles" in accounting else ""
    print(f"\n[{prefix}] accounting: {accounting['inputs']} inputs = {accounting['assigned']} assigned "
          f"+ {accounting['rejected']} rejected{tiles}")
    if metrics.get("scores"):
        print(f"[{prefix}] {scores_title} (k={k}):\n{format_table(metrics['scores'])}")
    print(f"\n[{prefix}] outputs in {out}:\n  assignments/  rejected.parquet  metrics.json  config.yaml"
          + ("  checkpoint/" if (out / "checkpoint").is_dir() else ""))


def read_run(run: Path) -> tuple[Algorithm, JobConfig]:
    """(algorithm, job config) of a finished run folder: a sweep's ``best_config.yaml``
    when there is one (the config of the clustering it adopted), else ``config.yaml``.

    Raises:
        NotAFinishedRun: ``metrics.json``, ``assignments/`` or the config is missing, or
            the run's job is not a known algorithm's.
    """
    if not run.exists():
        raise NotAFinishedRun(f"{run} does not exist")
    metrics_path = run / METRICS_FILE
    if not metrics_path.is_file() or not (run / "assignments").is_dir():
        raise NotAFinishedRun(f"{run} is not a finished run (it has no metrics.json and assignments/)")
    job = json.loads(metrics_path.read_text()).get("job")
    algorithm = algorithm_for_job(job)
    if algorithm is None:
        raise NotAFinishedRun(f"{metrics_path} names no known job ({job!r})")
    path = run / "best_config.yaml"
    if not path.is_file():
        path = run / "config.yaml"
    if not path.is_file():
        raise NotAFinishedRun(f"{run} has no config.yaml")
    return algorithm, from_dict(algorithm.config_class, load_yaml(path))


def check_assignable(run: Path) -> tuple[Algorithm, JobConfig, dict[str, Any]]:
    """(algorithm, config, metrics) of a run that can assign new images.

    Raises:
        UsageError: Not a finished run, no checkpoint, made by another version of the
            package, or trained on metadata features (new images have no such columns).
    """
    try:
        algorithm, cfg = read_run(run)
    except NotAFinishedRun as exc:
        raise UsageError(f"--run: {exc}") from exc
    if not (run / "checkpoint").is_dir():
        raise UsageError(f"--run: {run} is not a finished run (it has no checkpoint/)")
    version = read_metadata(run / "assignments").get("package_version")
    if version != __version__:
        raise UsageError(f"--run: {run} was made by deimos_ray {version}, this is {__version__}; "
                         f"assign with that version, or train again")
    if cfg.data.metadata_features:
        raise UsageError("--run: the run trained on metadata features (data.metadata_features); "
                         "assigning new images to it is not supported")
    return algorithm, cfg, json.loads((run / METRICS_FILE).read_text())
