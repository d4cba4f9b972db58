"""Galaxy Zoo (Kaggle "Galaxy Zoo - The Galaxy Challenge") training images and votes.

Layout: ``images_training_rev1/<GalaxyID>.jpg`` and ``training_solutions_rev1.csv``
(``GalaxyID`` and 37 vote-fraction columns ``Class1.1`` ... ``Class11.6``). The GalaxyID
is the row id; the vote fractions become metadata columns. An optional label is derived
from the first question: elliptical (0) when ``Class1.1`` (smooth) exceeds a threshold,
spiral (1) when ``Class1.2`` (features or disk) does, else unknown (-1); both thresholds
default to 0.8. A plain folder-per-class galaxy set works through the folder source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deimos_ray.data.sources.base import (
    Source,
    apply_limit,
    file_columns,
    is_image_name,
    table_dataset,
)

SOLUTIONS = "training_solutions_rev1.csv"
IMAGES = "images_training_rev1"
ELLIPTICAL, SPIRAL = 0, 1


def is_galaxy_zoo(location: Path) -> bool:
    return location.is_dir() and (location / SOLUTIONS).is_file()


def derive_labels(votes: pd.DataFrame, elliptical: float, spiral: float) -> np.ndarray:
    """0 elliptical, 1 spiral, -1 neither, from the first question's vote fractions."""
    labels = np.full(len(votes), -1, dtype=np.int64)
    labels[votes["Class1.1"].to_numpy() > elliptical] = ELLIPTICAL
    labels[votes["Class1.2"].to_numpy() > spiral] = SPIRAL
    return labels


def load_galaxy_zoo_source(location: str, cfg) -> Source:
    """Images that have a votes row, labelled by :func:`derive_labels` when asked."""
    root = Path(location)
    votes = pd.read_csv(root / SOLUTIONS)
    if "GalaxyID" not in votes.columns or "Class1.1" not in votes.columns:
        raise ValueError(f"{root / SOLUTIONS} lacks the GalaxyID / Class1.1 columns")
    image_dir = root / IMAGES if (root / IMAGES).is_dir() else root
    present = {p.stem: p for p in image_dir.iterdir() if p.is_file() and is_image_name(p.name)}
    votes["GalaxyID"] = votes["GalaxyID"].astype(str)
    have = votes["GalaxyID"].isin(present)
    missing = int((~have).sum())
    votes = votes[have].reset_index(drop=True)
    if votes.empty:
        raise ValueError(f"none of the {missing} galaxies in {SOLUTIONS} has an image in {image_dir}")
    labels = derive_labels(votes, cfg.gz_elliptical, cfg.gz_spiral) if cfg.gz_labels else None
    vote_columns = [c for c in votes.columns if c.startswith("Class")]
    ids = votes["GalaxyID"].tolist()
    extra = {c: votes[c].astype(np.float32).to_numpy() for c in vote_columns}
    columns = apply_limit(file_columns(ids, [str(present[i]) for i in ids], labels=labels, extra=extra), cfg.limit)
    notes = (f"Galaxy Zoo: {len(ids)} galaxies with images, {missing} in the CSV without one",)
    return Source(table_dataset(columns), len(columns["id"]), root.name, "galaxy_zoo",
                  has_labels=labels is not None, missing=missing, notes=notes)
