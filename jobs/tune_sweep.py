"""Sweep the number of clusters (and any other setting) with Ray Tune: the entry point of
``deimos-ray sweep`` for ``ray job submit`` (the script joins the cluster it is submitted
to); its flags and help: deimos_ray/commands/sweep.py.

    ray job submit --working-dir . -- python jobs/tune_sweep.py --algorithm dec \\
        --data /shared/tiles --backbone efficientnet_lite0 --k 4 6 8 10 12 --out /shared/runs/sweep
"""

from __future__ import annotations

import argparse
import sys

from deimos_ray.commands import sweep
from deimos_ray.commands.sweep import JOB, get_args_parser, parse_grid  # noqa: F401  (the job's contract)


def main(args: argparse.Namespace) -> int:
    return sweep.run(args)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
