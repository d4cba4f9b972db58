"""The sweep driver: many trainings of one algorithm on Ray Tune, chosen between by a
label-free score computed in one space that every trial shares
(:mod:`deimos_ray.sweep.objective`), over the space of :mod:`deimos_ray.sweep.space`.

:func:`run_sweep` prepares the data once (decoded pixels, or a backbone's cached
features) and hands the same rows to every trial; each trial is one training through
the job spine (:func:`deimos_ray.job.run_prepared`, the code every job runs), started
from a Tune function trainable, which builds its Ray Train run inside (the Train V2 way;
no ``Tuner(trainer)``).

The objective (:mod:`deimos_ray.sweep.objective`) is computed for every trial on the
same seeded sample of rows in the same reference space; the silhouette in the model's own
embedding (``silhouette_embedding``) is recorded for comparison only. Labels, where the
data has them, are scored per trial for the trials table and never used to choose.

Outputs (``DIR``): ``trials.parquet`` (a row per trial), ``score_vs_k.png``,
``best_config.yaml`` (for ``--config`` of the job), ``trials/<trial>/`` (each trial's
run folder), and the best trial's clustering as the sweep's own ``assignments/``,
``checkpoint/``, ``metrics.json`` and ``rejected.parquet`` (copied, not retrained), with
its ``report/index.html`` (:mod:`deimos_ray.report`).
A rerun with the same ``DIR`` resumes the sweep (Tune's restore): finished trials are
kept, unfinished ones train again.

Early stopping (``scheduler="asha"``, off by default: a grid over k should train every
k to the end) stops trials by Tune's ASHA on a per-epoch label-free score: the
silhouette of the model's current clusters on a fixed sample of rows in the model's
input space (:class:`deimos_ray.train.common.ProgressProbe`; DEC reports it from its
self-training phase on, DESOM's clusters are its map nodes). A trial stopped early
has no assignments and no objective; its row in the trials table says so, and it is
never chosen.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from ray import tune  # noqa: E402

from deimos_ray.algorithms.base import Algorithm  # noqa: E402
from deimos_ray.config import JobConfig  # noqa: E402
from deimos_ray.config_io import from_dict, override_all, save_yaml, to_dict  # noqa: E402
from deimos_ray.data.prepare import PreparedData  # noqa: E402
from deimos_ray.files import copy_dir, write_atomic, write_json  # noqa: E402
from deimos_ray.identity import check_identity, rows_fingerprint, settings_identity  # noqa: E402
from deimos_ray.job import run_prepared  # noqa: E402
from deimos_ray.report.input_map import write_input_map  # noqa: E402
from deimos_ray.report.page import draw_report  # noqa: E402
from deimos_ray.run_folder import open_run, prepare_rows  # noqa: E402
from deimos_ray.runtime import check_room, init_ray, local_cpus_needed, stop_if_signalled  # noqa: E402
from deimos_ray.sweep.objective import (  # noqa: E402
    INTERNAL_SCORES,
    LABEL_SCORES,
    OBJECTIVE,
    OBJECTIVE_FORMULA,
    OBJECTIVE_SCORES,
    objective_scores,
    reference_space,
    stability,
)
from deimos_ray.sweep.space import SCHEDULERS, search_space, searcher  # noqa: E402
from deimos_ray.train.common import PROGRESS_SCORE  # noqa: E402

TRIAL_CPUS = 0.25  # the trial's own process only starts and waits for its Ray Train run
TRIAL_COLUMNS = ("k", "silhouette_embedding", "stability", "train_s", "trial_dir")  # a trial's report beside its scores


def _progress_to_tune() -> Any:
    """A Ray Train callback that hands rank 0's per-epoch :data:`PROGRESS_SCORE` to Tune
    (what ASHA stops by) and nothing else: the loops' other reports carry no score, and
    Tune refuses a result without the scheduler's metric."""
    from ray.train.v2.api.callback import UserCallback
    from ray.tune.integration.ray_train import TuneReportCallback

    class ProgressToTune(UserCallback):
        def __init__(self) -> None:
            self.forward = TuneReportCallback()  # made in the trial, where Tune's session is

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if PROGRESS_SCORE in metrics[0]:
                self.forward.after_report(run_context, [{PROGRESS_SCORE: metrics[0][PROGRESS_SCORE],
                                                         "epoch": metrics[0].get("epoch")}], None)

    return ProgressToTune()


