"""Train DAC (Deep Adaptive Clustering) on a set of images; one Parquet row per image.

Locally (starts a private Ray instance):
    python jobs/train_dac.py                                   # built-in digits
    python jobs/train_dac.py --data ../shared/data/usps.npz
    python jobs/train_dac.py --recipe reference              # the reference code's training
    python jobs/train_dac.py --data /path/to/hirise --originals-only --image-size 32 \\
        --set model.augmentation.rotate90=true --set model.augmentation.hflip=true

On a Ray cluster (the script joins the cluster it is submitted to):
    ray job submit --working-dir . -- python jobs/train_dac.py --data /shared/tiles \\
        --num-workers 4 --use-gpu --gather-pairs --out /shared/runs/dac-tiles
    ray job submit --working-dir . -- python jobs/train_dac.py --data /shared/usps.npz \\
        --recipe reference --restarts 8 --concurrent-restarts 8 --num-workers 1 --use-gpu

Outputs (DIR = --out): config.yaml, metrics.json, checkpoint/, assignments/*.parquet
(cluster, confidence, topk_clusters, topk_probs, embedding = label features),
rejected.parquet; with --restarts, restarts/R/ holds each restart's checkpoint and
assignments, and assignments/ their consensus. Rerunning with the same --out and the
same model settings resumes, schedule included.
"""

from __future__ import annotations

import argparse
import sys

from deimos_ray import cli
from deimos_ray.algorithms import get_algorithm

ALGORITHM = get_algorithm("dac")  # its flags, defaults and --smoke-test settings: deimos_ray/algorithms/dac.py
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
