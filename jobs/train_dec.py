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
import time
from pathlib import Path

from deimos_ray.config import from_dict, load_yaml, override, parse_override
from deimos_ray.data.sources import detect_format
from deimos_ray.pipeline import DECJobConfig, run_dec_job

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
    p.add_argument("--data", help="source: 'digits' (default), a .npz file or a folder of images; "
                   "a 'format:' prefix overrides detection")
    p.add_argument("--out", help="run directory (default runs/train_dec-<timestamp>); reuse one to resume")
    p.add_argument("--config", help="YAML config (see configs/train_dec.yaml); flags override it")
    p.add_argument("--k", type=int, help="number of clusters (default 10)")
    p.add_argument("--variant", choices=["dec", "idec"],
                   help="dec: KL loss only; idec: also keeps the reconstruction loss (slower, "
                   "preserves local structure)")
    p.add_argument("--epochs", type=int, help="upper bound on clustering epochs; training usually "
                   "stops earlier when fewer than tol of the labels change")
    p.add_argument("--pretrain-epochs", type=int, help="autoencoder pretraining epochs: the main "
                   "cost, and the main lever on quality")
    p.add_argument("--update-interval", type=int, help="steps between target-distribution updates "
                   "over the whole dataset (smaller: more full passes, closer tracking)")
    p.add_argument("--image-size", type=int, help="resize images to SIZE x SIZE (default: native "
                   "size of arrays, 28 for files); larger sizes cost quadratically")
    p.add_argument("--channels", type=int, choices=[1, 3], help="1 (grayscale, default) or 3 (RGB)")
    p.add_argument("--on-error", choices=["skip", "fail"], help="skip: record unreadable images in "
                   "rejected.parquet (default); fail: stop at the first")
    p.add_argument("--limit", type=int, help="use only the first N images (quick trials)")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (default 1; 0 runs in the "
                   "driver process, fastest to start)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field by dotted path, e.g. --set model.tol=0.0005 (repeatable)")
    p.add_argument("--smoke-test", action="store_true", help="the real code path on 300 images "
                   "with tiny epochs: checks an installation in about a minute")
    return p


def build_config(args: argparse.Namespace) -> DECJobConfig:
    """Config from defaults <- YAML file <- --smoke-test <- flags <- --set, validated."""
    cfg = from_dict(DECJobConfig, load_yaml(args.config)) if args.config else DECJobConfig()
    overrides: dict[str, object] = dict(SMOKE) if args.smoke_test else {}
    flags = {
        "data.spec": args.data, "model.n_clusters": args.k, "model.variant": args.variant,
        "model.epochs": args.epochs, "model.pretrain_epochs": args.pretrain_epochs,
        "model.update_interval": args.update_interval, "data.image_size": args.image_size,
        "data.channels": args.channels, "data.on_error": args.on_error, "data.limit": args.limit,
        "scaling.num_workers": args.num_workers, "seed": args.seed,
        "scaling.use_gpu": True if args.use_gpu else None,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    overrides.update(parse_override(s) for s in args.set)
    for key, value in overrides.items():
        cfg = override(cfg, key, value)
    return cfg


def main(args: argparse.Namespace) -> int:
    try:
        cfg = build_config(args)
        detect_format(cfg.data.spec)  # a missing path or unknown format fails before any work
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/{JOB}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dec_job(cfg, out, job=JOB)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
