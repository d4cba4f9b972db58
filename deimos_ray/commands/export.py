"""Take a run's clusters elsewhere: a CSV any spreadsheet opens, or one folder per
cluster any image viewer browses.

    deimos-ray export runs/train_dac-20261203-071500 --csv clusters.csv
    deimos-ray export runs/train_dac-20261203-071500 --folders by_cluster/
    deimos-ray export runs/sweep-dec --folders by_cluster/ --copy

--csv writes one row per assigned image: id, path, cluster, confidence and the
algorithm's other per-image columns (DESOM's map node, the 2-D map's x2d, y2d, the label
when known), largest cluster first. --folders makes DIR/cluster_<c>/ for every cluster,
holding a link to each member's source file (--copy: a copy), named by its id; members
with no file of their own (array sources, archive members, tiles, image bytes in a
table) are written as PNG, decoded by the run's own preprocessing (this starts Ray).
A sweep's folder exports the clustering it adopted; an assignment's folder, its new rows.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from deimos_ray import progress
from deimos_ray.cli import add_verbose_arg, interruptible, usage_error
from deimos_ray.errors import UsageError
from deimos_ray.files import write_atomic
from deimos_ray.report.montages import load_images
from deimos_ray.run_folder import NotAFinishedRun, read_run
from deimos_ray.runtime import init_ray

LIST_COLUMNS = ("embedding", "topk_clusters", "topk_probs")  # vectors: not for a CSV cell
FIRST_COLUMNS = ("id", "path", "cluster", "confidence")


def get_args_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The flags of ``deimos-ray export``."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished job's, sweep's or assignment's folder")
    p.add_argument("--csv", metavar="FILE", help="write one row per image to FILE")
    p.add_argument("--folders", metavar="DIR", help="make DIR/cluster_<c>/ per cluster with its members")
    p.add_argument("--copy", action="store_true", help="--folders: copy the files instead of linking them")
    add_verbose_arg(p)
    return p


def read_members(run: Path) -> pd.DataFrame:
    """The run's assigned rows without vector columns, largest cluster first (then by
    confidence, surest first, where the algorithm gives one)."""
    table = pq.read_table(run / "assignments")
    frame = table.select([c for c in table.column_names if c not in LIST_COLUMNS]).to_pandas()
    frame["size"] = frame.groupby("cluster")["id"].transform("size")
    keys, ascending = ["size", "cluster"], [False, True]
    if "confidence" in frame:
        keys, ascending = [*keys, "confidence"], [*ascending, False]
    frame = frame.sort_values(keys, ascending=ascending, kind="stable").drop(columns="size")
    first = [c for c in FIRST_COLUMNS if c in frame]
    return frame[first + [c for c in frame.columns if c not in first]].reset_index(drop=True)


def write_csv(members: pd.DataFrame, path: Path) -> None:
    """``members`` as CSV at ``path`` (written whole, then renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: members.to_csv(tmp, index=False))


def safe_name(row_id: str) -> str:
    """A file name for a row id (path separators and odd characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", row_id).strip("._") or "image"


def write_folders(cfg: Any, members: pd.DataFrame, root: Path, copy: bool) -> tuple[int, int]:
    """One folder per cluster under ``root``; returns (files linked or copied, images
    written as PNG)."""
    root.mkdir(parents=True, exist_ok=True)
    has_file = pd.Series(False, index=members.index)
    if "path" in members and cfg.data.tile is None:  # a tiled file holds many rows: each is a PNG
        has_file = members["path"].map(lambda p: bool(p) and os.path.isfile(p))
    linked = 0
    for row in members[has_file].itertuples():
        source = Path(row.path)
        target = root / f"cluster_{row.cluster}" / (safe_name(row.id).removesuffix(source.suffix) + source.suffix)
        target.parent.mkdir(exist_ok=True)
        target.unlink(missing_ok=True)
        if copy:
            shutil.copyfile(source, target)
        else:
            target.symlink_to(source.resolve())
        linked += 1
    decoded = members[~has_file]
    written = _write_pngs(cfg, decoded, root) if len(decoded) else 0
    return linked, written


def _write_pngs(cfg: Any, rows: pd.DataFrame, root: Path) -> int:
    """Decode ``rows`` from the run's source (its preprocessing, at most the report's
    picture size), write each as ``cluster_<c>/<id>.png`` and return how many were
    written (a row the source no longer holds is not)."""
    init_ray()
    images = load_images(cfg, rows["id"].tolist())
    for row in rows.itertuples():
        if row.id not in images:
            continue
        x = np.round(np.clip(images[row.id], 0, 1) * 255).astype(np.uint8)
        picture = Image.fromarray(x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1))
        target = root / f"cluster_{row.cluster}" / f"{safe_name(row.id)}.png"
        target.parent.mkdir(exist_ok=True)
        picture.save(target)
    return sum(1 for i in rows["id"] if i in images)


@interruptible
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Check the run folder and the flags, then write the CSV and/or the folders."""
    args = get_args_parser(prog).parse_args(argv)
    progress.configure(args.verbose)
    try:
        if not (args.csv or args.folders):
            raise UsageError("name what to write: --csv FILE and/or --folders DIR")
        run = Path(args.run_dir).resolve()
        _, cfg = read_run(run)
        members = read_members(run)
        if args.csv:
            write_csv(members, Path(args.csv))
            print(f"[export] {args.csv}: {len(members)} rows, {members['cluster'].nunique()} clusters")
        if args.folders:
            linked, written = write_folders(cfg, members, Path(args.folders), args.copy)
            how = "copied" if args.copy else "linked"
            missing = len(members) - linked - written
            print(f"[export] {args.folders}: {members['cluster'].nunique()} cluster folders, "
                  f"{linked} files {how}, {written} images written as PNG"
                  + (f", {missing} no longer in the source (the CSV lists them)" if missing else ""))
    except (UsageError, NotAFinishedRun) as exc:
        return usage_error(str(exc))
    return 0
