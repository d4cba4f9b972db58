"""Train DESOM (Deep Embedded Self-Organising Map) on a set of images; one Parquet row per

The entry point of ``deimos-ray train desom`` for ``ray job submit`` (the script
joins the cluster it is submitted to); its flags and help: deimos_ray/algorithms/desom.py.

    ray job submit --working-dir . -- python jobs/train_desom.py --data /shared/images --num-workers 4
"""

from __future__ import annotations

import argparse
import sys

from deimos_ray import cli
from deimos_ray.algorithms import get_algorithm

ALGORITHM = get_algorithm("desom")  # its flags, defaults and --smoke-test settings: deimos_ray/algorithms/desom.py
JOB = ALGORITHM.job
SMOKE = ALGORITHM.smoke_settings()


def get_args_parser() -> argparse.ArgumentParser:
    return cli.job_parser(ALGORITHM)


def build_config(args: argparse.Namespace):
    return cli.build_job_config(ALGORITHM, args)


def main(args: argparse.Namespace) -> int:
    return cli.main(ALGORITHM, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
