"""Redraw a finished DESOM run's pictures from its checkpoint and Parquet, no training.

    python jobs/desom_report.py runs/train_desom-20261123-101500

Writes DIR/report/prototypes.png (image inputs), hits.png and umatrix.png, and for a
two-level run DIR/level2/report/hits.png and umatrix.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deimos_ray.report import draw_desom_report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a train_desom run directory")
    args = p.parse_args()
    run = Path(args.run_dir)
    if not (run / "checkpoint").is_dir() or not (run / "assignments").is_dir():
        print(f"error: {run} has no checkpoint/ and assignments/ (not a finished DESOM run)", file=sys.stderr)
        return 2
    written = draw_desom_report(run)
    if (run / "level2" / "checkpoint").is_dir() and (run / "groups.parquet").is_file():
        written += draw_desom_report(run / "level2", assignments=run / "groups.parquet")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
