"""Put new images into a finished run's clusters, without training.

:func:`assign_new` reads the run's own settings (``DIR/config.yaml``, or a sweep's
``best_config.yaml``) and points them at the new source, so the new images go through the
same decoding, tiling, backbone and feature standardisation (``DIR/feature_stats.npz``)
as the training images; the exported model (``DIR/checkpoint/``, weights only) assigns
them in Ray Data model actors (a GPU each with ``use_gpu``). The output folder has the
run's layout: ``assignments/`` (the same Parquet schema), ``rejected.parquet``,
``config.yaml``, ``metrics.json`` (accounting, and scores beside k-means on the new rows)
and ``report/index.html``.

A run with restarts assigns with every restart's model and combines them as the run did,
each restart's clusters matched to the combined ones as the run matched them (the
matching its consensus saved; without it, Hungarian against the run's final clusters on
its own rows): DAC averages the matched probabilities; DESOM votes, a tie going to the exported
restart (the run's own vote breaks ties by its consensus partition, which new rows do not
have). DAC's small-cluster merge is applied as the run applied it. Assigning
the training images again gives the run's clusters.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deimos_ray import __version__
from deimos_ray.assign import (
    dac_probability_columns,
    read_metadata,
    remap_clusters,
    write_assignments,
)
from deimos_ray.config import save_yaml, to_dict
from deimos_ray.consensus import match_clusters
from deimos_ray.data.prepare import NothingReadable, collect_features, prepare_data, write_rejected
from deimos_ray.data.preprocess import output_columns
from deimos_ray.errors import UsageError
from deimos_ray.files import write_json, write_staged_dir
from deimos_ray.metrics import format_table
from deimos_ray.report.page import NotAFinishedRun, run_config
from deimos_ray.restarts import read_aligned, read_dac_probabilities
from deimos_ray.runtime import init_ray
from deimos_ray.scoring import score_run


def check_run(run: Path) -> tuple[Any, Any, dict[str, Any]]:
    """(algorithm, config, metrics) of a run that can assign new images.

    Raises:
        UsageError: Not a finished run, no checkpoint, made by another version of the
            package, or trained on metadata features (new images have no such columns).
    """
    try:
        algorithm, cfg = run_config(run)
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
    return algorithm, cfg, json.loads((run / "metrics.json").read_text())


def assign_new(run_dir: str | Path, spec: str, out_dir: str | Path, use_gpu: bool = False,
               report: bool = True) -> dict[str, Any]:
    """Assign the images of ``spec`` with the finished run ``run_dir`` into ``out_dir``
    (module docstring) and return the metrics dict that ``metrics.json`` holds.

    Args:
        run_dir: A finished job's or sweep's folder.
        spec: The new source, as ``--data`` takes it.
        out_dir: A new (or empty) folder.
        use_gpu: One GPU per model actor and backbone replica.
        report: Draw ``out_dir/report/index.html``.

    Raises:
        UsageError: The run cannot assign (:func:`check_run`), ``out_dir`` is not empty,
            or no new image can be read (``rejected.parquet`` says why).
    """
    run = Path(run_dir).resolve()
    out = Path(out_dir).resolve()
    algorithm, run_cfg, run_metrics = check_run(run)
    if out == run or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise UsageError(f"--out: {out} exists and is not empty; name a new folder")
    # The run's preprocessing on the new source; all of it (the run's limit was for trials).
    cfg = dataclasses.replace(run_cfg, data=dataclasses.replace(run_cfg.data, spec=spec, limit=None))
    stats = None
    if (run / "feature_stats.npz").is_file():
        with np.load(run / "feature_stats.npz") as saved:
            stats = {name: saved[name] for name in saved.files}
    t0 = time.perf_counter()
    init_ray()
    try:
        data = prepare_data(cfg.data, cfg.features, out / "features", use_gpu,
                            extract=not algorithm.fine_tunes_backbone(cfg), feature_stats=stats)
    except NothingReadable as exc:
        out.mkdir(parents=True, exist_ok=True)
        write_rejected(exc.rejected, out / "rejected.parquet")
        raise UsageError(f"{exc} (every one in {out / 'rejected.parquet'})") from exc
    expected = _checkpoint_input_shape(run)
    if tuple(data.input_shape) != expected:
        raise UsageError(f"the new rows have shape {tuple(data.input_shape)}, the run's model takes {expected}")
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    write_rejected(data.rejected, out / "rejected.parquet")
    data_s = time.perf_counter() - t0

    t = time.perf_counter()
    to_assign = data.good.select_columns([*output_columns(data.good.columns()), "x"])
    metadata = {"job": algorithm.job, "config": to_dict(cfg), "assigned_with": str(run)}
    restarts = sorted((run / "restarts").glob("*/checkpoint"), key=lambda p: int(p.parent.name))
    if restarts:
        combine_restarts(algorithm.name, algorithm.n_clusters(cfg), run, restarts, to_assign, out, metadata,
                         use_gpu, run_metrics)
    else:
        write_assignments(to_assign, run / "checkpoint", out / "assignments", metadata, use_gpu=use_gpu)
    merged = {int(old): int(new) for old, new in run_metrics.get("small_clusters_merged", {}).items()}
    remap_clusters(out / "assignments", merged)  # DAC's merge of small clusters, as the run made it
    assignments = pd.read_parquet(out / "assignments")
    assign_s = time.perf_counter() - t

    from deimos_ray.job import account

    accounting = account(cfg, data, len(assignments))
    k = algorithm.n_clusters(cfg)
    ids, features = collect_features(data.good)
    scores = None
    if data.num_rows >= k:  # the k-means beside it needs k rows
        scores = score_run(assignments, ids, features, k, cfg.seed, cfg.metrics_sample, cfg.baseline_n_init,
                           data.has_labels, algorithm.model_name(cfg), None, ward=cfg.baseline_ward)
    metrics = {
        "job": algorithm.job,
        "assigned_with": str(run),
        "accounting": accounting,
        **({"scores": scores} if scores else {}),
        "representation": data.representation,
        "clusters_found": int(assignments["cluster"].nunique()),
        "timings_s": {"data_s": data_s, "assign_s": assign_s},
    }
    write_json(out / "metrics.json", metrics)
    print(f"[assign] {accounting['inputs']} inputs = {accounting['assigned']} assigned "
          f"+ {accounting['rejected']} rejected" + (f" ({len(assignments)} tiles)" if cfg.data.tile else ""))
    if scores:
        print(f"[assign] scores on the new rows (k={k}):\n{format_table(scores)}")
    if report:
        from deimos_ray.job import draw_report

        draw_report(out, "assign")
    print(f"[assign] outputs in {out}")
    return metrics


def _checkpoint_input_shape(run: Path) -> tuple[int, ...]:
    from deimos_ray.train.checkpoint import load_state

    return tuple(load_state(run / "checkpoint")["input_shape"])


def combine_restarts(name: str, k: int, run: Path, checkpoints: list[Path], rows: Any, out: Path,
                     metadata: dict[str, Any], use_gpu: bool, run_metrics: dict[str, Any]) -> None:
    """Assign ``rows`` with every restart's model into ``out/restarts/R/assignments`` and
    write their combination as ``out/assignments`` (module docstring)."""
    kept = _kept_restart(run_metrics)
    final = pq.read_table(run / "assignments", columns=["id", "cluster"]).to_pandas().set_index("id")["cluster"]
    saved = read_metadata(run / "assignments").get("consensus", {}).get("orders")
    parts, orders = [], []
    for i, checkpoint in enumerate(checkpoints):
        r = checkpoint.parent.name
        if saved is not None:  # the run's own matching of this restart's clusters
            orders.append(np.asarray(saved[i], dtype=np.int64))
        else:  # a run from before the matching was saved: match again on the run's rows
            mine = pq.read_table(run / "restarts" / r / "assignments", columns=["id", "cluster"]).to_pandas()
            orders.append(match_clusters(mine["cluster"].to_numpy(), final.loc[mine["id"]].to_numpy(), k))
        parts.append(write_assignments(rows, checkpoint, out / "restarts" / r / "assignments", metadata,
                                       use_gpu=use_gpu))
    if name == "dac":
        table, probabilities = read_dac_probabilities(parts)  # rows in the first restart's order
        mean = np.zeros((table.num_rows, k))
        for p, order in zip(probabilities, orders, strict=True):
            mean[:, order] += p / len(parts)
        for column, values in dac_probability_columns(torch.from_numpy(mean)).items():
            table = table.set_column(table.schema.get_field_index(column), column, values)
    else:  # DESOM, the other algorithm with restarts: a vote; its map columns the exported restart's
        table, labelings = read_aligned(parts, "cluster", base=kept)
        matched = [order[labels] for labels, order in zip(labelings, orders, strict=True)]
        rows = np.arange(table.num_rows)
        votes = np.zeros((table.num_rows, k), dtype=np.int64)
        for labels in matched:
            votes[rows, labels] += 1
        top = votes.max(axis=1)
        surest = matched[kept]
        cluster = np.where(votes[rows, surest] == top, surest, votes.argmax(axis=1))
        table = table.set_column(table.schema.get_field_index("cluster"), "cluster", pa.array(cluster, pa.int32()))
        share = pa.array(top / len(matched), pa.float32())  # as the run's: the restarts that agree
        table = table.append_column("confidence", share)

    def write(staging: Path) -> None:
        staging.mkdir(parents=True)
        pq.write_table(table, staging / "part-00000.parquet")

    write_staged_dir(out / "assignments", write)
    shutil.rmtree(out / "restarts")  # each restart's rows are in the combination


def _kept_restart(run_metrics: dict[str, Any]) -> int:
    for record in run_metrics.get("restarts", []):
        if record.get("kept"):
            return int(record["restart"])
    return 0
