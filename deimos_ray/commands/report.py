"""Draw (or redraw) a finished run's report pages from its files, without training.

    deimos-ray report runs/train_dac-20261203-071500

Writes DIR/report/index.html: the cluster sizes, the scores beside the baselines, the
2-D map of the rows, per cluster its most and least confident images and a page with
every member (DIR/report/clusters/), DESOM's maps and a sweep's trials. Every job, sweep
and assignment draws it at its end; this redraws it from the run's folder alone: the
thumbnails are kept in DIR/report/ by the first drawing, and the source is read only for
images missing there. Open the page in any browser: it loads nothing from the network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deimos_ray import progress
from deimos_ray.cli import add_verbose_arg, interruptible, usage_error
from deimos_ray.report.page import write_report
from deimos_ray.run_folder import NotAFinishedRun, read_run
from deimos_ray.runtime import init_ray


def get_args_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``deimos-ray report`` (and ``jobs/report.py``)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished job's, sweep's or assignment's folder")
    p.add_argument("--no-images", action="store_true",
                   help="draw the page without images (and without starting Ray)")
    add_verbose_arg(p)
    return p


@interruptible
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Check that ``run_dir`` holds a finished run (before Ray starts), then draw its report."""
    args = get_args_parser(prog).parse_args(argv)
    progress.configure(args.verbose)
    try:
        read_run(Path(args.run_dir).resolve())
        if not args.no_images:
            init_ray()
        print(f"[report] open {write_report(args.run_dir, images=not args.no_images)}")
    except NotAFinishedRun as exc:
        return usage_error(str(exc))
    return 0
