"""Train DEC or IDEC on a set of images and write one Parquet row per image.

Locally (starts a private Ray instance):
    python jobs/train_dec.py                                  # built-in digits
    python jobs/train_dec.py --data ../shared/data/usps.npz --variant idec --update-interval 30
    python jobs/train_dec.py --data /path/to/images --image-size 28 --k 8

On a Ray cluster (the script joins the cluster it is submitted to):
    ray job submit --working-dir . -- python jobs/train_dec.py --data /shared/usps.npz \\
        --num-workers 4 --use-gpu --out /shared/runs/dec-usps

Outputs (DIR = --out): config.yaml, metrics.json, checkpoint/, assignments/*.parquet,
rejected.parquet. Rerunning with the same --out resumes training from its checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from deimos_ray import cli
from deimos_ray.algorithms import get_algorithm

ALGORITHM = get_algorithm("dec")  # its flags, defaults and --smoke-test settings: deimos_ray/algorithms/dec.py
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
