"""Restarts: several trainings of one model from different seeds, and the consensus
that makes one clustering of them.

:func:`fit_restarts` trains them (one after another, or several at once from threads of
the driver, each its own Ray Train run); every restart's model then assigns the rows
into ``restarts/R/assignments`` and :func:`combine_dac_assignments` or
:func:`combine_desom_assignments` writes their consensus as the run's ``assignments/``.
The consensus itself (matching clusters across trainings) is in
:mod:`deimos_ray.consensus`.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from deimos_ray.assign import (
    METADATA_KEY,
    ROWS_PER_FILE,
    dac_probability_columns,
    read_metadata,
    write_staged,
)
from deimos_ray.config import JobConfig, ScalingConfig
from deimos_ray.consensus import combine_labelings, combine_probabilities
from deimos_ray.runtime import shortfall
from deimos_ray.train.driver import fit

RESTART_SEED_STRIDE = 1000  # restart r trains from seed + 1000 r: apart from nearby user seeds


def fit_restarts(
    train_loop: Callable[[dict[str, Any]], Any],
    loop_config: dict[str, Any],
    rows: ray.data.Dataset,
    cfg: JobConfig,
    out: Path,
    objective: Callable[[dict[str, Any]], float],
    job: str,
    callbacks: list[Any] | None = None,
) -> tuple[list[ray.train.Result], list[dict[str, Any]] | None, int]:
    """Train once, or ``cfg.restarts.count`` times from seeds ``seed + 1000 r``,
    ``cfg.restarts.concurrent`` at a time.

    Returns every result (in restart order), a record per restart (``None`` for a single
    training) and the index of the kept result: the lowest ``objective`` of the loop's
    return value (the final training loss; its model is the one the run exports). Restart 0 is the Ray Train run ``train``, the others
    ``train-restart{r}``, so a rerun resumes each where it stopped. Concurrent restarts
    are separate Ray Train runs started from threads of this driver; each record's
    ``started_s`` and ``finished_s`` (seconds after the first start) show how they
    overlapped. ``callbacks`` go to every training's Ray Train run. If one fails, no
    further restart starts, the running ones finish (their checkpoints let a rerun
    resume them), and the error is raised.
    """
    restarts = cfg.restarts.count
    if restarts == 1:
        return [fit(train_loop, loop_config, rows, cfg.scaling, out / "ray", name="train",
                    max_failures=cfg.max_failures, callbacks=callbacks)], None, 0
    concurrent = min(cfg.restarts.concurrent, restarts)
    if concurrent > 1:
        _warn_if_cluster_too_small(cfg.scaling, concurrent)
    records = [{"restart": r, "seed": loop_config["seed"] + RESTART_SEED_STRIDE * r, "kept": False}
               for r in range(restarts)]
    t0 = time.perf_counter()
    failed = threading.Event()  # set by a failing restart, so no further one starts

    def train(record: dict[str, Any]) -> ray.train.Result | None:
        if failed.is_set():
            return None
        record["started_s"] = round(time.perf_counter() - t0, 3)
        r = record["restart"]
        try:
            result = fit(train_loop, {**loop_config, "seed": record["seed"]}, rows, cfg.scaling, out / "ray",
                         name="train" if r == 0 else f"train-restart{r}", max_failures=cfg.max_failures,
                         callbacks=callbacks)
        except BaseException:
            failed.set()
            raise
        record["finished_s"] = round(time.perf_counter() - t0, 3)
        return result

    results: list[ray.train.Result | None] = [None] * restarts
    pool = ThreadPoolExecutor(max_workers=concurrent, thread_name_prefix="restart")
    try:
        futures = {pool.submit(train, record): record for record in records}
        for future in as_completed(futures):
            record = futures[future]
            try:
                result = future.result()
            except Exception:
                running = sum(f.running() for f in futures)
                if running:
                    print(f"[{job}] restart {record['restart'] + 1} failed; waiting for the {running} "
                          "restart(s) still training (a rerun resumes them from their checkpoints)", flush=True)
                raise
            if result is None:  # not started: another restart failed
                continue
            results[record["restart"]] = result
            record["objective"] = objective(result.return_value)
            print(f"[{job}] restart {record['restart'] + 1}/{restarts}, seed {record['seed']}: "
                  f"objective {record['objective']:.5g}", flush=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    best = min(range(restarts), key=lambda r: records[r]["objective"])
    records[best]["kept"] = True
    print(f"[{job}] lowest final loss: restart {best + 1} of {restarts} (seed {records[best]['seed']}), "
          "whose model is checkpoint/")
    return results, records, best


def _warn_if_cluster_too_small(scaling: ScalingConfig, concurrent: int) -> None:
    """Concurrent trainings the cluster cannot hold at once do not fail: they wait for
    resources (or for an autoscaler). Say so, since the wall time then does not shrink."""
    short = shortfall(scaling, trainings=concurrent)
    if short:
        warnings.warn(f"{concurrent} restarts at once need " + ", ".join(f"{v:g} {k}" for k, (_, v) in short.items())
                      + " but the cluster has " + ", ".join(f"{h:g}" for h, _ in short.values())
                      + "; the others wait for resources", stacklevel=3)


def read_aligned(sources: list[Path], column: str, base: int = 0) -> tuple[pa.Table, list[np.ndarray]]:
    """``sources[base]``'s assignments table and every source's ``column`` in that
    table's row order, from assignments of the same rows (matched by ``id``)."""
    first = pq.read_table(sources[base])
    ids = pd.Index(first.column("id").to_numpy(zero_copy_only=False))
    if not ids.is_unique:
        raise ValueError(f"{sources[base]}: row ids are not unique")
    values = []
    for i, source in enumerate(sources):
        table = first if i == base else pq.read_table(source, columns=["id", column])
        position = pd.Index(table.column("id").to_numpy(zero_copy_only=False)).get_indexer(ids)
        if table.num_rows != len(ids) or (position < 0).any():
            raise ValueError(f"{source} does not assign the same rows as {sources[base]}")
        column_values = table.column(column).to_numpy(zero_copy_only=False)
        values.append((np.stack(column_values) if column_values.dtype == object else column_values)[position])
    return first, values


