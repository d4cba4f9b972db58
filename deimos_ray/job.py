"""The job spine every training job follows, for any :class:`~deimos_ray.algorithms.Algorithm`.

:func:`run_training_job` reads top to bottom:

1. check the config, and that ``DIR`` holds no other training (:mod:`deimos_ray.identity`);
2. start or join Ray; load and preprocess the source in Ray Data
   (:func:`deimos_ray.run_folder.prepare_rows`);
3. :func:`run_prepared` on those rows: check that the rows serve the settings
   (``Algorithm.check_data``) and that ``DIR`` holds no training on other rows, and only
   then open the folder (:func:`deimos_ray.run_folder.open_run`: ``identity.json``,
   ``config.yaml``, ``rejected.parquet``, ``feature_stats.npz``); train on Ray Train (``DIR/ray/``; a rerun
   with the same ``DIR`` resumes), once or as restarts (:mod:`deimos_ray.train.restarts`),
   export ``DIR/checkpoint/``; assign every row with Ray Data model actors into
   ``DIR/assignments/`` (restarts: each into ``DIR/restarts/R/``, and their combination,
   ``Algorithm.combine``); the algorithm's post-processing and any further training it
   asks for (DESOM-2); check inputs = assigned + rejected, score the model beside the
   baselines and write ``DIR/metrics.json`` (:func:`deimos_ray.run_folder.finish_run`);
4. draw ``DIR/report/index.html`` (:mod:`deimos_ray.report.page`) from the run's files.

:func:`run_prepared` is also what a Ray Tune trial calls: one training of a given
config on data prepared once, without argparse.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from deimos_ray.algorithms.base import Algorithm
from deimos_ray.assignments import write_assignments
from deimos_ray.config import JobConfig
from deimos_ray.config_io import to_dict
from deimos_ray.data.prepare import PreparedData
from deimos_ray.data.preprocess import output_columns
from deimos_ray.identity import check_identity, rows_fingerprint, settings_identity
from deimos_ray.progress import stage_line
from deimos_ray.report.input_map import write_input_map
from deimos_ray.report.page import draw_report
from deimos_ray.run_folder import (
    account,
    finish_run,
    open_run,
    prepare_rows,
    score_rows,
    umap_baseline,
)
from deimos_ray.runtime import check_room, init_ray, local_cpus_needed, stop_if_signalled
from deimos_ray.scoring import sample_sizes, scores_space
from deimos_ray.train.driver import export_checkpoint
from deimos_ray.train.restarts import fit_restarts


def run_training_job(algorithm: Algorithm, cfg: JobConfig, out_dir: str | Path,
                     overwrite: bool = False, report: bool = True) -> dict[str, Any]:
    """Run ``algorithm`` end to end into ``out_dir`` (module docstring) and return the
    metrics dict that ``metrics.json`` holds.

    Nothing in ``out_dir`` changes until the checks have passed: the config, then (once
    the rows are known) that the folder holds no other training
    (:mod:`deimos_ray.identity`). ``overwrite`` replaces a run that is there instead;
    ``report=False`` skips the pictures (``deimos-ray report`` draws them later).
    """
    algorithm.check(cfg)
    out = Path(out_dir).resolve()
    check_identity(out, settings_identity(algorithm.job, cfg), cfg, overwrite)
    t0 = time.perf_counter()
    at_once = min(cfg.restarts.concurrent, cfg.restarts.count)
    init_ray(num_cpus=local_cpus_needed(cfg.scaling.num_workers * at_once, cfg.scaling.cpus_per_worker))
    check_room(cfg.scaling)

    data = prepare_rows(out, algorithm, cfg, cfg.scaling.use_gpu)
    if algorithm.fine_tunes_backbone(cfg):
        print(f"[{algorithm.job}] fine-tuning {cfg.features.backbone} on the images at {data.spec.size[0]} px")
    elif cfg.features.enabled:
        print(f"[{algorithm.job}] {cfg.features.backbone} features "
              f"{'read from the cache' if data.cache_hit else 'computed and cached'} "
              f"in {cfg.features.cache or out / 'features'}")
    for note in data.notes:
        print(f"[{algorithm.job}] {note}")
    tiles = f" as {data.num_rows} tiles" if cfg.data.tile else ""
    stage_line(algorithm.job, f"read and decode: {data.num_inputs} inputs, {data.good_inputs} readable{tiles}, "
               f"{len(data.rejected)} rejected; model input shape {data.input_shape}", time.perf_counter() - t0)
    stop_if_signalled()  # between stages, a Ctrl-C that a library swallowed (runtime.stop_if_signalled)
    metrics = run_prepared(algorithm, cfg, data, out, data_s=time.perf_counter() - t0, overwrite=overwrite)
    if report:
        stop_if_signalled()
        write_input_map(out, data, cfg.seed)
        draw_report(out, algorithm.job)
    return metrics


def run_identity(algorithm: Algorithm, cfg: JobConfig, data: PreparedData) -> dict[str, Any]:
    """The identity of training ``algorithm`` with ``cfg`` on ``data``
    (:mod:`deimos_ray.identity`)."""
    identity = settings_identity(algorithm.job, cfg, data.input_shape)
    identity["data"].update(rows_fingerprint(data.ids))
    return identity


def run_prepared(algorithm: Algorithm, cfg: JobConfig, data: PreparedData, out_dir: str | Path,
                 data_s: float = 0.0, progress_rows: int = 0,
                 callbacks: list[Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train, assign, check and score on rows already prepared; write ``metrics.json``.

    Args:
        algorithm: The method to run.
        cfg: Its job config (``cfg.data`` must be what ``data`` was prepared from).
        data: From :func:`deimos_ray.data.prepare.prepare_data`, shared by any number of
            trainings.
        out_dir: The run directory (checkpoints, assignments, metrics).
        data_s: Seconds spent preparing ``data``, for ``timings_s``.
        progress_rows: With more than 0, every epoch reports the silhouette of the
            model's current clusters on this many rows
            (:class:`deimos_ray.train.common.ProgressProbe`; a sweep's early stopping).
        callbacks: Ray Train callbacks of each training (a sweep's report to Tune).
        overwrite: Replace the run that is in ``out_dir`` (``--overwrite``).

    Returns:
        The metrics dict: accounting, scores, training summary, restarts, timings.
    """
    out = Path(out_dir).resolve()
    algorithm.check_data(cfg, data)
    open_run(out, run_identity(algorithm, cfg, data), cfg, data, overwrite)
    job = algorithm.job
    timings = {"data_s": data_s}

    t = time.perf_counter()
    loop_config = {"model": to_dict(cfg.model), "seed": cfg.seed, "input_shape": list(data.input_shape),
                   "checkpoint_interval_s": cfg.checkpoint_interval_s, "progress_rows": progress_rows,
                   "view_bank": cfg.features.bank}
    if algorithm.fine_tunes_backbone(cfg):
        loop_config["backbone"] = {"name": cfg.features.backbone, "weights": cfg.features.weights,
                                   "image_size": data.spec.size[0]}
    rows = algorithm.training_rows(cfg, data)
    results, restarts, kept = fit_restarts(algorithm.train_loop, loop_config, rows, cfg, out,
                                           algorithm.final_loss, job, callbacks)
    checkpoint = export_checkpoint(results[kept], out / "checkpoint")
    timings["train_s"] = time.perf_counter() - t
    stop_if_signalled()

    t = time.perf_counter()
    metadata = {"job": job, "config": to_dict(cfg)}
    to_assign = data.good.select_columns([*output_columns(data.good.columns()), "x"])
    shutil.rmtree(out / "restarts", ignore_errors=True)  # an earlier run's, made again below if needed
    if restarts:
        sources = []
        for record, result in zip(restarts, results, strict=True):
            where = out / "restarts" / str(record["restart"])
            write_assignments(algorithm, to_assign, export_checkpoint(result, where / "checkpoint"),
                              where / "assignments", {**metadata, "restart": record}, use_gpu=cfg.scaling.use_gpu)
            sources.append(where / "assignments")
        agreement = algorithm.combine(cfg, sources, out / "assignments", kept)
        for record, share in zip(restarts, agreement, strict=True):
            record["agreement"] = share
        print(f"[{job}] combined {len(sources)} restarts; each one's agreement with the result: "
              + ", ".join(f"{share:.3f}" for share in agreement))
    else:
        write_assignments(algorithm, to_assign, checkpoint, out / "assignments", metadata,
                          use_gpu=cfg.scaling.use_gpu)
    assignments = pq.read_table(out / "assignments").to_pandas()
    assignments, extra = algorithm.after_assign(cfg, out, assignments, data)
    timings["assign_s"] = time.perf_counter() - t
    stage_line(job, f"assignment: {len(assignments)} rows", timings["assign_s"])

    stop_if_signalled()
    accounting = account(cfg, data, len(assignments))

    t = time.perf_counter()
    further = algorithm.further_training(cfg, out)
    if further is not None:
        extra.update(further)
        timings["further_training_s"] = time.perf_counter() - t

    t = time.perf_counter()
    k = algorithm.n_clusters(cfg)
    model_name = algorithm.model_name(cfg)
    scores = score_rows(algorithm, cfg, data, assignments, algorithm.labels_seen(cfg))
    timings["score_s"] = time.perf_counter() - t
    stage_line(job, "scores beside k-means and Ward", timings["score_s"])
    timings["total_s"] = sum(timings.values())

    found = assignments["cluster"].nunique()
    if found < k:
        warnings.warn(f"{model_name.upper()} returned {found} distinct clusters, fewer than "
                      f"n_clusters={k}", stacklevel=2)
    metrics = {
        "job": job,
        "accounting": accounting,
        "scores": scores,
        "scores_space": scores_space(data.representation),
        "score_rows": sample_sizes(len(assignments), cfg.metrics_sample, cfg.baseline_ward,
                                   umap_baseline(cfg) is not None),
        "representation": data.representation,
        **({"fine_tuned_backbone": cfg.features.backbone} if algorithm.fine_tunes_backbone(cfg) else {}),
        "training": results[kept].return_value,
        **({"restarts": restarts} if restarts else {}),
        **extra,
        "timings_s": timings,
    }
    stop_if_signalled()
    finish_run(out, metrics, job, k)
    return metrics
