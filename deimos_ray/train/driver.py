"""Build and run a TorchTrainer for any training loop; export its final checkpoint.

Kept apart from the loops so Ray Tune can call :func:`fit` unchanged from a trial.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from deimos_ray import progress
from deimos_ray.config import ScalingConfig
from deimos_ray.files import copy_dir
from deimos_ray.runtime import RoomWatch, waits_for_nodes, worker_retries
from deimos_ray.train.checkpoint import driver_checkpoints, latest_driver_checkpoint
from deimos_ray.train.rows import PASSES_DATASET, TRAIN_DATASET, plan_rows


def _run_with_threads(train_loop: Callable[[dict[str, Any]], Any], threads: int, board: Any,
                      config: dict[str, Any]) -> Any:
    """Run ``train_loop(config)`` with PyTorch limited to ``threads`` CPU threads, its
    progress and log lines going to ``board`` (:mod:`deimos_ray.progress`; None: printed).

    The previous count comes back afterwards: in local mode this process is the driver,
    which goes on to score and write the results.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    progress.attach(board)
    try:
        return train_loop(config)
    finally:
        progress.attach(None)
        torch.set_num_threads(previous)


def _plan_rows(dataset: ray.data.Dataset, loop_config: dict[str, Any],
               scaling: ScalingConfig) -> tuple[ray.data.Dataset, dict[str, Any]]:
    """The loop's config with how its workers read their rows (``rows``:
    :func:`deimos_ray.train.rows.plan_rows`), and the dataset they read: when the
    streaming windows are smaller than a shard, its blocks in a seeded random order
    (the same every epoch), so a window holds rows from all over the collection
    rather than one folder's."""
    plan = plan_rows(dataset.size_bytes() or 0, dataset.count(), scaling.num_workers,
                     scaling.in_memory_mb, scaling.stream_window_mb)
    if plan.stream and plan.window_rows * max(1, scaling.num_workers) < dataset.count():
        dataset = dataset.randomize_block_order(seed=int(loop_config.get("seed", 0)))
    return dataset, {**loop_config, "rows": dataclasses.asdict(plan)}


def fit(
    train_loop: Callable[[dict[str, Any]], Any],
    loop_config: dict[str, Any],
    dataset: ray.data.Dataset,
    scaling: ScalingConfig,
    storage_path: str | Path,
    name: str = "train",
    max_failures: int | None = None,
    callbacks: list[Any] | None = None,
    label: tuple[str, str] = ("train", "training"),
) -> ray.train.Result:
    """Run ``train_loop`` on ``scaling.num_workers`` workers over ``dataset``.

    A rerun with the same ``storage_path`` and ``name`` resumes from the latest
    checkpoint (:func:`deimos_ray.train.checkpoint.latest_state` inside the loop); so
    does a retry after a worker failure, up to ``max_failures`` times (None: as
    :func:`deimos_ray.runtime.worker_retries` decides). In the driver
    (``num_workers=0``) the checkpoints are kept in ``storage_path/name/driver/``. The
    loop runs with ``scaling.threads`` PyTorch threads in the driver and in every
    worker alike. ``callbacks`` are Ray Train callbacks of the run (a sweep's report to Tune).
    ``label`` (the job, what is trained) names the training's progress bar and line
    (:class:`deimos_ray.progress.TrainingDisplay`).

    Raises:
        ray.train.TrainingFailedError: the loop raised on some worker.
    """
    dataset, loop_config = _plan_rows(dataset, loop_config, scaling)
    display = progress.TrainingDisplay(*label)
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        functools.partial(_run_with_threads, train_loop, scaling.threads, display.board),
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources if scaling.num_workers > 0 else None,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(Path(storage_path).resolve()),
            # A worker group that cannot start again within Ray Train's startup timeout
            # (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s) means the cluster lost the
            # room it had (a node): stop then, rather than retry for ever, unless nodes
            # are expected to come (an autoscaler).
            failure_config=ray.train.FailureConfig(
                max_failures=worker_retries(max_failures),
                controller_failure_limit=-1 if waits_for_nodes(scaling) else 0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
        # A streamed shard's passes in the middle of an epoch read a second split.
        datasets={TRAIN_DATASET: dataset, **({PASSES_DATASET: dataset} if loop_config["rows"]["stream"] else {})},
    )
    if hasattr(trainer, "_register_sigint_handler"):
        # Ctrl-C is the job's (deimos_ray.cli.interruptible: one line, exit 130, a rerun
        # resumes). Train's own handler aborts the run and ends the driver with status 1
        # and no word; without it, Ctrl-C reaches the job as KeyboardInterrupt.
        trainer._register_sigint_handler = lambda controller: None
    if scaling.num_workers > 0:
        with display, RoomWatch(scaling):
            return trainer.fit()
    folder = Path(storage_path).resolve() / name / "driver"
    with driver_checkpoints(folder), display:
        result = trainer.fit()
    if result.checkpoint is None and (kept := latest_driver_checkpoint(folder)) is not None:
        # A rerun of a finished training reports nothing new; Ray Train's workers would
        # hand back the restored checkpoint, so the driver does the same.
        result = dataclasses.replace(result, checkpoint=ray.train.Checkpoint.from_directory(str(kept)))
    return result


def export_checkpoint(result: ray.train.Result, destination: str | Path) -> Path:
    """Copy the run's final checkpoint to ``destination`` (replacing what was there,
    atomically: :func:`deimos_ray.files.copy_dir`)."""
    if result.checkpoint is None:
        raise RuntimeError("training finished without reporting a checkpoint")
    with result.checkpoint.as_directory() as directory:
        return copy_dir(directory, destination)
