"""Sweep the number of clusters (and any other setting) of DAC, DEC or DESOM with Ray Tune,
choosing by a label-free score computed in one space shared by every trial.

Locally (starts a private Ray instance):
    deimos-ray sweep --algorithm dec --k 4 6 8 10 12 14 16 --out runs/sweep-dec
    deimos-ray sweep --algorithm dac --data /path/to/hirise --originals-only \\
        --backbone efficientnet_lite0 --k 6 8 10 --grid model.lr=0.001,0.0003 --out runs/sweep-dac
    deimos-ray sweep --algorithm dac --k 8 10 --search random --samples 6 \\
        --grid model.u0=0.9,0.95,0.99 --grid model.l0=0.4,0.455,0.5 --out runs/sweep-thresholds
    deimos-ray sweep --algorithm dac --k 6 8 10 12 --search optuna --samples 40 \\
        --grid model.u0=0.9,0.95,0.99 --grid model.lr=0.001,0.0003 --out runs/sweep-optuna

On a Ray cluster (jobs/tune_sweep.py joins the cluster it is submitted to):
    ray job submit --working-dir . -- python jobs/tune_sweep.py --algorithm dec \\
        --data /shared/tiles --backbone efficientnet_lite0 --k 4 6 8 10 12 \\
        --max-concurrent 4 --use-gpu --out /shared/runs/sweep-tiles

The objective: silhouette in the reference space (the backbone's features, else a PCA of
the pixels, on one seeded sample of rows) minus the share of the k clusters that are empty
or tiny (fewer than --min-cluster-fraction of the rows). Labels, when present, are scored
per trial and never used to choose.

Outputs (DIR = --out): trials.parquet (a row per trial: its settings, every label-free
score, the objective, label scores when labels exist), score_vs_k.png, best_config.yaml
(deimos-ray train ALGORITHM --config DIR/best_config.yaml reproduces the chosen
training), trials/<trial>/ (each trial's run folder), and the best trial's assignments/,
checkpoint/, metrics.json and rejected.parquet. Rerun with the same --out to resume.
With --scheduler asha, trials whose per-epoch silhouette trails are stopped early (their
rows in trials.parquet say "stopped early"; they are never chosen).
"""

from __future__ import annotations

import argparse

from deimos_ray import cli, progress
from deimos_ray.algorithms import ALGORITHMS, get_algorithm
from deimos_ray.cli import interruptible
from deimos_ray.config_io import UnknownSetting, check_paths, parse_override
from deimos_ray.errors import UsageError
from deimos_ray.files import check_writable
from deimos_ray.preflight import check_inputs
from deimos_ray.sweep.driver import run_sweep
from deimos_ray.sweep.space import SCHEDULERS, SEARCHES

JOB = "tune_sweep"


def get_args_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The sweep's flags: the jobs' common ones, and the sweep's own."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                conflict_handler="resolve")
    cli.add_common_args(p, JOB)
    p.add_argument("--algorithm", choices=sorted(ALGORITHMS), required=True, help="the method every trial trains")
    p.add_argument("--k", type=int, nargs="+", help="numbers of clusters to try (each is a trial)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="another config field and its values, e.g. model.lr=0.001,0.0003 (repeatable)")
    p.add_argument("--search", choices=SEARCHES, default="grid", help="grid: every combination "
                   "(default); random: --samples trials, each value drawn from its list; optuna: "
                   "--samples trials, each drawn by Optuna's TPE from the objectives so far (its first "
                   "10 draws are random, so it pays off from a few dozen trials; not with --scheduler asha)")
    p.add_argument("--samples", type=int, default=1, help="trials per grid point (grid) or in all "
                   "(random, optuna)")
    p.add_argument("--restarts-per-trial", type=int, help="DAC, DESOM: train each trial this many "
                   "times and combine them by consensus; the mean ARI between them is the trial's "
                   "stability (default 1)")
    p.add_argument("--max-concurrent", type=int, default=1, help="trials training at once (each with "
                   "--num-workers workers; on a GPU cluster, GPUs / workers per trial)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="fifo", help="fifo: every trial trains "
                   "to the end (default: right for a grid over k); asha: stop the trials whose per-epoch "
                   "silhouette (the model's clusters on 500 rows of its input) trails at each rung (each "
                   "epoch then reports, which costs up to 2 s an epoch)")
    p.add_argument("--grace-period", type=int, default=2, help="asha: epochs before a trial can be stopped "
                   "(default 2)")
    p.add_argument("--reduction-factor", type=int, default=3, help="asha: the best 1/N of the trials go on "
                   "at each rung (default 3)")
    p.add_argument("--min-cluster-fraction", type=float, default=0.005, help="clusters with fewer rows "
                   "than this share count as collapsed in the objective (default 0.005)")
    return p


def grid_keys(args: argparse.Namespace) -> list[str]:
    """The config keys the user swept with ``--grid``."""
    return [text.split("=", 1)[0].strip() for text in args.grid]


def parse_grid(args: argparse.Namespace) -> dict[str, list]:
    """``--k`` and every ``--grid KEY=V1,V2`` as {dotted key: typed values}."""
    grid: dict[str, list] = {}
    if args.k:
        grid["model.n_clusters"] = list(args.k)
    for text in args.grid:
        key, raw = text.split("=", 1) if "=" in text else (text, "")
        values = [parse_override(f"{key}={v}")[1] for v in raw.split(",") if v.strip()]
        if not values:
            raise ValueError(f"--grid {text!r} must look like KEY=V1,V2")
        grid[key.strip()] = values
    return grid


def main(argv: list[str] | None = None, prog: str = "deimos-ray sweep") -> int:
    """``deimos-ray sweep [flags]``: parse ``argv`` and :func:`run` the sweep."""
    return run(get_args_parser(prog).parse_args(argv))


@interruptible
def run(args: argparse.Namespace) -> int:
    """Check the sweep's settings and inputs (before Ray starts), then run it
    (:func:`deimos_ray.sweep.driver.run_sweep`); a usage error is one line, status 2."""
    progress.configure(args.verbose)
    algorithm = get_algorithm(args.algorithm)
    given = {**cli.flags_given(args), **{key: f"--grid {key}" for key in grid_keys(args)}}
    try:
        grid = parse_grid(args)
        try:
            check_paths(algorithm.config_class, grid)
        except UnknownSetting as exc:
            raise UsageError(f"--grid {exc.path}: {exc} (every setting, with its meaning: "
                             f"{cli.settings_file(algorithm.job)})") from exc
        args.k = None  # the swept values are the grid's, not one config value
        cfg = cli.build_config(algorithm.config_class, args, algorithm.smoke_settings(),
                               {"restarts.count": args.restarts_per_trial}, job=algorithm.job)
        check_inputs(cfg, max(grid.get("model.n_clusters", []), default=None))  # the largest k tried
        out = cli.default_out(JOB, args.out)
        check_writable(out)
        run_sweep(algorithm, cfg, grid, out, search=args.search, samples=args.samples,
                  max_concurrent=args.max_concurrent, min_cluster_fraction=args.min_cluster_fraction,
                  scheduler=args.scheduler, grace_period=args.grace_period,
                  reduction_factor=args.reduction_factor)
    except (ValueError, FileNotFoundError) as exc:
        return cli.usage_error(cli.in_users_words(str(exc), given))
    return 0
