"""The job spine every training job follows, for any :class:`~deimos_ray.algorithms.Algorithm`.

:func:`run_training_job` reads top to bottom:

1. check the config, write ``DIR/config.yaml`` (an earlier run's ``metrics.json`` goes);
2. start or join Ray; load and preprocess the source in Ray Data; unreadable inputs go
   to ``DIR/rejected.parquet`` with the reason (:mod:`deimos_ray.data.prepare`);
3. :func:`run_prepared` on those rows: train on Ray Train (``DIR/ray/``; a rerun with
   the same ``DIR`` resumes), once or as restarts (:mod:`deimos_ray.restarts`), export
   ``DIR/checkpoint/``; assign every row with Ray Data model actors into
   ``DIR/assignments/`` (restarts: each into ``DIR/restarts/R/``, and their consensus);
   the algorithm's post-processing; check inputs = assigned + rejected; score the model
   beside k-means (:mod:`deimos_ray.scoring`); write ``DIR/metrics.json``.

:func:`run_prepared` is also what a Ray Tune trial calls: one training of a given
config on data prepared once, without argparse.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from deimos_ray.algorithms.base import Algorithm
from deimos_ray.assign import write_assignments
from deimos_ray.config import JobConfig, save_yaml, to_dict
from deimos_ray.data.prepare import PreparedData, collect_features, prepare_data, write_rejected
from deimos_ray.data.preprocess import output_columns
from deimos_ray.metrics import format_table
from deimos_ray.restarts import fit_restarts
from deimos_ray.runtime import init_ray, local_cpus_needed
from deimos_ray.scoring import score_run, scores_space
from deimos_ray.train.driver import export_checkpoint


def run_training_job(algorithm: Algorithm, cfg: JobConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run ``algorithm`` end to end into ``out_dir`` (module docstring) and return the
    metrics dict that ``metrics.json`` holds."""
    algorithm.check(cfg)
    out = Path(out_dir).resolve()
    refuse_other_representation(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    # An earlier run's scores must not sit beside this run's config while it trains (or
    # after it fails): metrics.json appears again only when this run has finished.
    (out / "metrics.json").unlink(missing_ok=True)
    save_yaml(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    at_once = min(cfg.restarts.concurrent, cfg.restarts.count)
    init_ray(num_cpus=local_cpus_needed(cfg.scaling.num_workers * at_once, cfg.scaling.cpus_per_worker))

    fine_tune = algorithm.fine_tunes_backbone(cfg)
    data = prepare_data(cfg.data, cfg.features, out / "features", cfg.scaling.use_gpu, extract=not fine_tune)
    write_rejected(data.rejected, out / "rejected.parquet")
    if fine_tune:
        print(f"[{algorithm.job}] fine-tuning {cfg.features.backbone} on the images at {data.spec.size[0]} px")
    elif cfg.features.enabled:
        print(f"[{algorithm.job}] {cfg.features.backbone} features "
              f"{'read from the cache' if data.cache_hit else 'computed and cached'} "
              f"in {cfg.features.cache or out / 'features'}")
    if data.feature_stats is not None:  # new images must be standardised the same way
        np.savez(out / "feature_stats.npz", **data.feature_stats)
    for note in data.notes:
        print(f"[{algorithm.job}] {note}")
    n_rows = data.good.count()
    tiles = f" as {n_rows} tiles" if cfg.data.tile else ""
    print(f"[{algorithm.job}] {data.num_inputs} inputs: {data.good_inputs} readable{tiles}, "
          f"{len(data.rejected)} rejected; model input shape {data.input_shape}")
    return run_prepared(algorithm, cfg, data, out, data_s=time.perf_counter() - t0)


def run_prepared(algorithm: Algorithm, cfg: JobConfig, data: PreparedData, out_dir: str | Path,
                 data_s: float = 0.0) -> dict[str, Any]:
    """Train, assign, check and score on rows already prepared; write ``metrics.json``.

    Args:
        algorithm: The method to run.
        cfg: Its job config (``cfg.data`` must be what ``data`` was prepared from).
        data: From :func:`deimos_ray.data.prepare.prepare_data`, shared by any number of
            trainings.
        out_dir: The run directory (checkpoints, assignments, metrics).
        data_s: Seconds spent preparing ``data``, for ``timings_s``.

    Returns:
        The metrics dict: accounting, scores, training summary, restarts, timings.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    job = algorithm.job
    timings = {"data_s": data_s}

    t = time.perf_counter()
    loop_config = {"model": to_dict(cfg.model), "seed": cfg.seed, "input_shape": list(data.input_shape),
                   "checkpoint_interval_s": cfg.checkpoint_interval_s}
    if algorithm.fine_tunes_backbone(cfg):
        loop_config["backbone"] = {"name": cfg.features.backbone, "weights": cfg.features.weights,
                                   "image_size": data.spec.size[0]}
    rows = algorithm.training_rows(cfg, data)
    results, restarts, kept = fit_restarts(algorithm.train_loop, loop_config, rows, cfg, out,
                                           algorithm.final_loss, job)
    checkpoint = export_checkpoint(results[kept], out / "checkpoint")
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    metadata = {"job": job, "config": to_dict(cfg)}
    to_assign = data.good.select_columns([*output_columns(data.good.columns()), "x"])
    shutil.rmtree(out / "restarts", ignore_errors=True)  # an earlier run's, made again below if needed
    if restarts:
        sources = []
        for record, result in zip(restarts, results, strict=True):
            where = out / "restarts" / str(record["restart"])
            write_assignments(to_assign, export_checkpoint(result, where / "checkpoint"),
                              where / "assignments", {**metadata, "restart": record}, use_gpu=cfg.scaling.use_gpu)
            sources.append(where / "assignments")
        agreement = algorithm.combine(cfg, sources, out / "assignments", kept)
        for record, share in zip(restarts, agreement, strict=True):
            record["agreement"] = share
        print(f"[{job}] combined {len(sources)} restarts; each one's agreement with the result: "
              + ", ".join(f"{share:.3f}" for share in agreement))
    else:
        write_assignments(to_assign, checkpoint, out / "assignments", metadata, use_gpu=cfg.scaling.use_gpu)
    assignments = pq.read_table(out / "assignments").to_pandas()
    assignments, extra = algorithm.after_assign(cfg, out, assignments, data)
    timings["assign_s"] = time.perf_counter() - t

    accounting = account(cfg, data, len(assignments))

    t = time.perf_counter()
    k = algorithm.n_clusters(cfg)
    model_name = algorithm.model_name(cfg)
    ids, features = collect_features(data.good)
    scores = score_run(assignments, ids, features, k, cfg.seed, cfg.metrics_sample, cfg.baseline_n_init,
                       data.has_labels, model_name, algorithm.labels_seen(cfg), ward=cfg.baseline_ward)
    timings["score_s"] = time.perf_counter() - t
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
        "representation": data.representation,
        **({"fine_tuned_backbone": cfg.features.backbone} if algorithm.fine_tunes_backbone(cfg) else {}),
        "training": results[kept].return_value,
        **({"restarts": restarts} if restarts else {}),
        **extra,
        "timings_s": timings,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))

    print(f"\n[{job}] accounting: {accounting['inputs']} inputs = {accounting['assigned']} assigned "
          f"+ {accounting['rejected']} rejected" + (f" ({len(assignments)} tiles)" if cfg.data.tile else ""))
    print(f"[{job}] scores (k={k}):\n{format_table(scores)}")
    print(f"\n[{job}] outputs in {out}:\n  assignments/  rejected.parquet  metrics.json  config.yaml  checkpoint/")
    return metrics


# Settings of the representation that change only how it is computed, not what it is.
HOW_FEATURES_RUN = ("cache", "batch_size", "actors")


def refuse_other_representation(cfg: JobConfig, out: Path) -> None:
    """Refuse to resume, in ``out``, a training made on another representation.

    The checkpoint's input shape is checked on resume, but two backbones (or two
    normalisations) can give vectors of the same width, and a model trained on one must
    not carry on over the other.

    Raises:
        ValueError: ``out`` holds a training whose ``features`` settings differ.
    """
    from deimos_ray.config import FeatureConfig, load_yaml, stored_settings

    if not (out / "ray").exists() or not (out / "config.yaml").is_file():
        return
    stored = load_yaml(out / "config.yaml").get("features") or {}
    old, new = stored_settings(FeatureConfig, stored), to_dict(cfg.features)
    changed = sorted(k for k in new if k not in HOW_FEATURES_RUN and old[k] != new[k])
    if changed:
        raise ValueError(f"{out} holds a training on another representation (features.{', features.'.join(changed)} "
                         f"differ: {[old[k] for k in changed]} then, {[new[k] for k in changed]} now); "
                         "use a new --out")


def account(cfg: JobConfig, data: PreparedData, assigned_rows: int) -> dict[str, int]:
    """Check that every input is assigned or rejected and return the counts.

    Raises:
        RuntimeError: The assignments lost or added rows, or inputs != assigned + rejected.
    """
    n_rows = data.good.count()
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
