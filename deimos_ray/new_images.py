"""Put new images into a finished run's clusters, without training.

:func:`assign_new` reads the run's own settings (``DIR/config.yaml``, or a sweep's
``best_config.yaml``) and points them at the new source, so the new images go through the
same decoding, tiling, backbone, feature standardisation (``DIR/feature_stats.npz``) and
UMAP embedding (``DIR/reducer.pkl``) as the training images; the exported model (``DIR/checkpoint/``, weights only) assigns
them in Ray Data model actors (a GPU each with ``use_gpu``). The output folder has the
run's layout (:mod:`deimos_ray.run_folder`): ``assignments/`` (the same Parquet schema),
``rejected.parquet``, ``config.yaml``, ``metrics.json`` (accounting, and scores beside
k-means on the new rows) and ``report/index.html``.

A run with restarts assigns with every restart's model and combines them with the
algorithm's own ``combine``, each restart's clusters matched to the combined ones as the
run matched them (the matching its consensus saved; without it, Hungarian against the
run's final clusters on its own rows). The algorithm's post-processing is applied as the
run applied it (``Algorithm.after_assign_new``: DAC's merge of small clusters).
Assigning the training images again gives the run's clusters.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from deimos_ray.algorithms.base import Algorithm
from deimos_ray.assignments import read_metadata, write_assignments
from deimos_ray.config_io import to_dict
from deimos_ray.consensus import match_clusters
from deimos_ray.data.preprocess import output_columns
from deimos_ray.data.reduce import REDUCER_FILE, load_reducer
from deimos_ray.errors import UsageError
from deimos_ray.preflight import check_inputs
from deimos_ray.report.input_map import write_input_map
from deimos_ray.report.page import draw_report
from deimos_ray.run_folder import (
    account,
    check_assignable,
    finish_run,
    open_run,
    prepare_rows,
    score_rows,
    umap_baseline,
)
from deimos_ray.runtime import init_ray
from deimos_ray.scoring import sample_sizes
from deimos_ray.train.checkpoint import load_state


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
        UsageError: The run cannot assign (:func:`deimos_ray.run_folder.check_assignable`),
            ``out_dir`` is not empty,
            or no new image can be read (``rejected.parquet`` says why).
    """
    run = Path(run_dir).resolve()
    out = Path(out_dir).resolve()
    algorithm, run_cfg, run_metrics = check_assignable(run)
    if out == run or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise UsageError(f"--out: {out} exists and is not empty; name a new folder")
    # The run's preprocessing on the new source; all of it (the run's limit was for trials).
    cfg = dataclasses.replace(run_cfg, data=dataclasses.replace(run_cfg.data, spec=spec, limit=None))
    if cfg.features.bank:  # a view bank is for training; the model takes each image's own features
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, views="none"))
    stats = None
    if (run / "feature_stats.npz").is_file():
        with np.load(run / "feature_stats.npz") as saved:
            stats = {name: saved[name] for name in saved.files}
    reducer = load_reducer(run / REDUCER_FILE) if (run / REDUCER_FILE).is_file() else None
    expected = tuple(load_state(run / "checkpoint")["input_shape"])
    cfg = to_run_input(cfg, expected)
    check_inputs(cfg, None)  # the new source exists and holds images: before Ray starts
    t0 = time.perf_counter()
    init_ray()
    data = prepare_rows(out, algorithm, cfg, use_gpu, feature_stats=stats, reducer=reducer)
    if tuple(data.input_shape) != expected:
        raise UsageError(f"the new rows have shape {tuple(data.input_shape)}, the run's model takes {expected}")
    open_run(out, None, cfg, data)
    data_s = time.perf_counter() - t0

    t = time.perf_counter()
    to_assign = data.good.select_columns([*output_columns(data.good.columns()), "x"])
    metadata = {"job": algorithm.job, "config": to_dict(cfg), "assigned_with": str(run)}
    restarts = sorted((run / "restarts").glob("*/checkpoint"), key=lambda p: int(p.parent.name))
    if restarts:
        combine_restarts(algorithm, cfg, run, restarts, to_assign, out, metadata, use_gpu, run_metrics)
    else:
        write_assignments(algorithm, to_assign, run / "checkpoint", out / "assignments", metadata, use_gpu=use_gpu)
    algorithm.after_assign_new(run_metrics, out / "assignments")
    assignments = pq.read_table(out / "assignments").to_pandas()
    assign_s = time.perf_counter() - t

    accounting = account(cfg, data, len(assignments))
    k = algorithm.n_clusters(cfg)
    scores = score_rows(algorithm, cfg, data, assignments) if data.num_rows >= k else None  # k-means needs k rows
    metrics = {
        "job": algorithm.job,
        "assigned_with": str(run),
        "accounting": accounting,
        **({"scores": scores, "score_rows": sample_sizes(len(assignments), cfg.metrics_sample,
                                                         cfg.baseline_ward, umap_baseline(cfg) is not None)}
           if scores else {}),
        "representation": data.representation,
        "clusters_found": int(assignments["cluster"].nunique()),
        "timings_s": {"data_s": data_s, "assign_s": assign_s},
    }
    finish_run(out, metrics, "assign", k, scores_title="scores on the new rows")
    if report:
        write_input_map(out, data, cfg.seed)
        draw_report(out, "assign")
    return metrics


