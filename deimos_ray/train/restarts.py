"""Restarts: several trainings of one model from different seeds.

:func:`fit_restarts` trains them (one after another, or several at once from threads of
the driver, each its own Ray Train run); the job spine then has every restart's model
assign the rows into ``restarts/R/assignments`` and the algorithm's ``combine`` writes
their consensus (:mod:`deimos_ray.consensus`) as the run's ``assignments/``.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import ray

from deimos_ray.config import JobConfig, ScalingConfig
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
                    max_failures=cfg.max_failures, callbacks=callbacks, label=(job, "training"))], None, 0
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
                         callbacks=callbacks, label=(job, f"training restart {r + 1}/{restarts}"))
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
