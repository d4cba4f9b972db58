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
from deimos_ray.cli import add_common_args
from deimos_ray.config import DECJobConfig

JOB = "train_dec"
SMOKE = {
    "data.limit": 300,
    "model.pretrain_epochs": 2,
    "model.epochs": 2,
    "model.update_interval": 2,
    "model.hidden_dims": [64, 64, 128],
    "model.kmeans_n_init": 2,
    "checkpoint_interval_s": 0,
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, JOB)
    p.add_argument("--variant", choices=["dec", "idec"],
                   help="dec: KL loss only; idec: also keeps the reconstruction loss (slower, "
                   "preserves local structure)")
    p.add_argument("--pretrain-epochs", type=int, help="autoencoder pretraining epochs: the main "
                   "cost, and the main lever on quality")
    p.add_argument("--update-interval", type=int, help="steps between target-distribution updates "
                   "over the whole dataset (smaller: more full passes, closer tracking)")
    return p


def build_config(args: argparse.Namespace) -> DECJobConfig:
    return cli.build_config(DECJobConfig, args, SMOKE, {
        "model.variant": args.variant, "model.pretrain_epochs": args.pretrain_epochs,
        "model.update_interval": args.update_interval,
    })


def main(args: argparse.Namespace) -> int:
    return cli.main(get_algorithm("dec"), build_config, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
