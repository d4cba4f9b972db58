"""Draw (or redraw) a finished run's report page from its files, without training.

    python jobs/report.py runs/train_dac-20261203-071500

Writes DIR/report/index.html with, per cluster, montages of its most and least confident
images, the 2-D map of the embedding (x2d, y2d added to the assignments), the cluster
sizes, the scores beside the baselines, DESOM's maps and a sweep's trials. Every job,
sweep and assignment draws it at its end; this redraws it from the run's folder alone:
the montage images are kept in DIR/report/images.npz by the first drawing, and the
source is read only for images missing there. Open the page in any browser: it loads
nothing from the network.
"""

from __future__ import annotations

import argparse
import sys

from deimos_ray.cli import interruptible
from deimos_ray.report.page import write_report
from deimos_ray.run_folder import NotAFinishedRun
from deimos_ray.runtime import init_ray


@interruptible
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished job's, sweep's or assignment's folder")
    p.add_argument("--no-images", action="store_true",
                   help="draw the page without montages (and without starting Ray)")
    args = p.parse_args(argv)
    try:
        if not args.no_images:
            init_ray(quiet=True)
        print(write_report(args.run_dir, images=not args.no_images))
    except NotAFinishedRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
