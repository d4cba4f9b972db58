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
from deimos_ray.cli import add_common_args, add_restart_args, restart_overrides
from deimos_ray.config import DACJobConfig
from deimos_ray.models.dac import PAIR_LOSSES, RECIPES, SCHEDULES, SELECTIONS, TRUNKS

JOB = "train_dac"
SMOKE = {
    "data.limit": 300,
    "model.epochs": 2,
    "model.conv_widths": [8, 16],
    "model.hidden_dim": 16,
    "checkpoint_interval_s": 0,
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, JOB)
    p.add_argument("--recipe", choices=list(RECIPES), default="paper", help="paper (default: the "
                   "paper's algorithm) or reference (the reference MNIST code's training: one "
                   "threshold 0.9 to 0.7 over 20 epochs, chunk selection, squared-error loss, "
                   "small rotations/shifts/zooms); the flags below and --set override it")
    p.add_argument("--schedule", choices=SCHEDULES, help="threshold schedule: paper (default; "
                   "stops when u <= l, 46 epochs), deimos (u0/l0/u_coeff/l_coeff/lambda_step "
                   "via --set model.*), official (the reference code's single threshold)")
    p.add_argument("--selection", choices=SELECTIONS, help="batch (paper: each batch selects its "
                   "pairs) or chunk (reference: targets from a chunk of clean images, then "
                   "several passes over its augmented views)")
    p.add_argument("--pair-loss", choices=PAIR_LOSSES, help="bce (paper) or mse (reference code)")
    p.add_argument("--trunk", choices=TRUNKS, help="the network trained on pixels: vgg (default, "
                   "small 3x3 conv stacks) or resnet18 (unused with --backbone: DAC then trains "
                   "its head on the backbone's features)")
    p.add_argument("--fine-tune-backbone", action="store_true", help="with --backbone: train the "
                   "backbone under the head with the pair loss, on the images at --feature-size, "
                   "instead of the head alone on its cached features (costly on CPUs)")
    p.add_argument("--trunk-lr-ratio", type=float, help="with --fine-tune-backbone: the backbone's "
                   "learning rate as a fraction of --lr (default 0.1)")
    p.add_argument("--trunk-weights", help="ResNet-18 state dict file to start --trunk resnet18 "
                   "from (nothing is downloaded)")
    p.add_argument("--batch-size", type=int, help="images per step across all workers; pairs are "
                   "selected among them (default 128)")
    p.add_argument("--lr", type=float, help="RMSprop learning rate (default 0.001)")
    p.add_argument("--no-augment", action="store_true", help="train on the images only, "
                   "without the two augmented views per image")
    p.add_argument("--labeled-fraction", type=float, help="fraction of the labelled rows whose "
                   "labels join training as must-link / cannot-link pairs (default 0)")
    p.add_argument("--labeled-weight", type=float, help="weight of the labelled pairs' loss (default 1)")
    p.add_argument("--min-cluster-size", type=int, help="after training, merge clusters smaller "
                   "than this into their most similar cluster (default 0: off)")
    add_restart_args(p)
    p.add_argument("--gather-pairs", action="store_true", help="with several workers, select "
                   "pairs across the global batch (all-gathers the label features)")
    return p


def build_config(args: argparse.Namespace) -> DACJobConfig:
    return cli.build_config(DACJobConfig, args, SMOKE, {
        "model.schedule": args.schedule, "model.selection": args.selection,
        "model.pair_loss": args.pair_loss, "model.trunk": args.trunk,
        "model.trunk_weights": args.trunk_weights,
        "model.fine_tune_backbone": True if args.fine_tune_backbone else None,
        "model.trunk_lr_ratio": args.trunk_lr_ratio,
        "model.batch_size": args.batch_size,
        "model.lr": args.lr, "model.augment": False if args.no_augment else None,
        "model.labeled_fraction": args.labeled_fraction, "model.labeled_weight": args.labeled_weight,
        "min_cluster_size": args.min_cluster_size,
        "model.gather_pairs": True if args.gather_pairs else None,
        **restart_overrides(args),
    }, preset=RECIPES[args.recipe])


def main(args: argparse.Namespace) -> int:
    return cli.main(get_algorithm("dac"), build_config, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
