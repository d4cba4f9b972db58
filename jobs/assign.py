"""Put new images into the clusters of a finished run, without training.

    python jobs/assign.py --run runs/train_dac-20261203-071500 --data new_tiles/ --out runs/new

The run's own preprocessing, backbone and model (DIR/config.yaml, DIR/checkpoint/) assign
every readable image of --data in Ray Data model actors; the output folder holds the
run's layout: assignments/ (the same Parquet schema), rejected.parquet (every unreadable
image with its reason), config.yaml, metrics.json (accounting, and scores beside k-means
on the new rows) and report/index.html. A run with restarts assigns with every restart
and combines them as the run did. Assigning the training images again gives the run's
clusters. The run must be finished and made by this version of deimos_ray.
"""

from __future__ import annotations

import argparse
import sys

from deimos_ray.cli import interruptible
from deimos_ray.errors import UsageError
from deimos_ray.files import check_writable
from deimos_ray.new_images import assign_new


@interruptible
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished job's or sweep's folder")
    p.add_argument("--data", required=True, help="the new images: a folder, zip, .npz or manifest, as jobs take")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the assignments")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per model actor (and backbone replica)")
    p.add_argument("--no-report", action="store_true", help="skip report/index.html")
    args = p.parse_args(argv)
    try:
        check_writable(args.out)
        assign_new(args.run, args.data, args.out, use_gpu=args.use_gpu, report=not args.no_report)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
