"""Put new images into the clusters of a finished run, without training.

    deimos-ray assign --run runs/train_dac-20261203-071500 --data new_tiles/ --out runs/new

The run's own preprocessing, backbone and model (DIR/config.yaml, DIR/checkpoint/) assign
every readable image of --data in Ray Data model actors. New images of any format, size
or number of channels are brought to the run's own input (its image size and channels),
and the output says so once. The output folder holds the run's layout: assignments/ (the
same Parquet schema), rejected.parquet (every unreadable image with its reason),
config.yaml, metrics.json (accounting, and scores beside k-means on the new rows) and
report/index.html. A run with restarts assigns with every restart and combines them as
the run did. Assigning the training images again gives the run's clusters. The run must
be finished and made by this version of deimos_ray.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deimos_ray import progress
from deimos_ray.cli import add_verbose_arg, interruptible, usage_error
from deimos_ray.errors import UsageError
from deimos_ray.files import check_writable
from deimos_ray.new_images import assign_new
from deimos_ray.run_folder import check_assignable


def get_args_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``deimos-ray assign`` (and ``jobs/assign.py``)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished job's or sweep's folder")
    p.add_argument("--data", required=True, help="the new images: a folder, zip, .npz or manifest, as jobs take")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the assignments")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per model actor (and backbone replica)")
    p.add_argument("--no-report", action="store_true", help="skip report/index.html")
    add_verbose_arg(p)
    return p


@interruptible
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Check the run, the new images' source and ``--out`` (before Ray starts), then
    assign (:func:`deimos_ray.new_images.assign_new`)."""
    args = get_args_parser(prog).parse_args(argv)
    progress.configure(args.verbose)
    try:
        check_assignable(Path(args.run).resolve())
        check_writable(args.out)
        assign_new(args.run, args.data, args.out, use_gpu=args.use_gpu, report=not args.no_report)
    except (UsageError, FileNotFoundError) as exc:
        return usage_error(str(exc))
    return 0
