"""Checks of a job's inputs that need neither Ray nor any decoding, run before Ray
starts: the source exists and holds images, the backbone exists and has its weights,
and the number of clusters fits the number of images. Each failure is one
:class:`~deimos_ray.errors.UsageError` line; what can only be known from the decoded
rows (unreadable files, a tiled collection's rows) is checked again later.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from deimos_ray.config import JobConfig
from deimos_ray.data.sources import detect_format
from deimos_ray.data.sources.base import IMAGE_EXTENSIONS, is_image_name
from deimos_ray.data.sources.files import list_image_files
from deimos_ray.errors import UsageError
from deimos_ray.models.backbones import check_backbone

DIGITS = 1797  # scikit-learn's built-in digits


def count_inputs(fmt: str, location: str) -> int | None:
    """How many images the source lists, where that is cheap to know without decoding
    (None for the layouts whose own rules pick the files: HiRISE, Galaxy Zoo)."""
    path = Path(location)
    if fmt == "digits":
        return DIGITS
    if fmt == "npz":
        with zipfile.ZipFile(path) as archive:
            if "images.npy" not in archive.namelist():
                raise UsageError(f"{path} has no 'images' array")
            with archive.open("images.npy") as member:
                major, _ = np.lib.format.read_magic(member)  # the header alone, not the array
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, _ = read_header(member)
        return int(shape[0]) if shape else 0
    if fmt == "folder":
        return len(list_image_files(path))
    if fmt == "zip":
        with zipfile.ZipFile(path) as archive:
            return sum(1 for name in archive.namelist() if is_image_name(name))
    if fmt == "manifest" and path.suffix.lower() == ".csv":
        with path.open("rb") as table:
            return max(0, sum(1 for line in table if line.strip()) - 1)
    if fmt in ("manifest", "parquet"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return None


def check_inputs(cfg: JobConfig, n_clusters: int | None) -> None:
    """Refuse, before any work, a source that is missing or holds no images, an unknown
    backbone or one without its weights, and more clusters than images.

    Raises:
        UsageError: naming the setting (config paths; the command line writes them as
            the flags the user typed).
    """
    try:
        fmt, location = detect_format(cfg.data.spec)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    try:
        check_backbone(cfg.features.backbone, cfg.features.weights)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    count = count_inputs(fmt, location)
    if count == 0:
        raise UsageError(f"{cfg.data.spec!r} holds no images (looked for "
                         f"{' '.join(sorted(IMAGE_EXTENSIONS))} files, in subfolders too)")
    if count is None or n_clusters is None or cfg.data.tile:  # tiles: rows are known after decoding
        return
    rows = min(count, cfg.data.limit or count)
    if n_clusters > rows:
        raise UsageError(f"model.n_clusters is {n_clusters} and {cfg.data.spec!r} holds "
                         f"{rows} images{' (data.limit)' if rows < count else ''}: there must be at "
                         "least as many images as clusters")