def _trial(config: dict[str, Any], *, algorithm: Algorithm, base: dict[str, Any], data: PreparedData,
           out: str, reference: tuple[np.ndarray, np.ndarray], min_cluster_fraction: float,
           progress_rows: int = 0) -> None:
    """One Tune trial: a full training through the job spine in ``out/trials/<trial>``,
    then its scores in the reference space, reported to Tune. With ``progress_rows``
    (early stopping) every epoch's progress score reaches Tune first."""
    cfg = override_all(from_dict(algorithm.config_class, base), config)
    trial_dir = Path(out) / "trials" / tune.get_context().get_trial_id()
    t0 = time.perf_counter()
    early = {"progress_rows": progress_rows, "callbacks": [_progress_to_tune()]} if progress_rows else {}
    metrics = run_prepared(algorithm, cfg, data, trial_dir, **early)
    train_s = time.perf_counter() - t0
    rows = pd.read_parquet(trial_dir / "assignments", columns=["id", "cluster"]).set_index("id")["cluster"]
    ids, x = reference
    k = algorithm.n_clusters(cfg)
    scores = objective_scores(x, rows.loc[ids].to_numpy(), rows.to_numpy(), k, min_cluster_fraction, cfg.seed)
    model = metrics["scores"][algorithm.model_name(cfg)]
    labelled = {f"label_{name}": model[name] for name in LABEL_SCORES if name in model}
    # NaN progress: Tune wants the scheduler's metric in every result; ASHA ignores NaN.
    tune.report({**scores, "k": k, "silhouette_embedding": model.get("silhouette_embedding"),
                 "stability": stability(trial_dir), "train_s": train_s,
                 "trial_dir": str(trial_dir), **labelled, PROGRESS_SCORE: float("nan")})


