"""Zip archives, read in place: members are decoded straight from the archive.

``__MACOSX/`` trees and dotfiles are skipped. Members whose names are absolute or climb
out with ``..`` are never read: they are recorded as rejected (stage ``source``), so
they are accounted for like every other input.
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path, PurePosixPath

from deimos_ray.data.sources.base import (
    Source,
    apply_limit,
    file_columns,
    hidden,
    is_image_name,
    table_dataset,
)


@functools.lru_cache(maxsize=8)
def open_zip(path: str) -> zipfile.ZipFile:
    """A process-wide open handle per archive (decode tasks read many members)."""
    return zipfile.ZipFile(path)


def unsafe_member(name: str) -> bool:
    """True for absolute member names, drive letters and any ``..`` component."""
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


def zip_members(path: Path) -> tuple[list[str], list[str]]:
    """(safe image members, unsafe image-named members) of an archive, in archive order."""
    safe, unsafe = [], []
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or not is_image_name(name):
                continue
            if unsafe_member(name):  # checked first: '..' must be reported, not skipped as hidden
                unsafe.append(name)
            elif not hidden(PurePosixPath(name).parts):
                safe.append(name)
    return safe, unsafe


def member_path(archive: str, member: str) -> str:
    """How a zip member is shown to people: ``archive.zip!/member``."""
    return f"{archive}!/{member}"


def load_zip_source(location: str, cfg) -> Source:
    """Every image member of a zip archive (any depth)."""
    path = Path(location)
    try:
        safe, unsafe = zip_members(path)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path} is not a readable zip archive: {exc}") from exc
    if not safe and not unsafe:
        raise ValueError(f"zip archive {path} holds no image files")
    columns = apply_limit(file_columns(
        safe, [str(path)] * len(safe), members=safe, paths=[member_path(str(path), m) for m in safe]
    ), cfg.limit)
    rejected = tuple(
        {"id": m, "path": member_path(str(path), m), "reason": "unsafe member path (absolute or '..'); not read", "stage": "source"}
        for m in unsafe
    )
    n = len(columns["id"])
    dataset = table_dataset(columns) if n else None
    return Source(dataset, n + len(rejected), path.stem, "zip", has_labels=False, rejected=rejected)
