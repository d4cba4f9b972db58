"""The schema every source produces, and helpers shared by the formats.

Rows: ``id`` (stable string), ``label`` (int, -1 unknown), ``group`` (string: the
original a copy or a tile belongs with; the row's own id by default), ``path`` (where a
person finds the image; for a zip member ``archive.zip!/member``), any metadata columns,
and exactly one way to get the pixels:

- ``image``: an already decoded array (H, W, C) (NumPy sources);
- ``bytes``: the encoded file (Parquet tables of images);
- ``file`` and ``member``: a file on disk, or, with ``member`` non-empty, the member of
  the zip archive ``file``.

Columns whose names start with ``_`` never reach the outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import ray

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")
PIXEL_COLUMNS = ("image", "bytes", "file", "member")
FILE_ROWS_PER_BLOCK = 256  # decoding is the expensive step: small blocks spread it


@dataclass(frozen=True)
class Source:
    """A loaded source: the dataset, how many inputs it holds and what it is.

    Attributes:
        dataset: Rows in the schema above.
        num_inputs: Images in the dataset (each ends assigned or rejected).
        name: Short name for messages and run names.
        format: The format that read it.
        has_labels: Whether any row has a known label.
        image_shape: (H, W, C) when every image has the same known shape (arrays).
        missing: Images a labels list or manifest names that do not exist; counted and
            reported, never fatal.
        notes: Lines worth printing about how the source was read.
        rejected: Inputs refused before decoding (e.g. unsafe zip members), as rows of
            ``id, path, reason, stage``; they count among ``num_inputs``.
    """

    dataset: ray.data.Dataset | None  # None when no input survived the source stage
    num_inputs: int
    name: str
    format: str
    has_labels: bool
    image_shape: tuple[int, ...] | None = None
    missing: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    rejected: tuple[dict, ...] = field(default_factory=tuple)


# Columns deimos_ray itself writes or reads on the way to the Parquet rows; a metadata
# column of the same name would shadow or be shadowed by them.
RESERVED_COLUMNS = frozenset({
    "id", "path", "group", "label", "image", "bytes", "file", "member", "x", "ok", "reason", "stage",
    "cluster", "confidence", "embedding", "topk_clusters", "topk_probs", "som_row", "som_col",
    "bmu_distance", "x2d", "y2d", "tile_y", "tile_x", "class_name", "augmentation", "set",
})


def reserved_clash(columns, allowed=()) -> list[str]:
    """The ``columns`` of a user's table (manifest, metadata CSV) named like one of
    deimos_ray's own (:data:`RESERVED_COLUMNS`, or starting with ``_``), but ``allowed``."""
    return sorted(str(c) for c in columns
                  if str(c) not in allowed and (str(c) in RESERVED_COLUMNS or str(c).startswith("_")))

def is_image_name(name: str) -> bool:
    """True for file names with an image extension (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def hidden(parts: Sequence[str]) -> bool:
    """True when any path component is a dotfile/dot-folder or macOS metadata."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def table_dataset(columns: dict[str, Sequence], rows_per_block: int = FILE_ROWS_PER_BLOCK) -> ray.data.Dataset:
    """A Ray Dataset of the given columns, cut into blocks of ``rows_per_block`` rows."""
    table = pa.table(dict(columns))
    if table.num_rows == 0:
        raise ValueError("the source holds no images")
    blocks = [table.slice(s, rows_per_block) for s in range(0, table.num_rows, rows_per_block)]
    return ray.data.from_arrow(blocks)


def rechunk(ds: ray.data.Dataset, rows_per_block: int) -> ray.data.Dataset:
    """A source's rows in blocks of at most ``rows_per_block``, in the same order.

    Sources build their blocks in the driver (:func:`table_dataset`, array sources), so
    they are cut again there; Ray Data's ``repartition`` would need a task and a CPU
    beside the actors that may already hold every one.
    """
    tables = ray.get(ds.to_arrow_refs())
    return ray.data.from_arrow([t.slice(s, rows_per_block) for t in tables
                                for s in range(0, t.num_rows, rows_per_block)])


def file_columns(ids: Sequence[str], files: Sequence[str], labels=None, groups=None,
                 members: Sequence[str] | None = None, paths: Sequence[str] | None = None,
                 extra: dict[str, Sequence] | None = None) -> dict[str, Sequence]:
    """Columns of file-backed rows with the defaults filled in."""
    n = len(ids)
    return {
        "id": list(ids),
        "label": np.asarray(labels if labels is not None else np.full(n, -1), dtype=np.int64),
        "group": list(groups if groups is not None else ids),
        "path": list(paths if paths is not None else files),
        "file": list(files),
        "member": list(members if members is not None else [""] * n),
        **(extra or {}),
    }


def apply_limit(columns: dict[str, Sequence], limit: int | None) -> dict[str, Sequence]:
    """The first ``limit`` rows of every column (all when ``limit`` is None)."""
    if limit is None:
        return columns
    return {k: v[:limit] for k, v in columns.items()}
