"""Train DEC or IDEC on a set of images and write one Parquet row per image.

The entry point of ``deimos-ray train dec`` for ``ray job submit`` (the script
joins the cluster it is submitted to); its flags and help: deimos_ray/algorithms/dec.py.

    ray job submit --working-dir . -- python jobs/train_dec.py --data /shared/images --num-workers 4
"""

from __future__ import annotations

import argparse
import sys

from deimos_ray import cli
from deimos_ray.algorithms import get_algorithm

ALGORITHM = get_algorithm("dec")  # its flags, defaults and --smoke-test settings: deimos_ray/algorithms/dec.py
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
