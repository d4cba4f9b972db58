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
level2/report/ (hits, U-matrix, members.png). Redraw the pictures with jobs/desom_report.py DIR.
"""

from __future__ import annotations

import argparse
import sys

from deimos_ray import cli
from deimos_ray.algorithms import get_algorithm
from deimos_ray.cli import add_common_args, add_restart_args, restart_overrides
from deimos_ray.config import DESOMJobConfig

JOB = "train_desom"
SMOKE = {
    "data.limit": 300,
    "model.iterations": 30,
    "model.hidden_dims": [64, 64],
    "model.map_size": [4, 4],
    "level2.iterations": 20,
    "level2.hidden_dims": [32, 16],
    "level2.latent_dim": 8,
    "level2.map_size": [3, 3],
    "checkpoint_interval_s": 0,
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, JOB)
    p.set_defaults(k=None)
    p.add_argument("--map-size", type=int, nargs=2, metavar=("ROWS", "COLS"),
                   help="SOM grid (default 8 8); --k groups its nodes into K clusters by "
                   "k-means over the prototypes, else every node is a cluster")
    p.add_argument("--iterations", type=int, help="training steps (default 10000)")
    p.add_argument("--autoencoder", choices=["dense", "conv"], help="dense (default) or conv")
    p.add_argument("--gamma", type=float, help="SOM loss weight (default 1e-3)")
    add_restart_args(p)
    p.add_argument("--levels", type=int, choices=[1, 2],
                   help="1 (default), or 2: also map the groups (exposures, source images) with "
                   "DESOM-2 over histo-vectors of their members' DESOM-1 nodes")
    p.add_argument("--level2-map-size", type=int, nargs=2, metavar=("ROWS", "COLS"),
                   help="DESOM-2 grid (default 20 20)")
    return p


def build_config(args: argparse.Namespace) -> DESOMJobConfig:
    if args.epochs is not None:
        raise ValueError("DESOM counts training in --iterations, not --epochs")
    return cli.build_config(DESOMJobConfig, args, SMOKE, {
        "model.map_size": args.map_size, "model.iterations": args.iterations,
        "model.autoencoder": args.autoencoder, "model.gamma": args.gamma,
        "level2.map_size": args.level2_map_size, "levels": args.levels, **restart_overrides(args),
    })


def main(args: argparse.Namespace) -> int:
    return cli.main(get_algorithm("desom"), build_config, args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