def run_sweep(algorithm: Algorithm, cfg: JobConfig, grid: dict[str, list[Any]], out_dir: str | Path,
              search: str = "grid", samples: int = 1, max_concurrent: int = 1,
              sample_size: int = 2000, min_cluster_fraction: float = 0.005, scheduler: str = "fifo",
              grace_period: int = 2, reduction_factor: int = 3, progress_rows: int = 500) -> pd.DataFrame:
    """Run a sweep into ``out_dir`` (module docstring) and return the trials table.

    Args:
        algorithm: The method every trial trains.
        cfg: The job config every trial starts from; ``grid`` keys override it.
        grid: Dotted config keys and the values to try (``{"model.n_clusters": [4, 6]}``).
        search: ``grid`` (every combination, ``samples`` times), ``random`` (``samples``
            trials, each key's value drawn from its list) or ``optuna`` (``samples``
            trials, each drawn by Optuna's TPE sampler from the trials before it).
        samples: Trials per grid point (grid) or in all (random, optuna).
        max_concurrent: Trials training at the same time.
        sample_size: Rows of the scored sample.
        min_cluster_fraction: Share of the rows below which a cluster counts as collapsed.
        scheduler: ``fifo`` (every trial to the end) or ``asha`` (early stopping, module
            docstring).
        grace_period: ASHA: epochs every trial trains before it can be stopped.
        reduction_factor: ASHA: at each rung only the best 1 / ``reduction_factor`` go on.
        progress_rows: ASHA: rows of the per-epoch progress score.

    Raises:
        ValueError: Bad settings (before any work), or every trial failed.
    """
    space = search_space(grid, search)
    for values in itertools.product(*grid.values()):  # every value must make a valid config
        algorithm.check(override_all(cfg, dict(zip(grid, values, strict=True))))
    check_sweep(cfg, search, samples, max_concurrent, scheduler, grace_period, reduction_factor, progress_rows)
    out = Path(out_dir).resolve()
    identity = {**settings_identity(f"tune_sweep:{algorithm.name}", cfg),
                "sweep": {"grid": {key: list(values) for key, values in grid.items()}, "search": search,
                          "samples": samples, "scheduler": scheduler}}
    check_identity(out, identity, cfg)
    init_ray(num_cpus=local_cpus_needed(cfg.scaling.num_workers * max_concurrent, cfg.scaling.cpus_per_worker)
             + math.ceil(TRIAL_CPUS * max_concurrent))
    check_room(cfg.scaling, extra_cpus=TRIAL_CPUS)

    t0 = time.perf_counter()
    data = prepare_rows(out, algorithm, cfg, cfg.scaling.use_gpu)
    identity["data"].update(rows_fingerprint(data.ids))
    open_run(out, identity, cfg, data)
    reference = reference_space(data, sample_size, cfg.seed)
    data_s = time.perf_counter() - t0
    print(f"[tune_sweep] {data.num_inputs} inputs, {len(data.rejected)} rejected; every trial is scored on "
          f"{reference[2]}", flush=True)

    trainable = tune.with_resources(
        tune.with_parameters(_trial, algorithm=algorithm, base=to_dict(cfg), data=data, out=str(out),
                             reference=reference[:2], min_cluster_fraction=min_cluster_fraction,
                             progress_rows=progress_rows if scheduler == "asha" else 0),
        {"cpu": TRIAL_CPUS})
    tuner = _tuner(trainable, out / "tune", space, search, samples, max_concurrent, scheduler, grace_period,
                   reduction_factor, cfg.seed)
    t = time.perf_counter()
    # Ctrl-C stops the sweep as it stops a job (deimos_ray.cli.interruptible: one line, exit
    # 130, a rerun resumes), not through Tune's own handler, which ends the experiment
    # early and hands back the trials as if it had finished.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    results = tuner.fit()
    stop_if_signalled()  # a Ctrl-C that Tune caught and dropped still stops the sweep here
    sweep_s = time.perf_counter() - t

    trials = trials_table(results, list(grid))
    trials.attrs["sweep_s"] = sweep_s
    finished = trials[trials["status"] == "finished"] if not trials.empty else trials
    if finished.empty:
        raise ValueError(f"no trial finished: {[str(e) for e in results.errors][:3]}")
    write_atomic(out / "trials.parquet", lambda tmp: trials.to_parquet(tmp, index=False))
    best = finished.loc[finished[OBJECTIVE].idxmax()]
    best_cfg = override_all(cfg, {key: _plain(best[key]) for key in grid})
    save_yaml(best_cfg, out / "best_config.yaml")
    plot_scores(finished, out / "score_vs_k.png", int(best["k"]))
    stopped = len(trials) - len(finished)
    _adopt_trial(Path(best["trial_dir"]), out, {
        "objective": OBJECTIVE_FORMULA,
        "reference_space": reference[2], "chosen_by": OBJECTIVE, "search": search,
        "trials": len(trials), "failed_trials": len(results.errors), "scheduler": scheduler,
        "stopped_early": stopped,
        "best": {key: _plain(best[key]) for key in (*grid, OBJECTIVE, "silhouette", "davies_bouldin")},
        "timings_s": {"data_s": data_s, "sweep_s": sweep_s}})
    print(f"[tune_sweep] {len(trials)} trials in {sweep_s:.0f} s"
          + (f" ({stopped} stopped early by ASHA)" if scheduler == "asha" else "") + "; chosen by the objective: "
          + ", ".join(f"{key}={_plain(best[key])}" for key in grid)
          + f" (objective {best[OBJECTIVE]:.4f}, silhouette {best['silhouette']:.4f})", flush=True)
    write_input_map(out, data, cfg.seed)
    draw_report(out, "tune_sweep")
    return trials


def check_sweep(cfg: JobConfig, search: str, samples: int, max_concurrent: int, scheduler: str,
                grace_period: int, reduction_factor: int, progress_rows: int) -> None:
    """Refuse, before any work, sweep settings that cannot run (:func:`run_sweep`'s
    arguments).

    Raises:
        ValueError: naming the setting and the fix.
    """
    if cfg.scaling.num_workers < 1:
        raise ValueError("a sweep trains each trial in Ray Train workers: scaling.num_workers must be >= 1")
    if samples < 1 or max_concurrent < 1:
        raise ValueError("samples and max_concurrent must be >= 1")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    if scheduler == "asha":
        if grace_period < 1 or reduction_factor < 2 or progress_rows < 2:
            raise ValueError("ASHA needs --grace-period >= 1, --reduction-factor >= 2 and progress_rows >= 2")
        if search == "optuna":
            raise ValueError("--search optuna learns from each trial's final objective, and ASHA's "
                             "per-epoch reports carry none: use --scheduler fifo with it")
        if cfg.restarts.count > 1:
            raise ValueError("--scheduler asha stops a trial by its epochs; with --restarts-per-trial the "
                             "restarts' epochs would mix: use one or the other")


