"""Train DESOM (Deep Embedded Self-Organising Map) on a set of images; one Parquet row per
image placed on a map, and the map drawn as pictures.

Locally (starts a private Ray instance):
    python jobs/train_desom.py                                # built-in digits, 8x8 map
    python jobs/train_desom.py --data ../shared/data/usps.npz --map-size 8 8 --k 10
    python jobs/train_desom.py --data ../shared/data/usps.npz --k 10 --iterations 2000 --restarts 8
    python jobs/train_desom.py --data /path/to/exposures --tile 32 --map-size 25 25 --levels 2

On a Ray cluster:
    ray job submit --working-dir . -- python jobs/train_desom.py --data /shared/cutouts \\
        --num-workers 4 --use-gpu --out /shared/runs/desom

Outputs (DIR = --out): config.yaml, metrics.json, checkpoint/, assignments/*.parquet
(som_row, som_col, bmu_distance, cluster, embedding), rejected.parquet, report/
(prototypes.png, hits.png, umatrix.png); with --restarts (needs --k), restarts/R/ holds
each restart's checkpoint and assignments, and cluster is their vote. With --levels 2
also groups.parquet (one row per group: group, som_row, som_col, cluster, members) and
level2/report/ (hits, U-matrix, members.png). Redraw the pictures with jobs/report.py DIR.
"""

from __future__ import annotations

import argparse
import sys

from deimos_ray import cli
from deimos_ray.algorithms import get_algorithm

ALGORITHM = get_algorithm("desom")  # its flags, defaults and --smoke-test settings: deimos_ray/algorithms/desom.py
JOB = ALGORITHM.job
SMOKE = ALGORITHM.smoke


def get_args_parser() -> argparse.ArgumentParser:
    return cli.job_parser(ALGORITHM, __doc__)


def build_config(args: argparse.Namespace):
    return cli.build_job_config(ALGORITHM, args)


def main(args: argparse.Namespace) -> int:
    return cli.main(ALGORITHM, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