def to_run_input(cfg: Any, input_shape: tuple[int, ...]) -> Any:
    """``cfg`` with the new images decoded to the run's own input (its side and
    channels), whatever their format or size: a run trained on 8 x 8 arrays takes PNGs of
    any size. Said once on the console. Backbone runs decode at their feature size and
    tiled runs cut tiles of their size: both already fit."""
    if cfg.features.enabled or cfg.data.tile is not None or len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        return cfg
    channels, side = input_shape[0], input_shape[1]
    print(f"[assign] new images are brought to the run's input: {side} x {side} px, "
          f"{'grayscale' if channels == 1 else 'RGB'}")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=side, channels=channels))


def combine_restarts(algorithm: Algorithm, cfg: Any, run: Path, checkpoints: list[Path], rows: Any, out: Path,
                     metadata: dict[str, Any], use_gpu: bool, run_metrics: dict[str, Any]) -> None:
    """Assign ``rows`` with every restart's model into ``out/restarts/R/assignments`` and
    write their combination as ``out/assignments`` (module docstring)."""
    k = algorithm.n_clusters(cfg)
    saved = read_metadata(run / "assignments").get("consensus", {}).get("orders")
    final = None
    parts, orders = [], []
    for i, checkpoint in enumerate(checkpoints):
        r = checkpoint.parent.name
        if saved is not None:  # the run's own matching of this restart's clusters
            orders.append(np.asarray(saved[i], dtype=np.int64))
        else:  # a run from before the matching was saved: match again on the run's rows
            if final is None:
                final = pq.read_table(run / "assignments", columns=["id", "cluster"]).to_pandas().set_index(
                    "id")["cluster"]
            mine = pq.read_table(run / "restarts" / r / "assignments", columns=["id", "cluster"]).to_pandas()
            orders.append(match_clusters(mine["cluster"].to_numpy(), final.loc[mine["id"]].to_numpy(), k))
        parts.append(write_assignments(algorithm, rows, checkpoint, out / "restarts" / r / "assignments",
                                       metadata, use_gpu=use_gpu))
    algorithm.combine(cfg, parts, out / "assignments", _kept_restart(run_metrics), orders=orders)
    shutil.rmtree(out / "restarts")  # each restart's rows are in the combination


def _kept_restart(run_metrics: dict[str, Any]) -> int:
    for record in run_metrics.get("restarts", []):
        if record.get("kept"):
            return int(record["restart"])
    return 0