def _tuner(trainable: Any, storage: Path, space: dict[str, Any], search: str, samples: int,
           max_concurrent: int, scheduler: str, grace_period: int, reduction_factor: int, seed: int) -> Any:
    """Tune's Tuner for the sweep, restored from ``storage`` when an earlier run of it
    was interrupted there."""
    if tune.Tuner.can_restore(storage / "sweep"):
        print(f"[tune_sweep] resuming the sweep in {storage / 'sweep'}", flush=True)
        tuner = tune.Tuner.restore(str(storage / "sweep"), trainable, resume_errored=True)
    else:
        # No metric for Tune itself: the best trial is chosen from the trials table (ASHA
        # and Optuna, when on, bring their own).
        asha = None
        if scheduler == "asha":
            from ray.tune.schedulers import ASHAScheduler

            asha = ASHAScheduler(time_attr="training_iteration", metric=PROGRESS_SCORE, mode="max",
                                  max_t=1_000_000, grace_period=grace_period, reduction_factor=reduction_factor)
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(num_samples=samples, max_concurrent_trials=max_concurrent, scheduler=asha,
                                        search_alg=searcher(search, seed)),
            run_config=tune.RunConfig(name="sweep", storage_path=str(storage), verbose=0))
    return tuner


def trials_table(results: Any, keys: list[str]) -> pd.DataFrame:
    """One row per trial that did not fail: its swept settings, its ``status``
    (``finished``, or ``stopped early`` by ASHA: then only its last progress score and
    epochs), every score, its folder."""
    rows = []
    for result in results:
        if result.error is not None or not result.metrics:
            continue
        metrics = result.metrics
        row = {"trial_id": metrics.get("trial_id"), **{key: result.config[key] for key in keys}}
        if OBJECTIVE in metrics:
            rows.append({**row, "status": "finished", **{name: metrics[name] for name in metrics if _is_score(name)}})
        elif PROGRESS_SCORE in metrics:
            rows.append({**row, "status": "stopped early", PROGRESS_SCORE: metrics[PROGRESS_SCORE],
                         "progress_reports": metrics.get("training_iteration")})
    return pd.DataFrame(rows).sort_values(keys, kind="stable").reset_index(drop=True) if rows else pd.DataFrame()


def _is_score(name: str) -> bool:
    return name in (*OBJECTIVE_SCORES, *TRIAL_COLUMNS) or name.startswith("label_")


def _plain(value: Any) -> Any:
    """NumPy scalars as Python ones (YAML and JSON take only these)."""
    return value.item() if isinstance(value, np.generic) else value


def plot_scores(trials: pd.DataFrame, path: Path, chosen_k: int) -> None:
    """Each label-free score against k (median over trials at each k), the chosen k marked."""
    names = [n for n in (OBJECTIVE, *INTERNAL_SCORES)
             if n in trials and trials[n].notna().any()]
    names += [n for n in trials if n.startswith("label_nmi")]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    per_k = trials.groupby("k")
    for ax, name in zip(axes[0], names, strict=True):
        median = per_k[name].median()
        ax.plot(median.index, median.to_numpy(), marker="o")
        ax.scatter(trials["k"], trials[name], s=10, alpha=0.4)
        ax.axvline(chosen_k, color="tab:red", linestyle="--", linewidth=1)
        ax.set_xlabel("k")
        ax.set_title(name + (" (labels, not used)" if name.startswith("label_") else ""), fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _adopt_trial(trial_dir: Path, out: Path, sweep: dict[str, Any]) -> None:
    """The best trial's clustering becomes the sweep's own: its assignments, checkpoint
    and metrics (with the sweep's summary added) are copied into ``out``."""
    for name in ("assignments", "checkpoint"):
        copy_dir(trial_dir / name, out / name)
    metrics = json.loads((trial_dir / "metrics.json").read_text())
    metrics["sweep"] = {**sweep, "trial_dir": str(trial_dir)}
    write_json(out / "metrics.json", metrics)