def read_dac_probabilities(sources: list[Path]) -> tuple[pa.Table, list[np.ndarray]]:
    """The first source's assignments table and every source's (rows, k) cluster
    probabilities in that table's row order, from DAC assignments of the same rows.

    The label features are the probabilities over their L2 norm, so dividing them by
    their sum gives the probabilities back.
    """
    first, features = read_aligned(sources, "embedding")
    return first, [f / f.sum(axis=1, keepdims=True) for f in features]


def _write_combined(table: pa.Table, sources: list[Path], base: int, destination: str | Path,
                    combine: dict[str, Any]) -> None:
    """Write a combined assignments table, its metadata ``sources[base]``'s plus
    ``consensus`` (each restart's agreement, the sources), staged and renamed into place as
    :func:`~deimos_ray.assign.write_assignments` does."""
    metadata = read_metadata(sources[base])
    metadata["consensus"] = {**combine, "sources": [str(s) for s in sources]}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, default=str).encode()})

    def write(staging: Path) -> None:
        staging.mkdir(parents=True)
        for part, start in enumerate(range(0, max(table.num_rows, 1), ROWS_PER_FILE)):
            pq.write_table(table.slice(start, ROWS_PER_FILE), staging / f"part-{part:05d}.parquet")

    write_staged(destination, write)


def combine_dac_assignments(sources: list[Path], destination: str | Path, seed: int = 0) -> list[float]:
    """Write the consensus of several DAC trainings' assignments of the same rows.

    :func:`read_dac_probabilities` reads the sources; :func:`deimos_ray.consensus.
    combine_probabilities` matches the trainings' clusters and averages. The rows keep the
    first source's order and every column but the model's: ``cluster``, ``confidence``,
    ``topk_clusters`` and ``topk_probs`` come from the averaged probabilities, and
    ``embedding`` is their label feature (divided by its norm). Written as
    :func:`write_assignments` writes, staged and renamed into place.

    Returns:
        Each source's agreement with the combined clusters (share of rows).
    """
    table, probabilities = read_dac_probabilities(sources)
    orders: list[np.ndarray] = []
    mean, agreement = combine_probabilities(probabilities, seed, orders=orders)
    for name, values in dac_probability_columns(torch.from_numpy(mean)).items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    _write_combined(table, sources, 0, destination,
                    {"agreement": agreement, "orders": [order.tolist() for order in orders]})
    return agreement


def combine_desom_assignments(sources: list[Path], destination: str | Path, k: int, kept: int,
                              seed: int = 0) -> list[float]:
    """Write the consensus of several DESOM trainings' groupings of the same rows.

    Each training's ``cluster`` (its k groups of map nodes) votes
    (:func:`deimos_ray.consensus.combine_labelings`). The maps themselves cannot be
    combined, so every other column (``som_row``, ``som_col``, ``bmu_distance``,
    ``embedding``) and the row order are those of ``sources[kept]``, the training whose
    checkpoint the run exports; ``cluster`` is the consensus, and ``confidence`` (added)
    the share of trainings that gave the row that cluster.

    Returns:
        Each source's agreement with the combined clusters (share of rows).
    """
    table, labelings = read_aligned(sources, "cluster", base=kept)
    orders: list[np.ndarray] = []
    combined, share, agreement = combine_labelings(labelings, k, seed, orders=orders)
    table = table.set_column(table.schema.get_field_index("cluster"), "cluster",
                             pa.array(combined, pa.int32()))
    table = table.append_column("confidence", pa.array(share, pa.float32()))
    _write_combined(table, sources, kept, destination,
                    {"kept": kept, "agreement": agreement, "orders": [order.tolist() for order in orders]})
    return agreement
