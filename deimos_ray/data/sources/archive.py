"""Zip archives, read in place: members are decoded straight from the archive.

``__MACOSX/`` trees and dotfiles are skipped. These image members are never read and are
recorded as rejected (stage ``source``) with the reason, so they are accounted for like
every other input (:func:`screen_member`): names that are absolute or climb out with
``..``, symbolic links, a second member of the same name, and members whose
uncompressed size (``data.max_member_bytes``) or compression ratio
(``data.max_compression_ratio``, over 1 MiB) says they would flood a worker's memory.
The sizes are the archive's own directory entries, checked before any byte is inflated.
"""

from __future__ import annotations

import functools
import stat
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


RATIO_FLOOR_BYTES = 2**20  # smaller members expand to little whatever their ratio


def screen_member(info: zipfile.ZipInfo, seen: set[str], cfg) -> str | None:
    """Why the member ``info`` must not be read, or None when it is safe to read.

    ``seen`` holds the names met so far in the archive (this one is added); ``cfg`` is
    the :class:`~deimos_ray.config.DataConfig` with the limits.
    """
    name = info.filename
    duplicate = name in seen
    seen.add(name)
    if unsafe_member(name):
        return "unsafe member path (absolute or '..'); not read"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link member; not read"
    if duplicate:
        return "duplicate member name (an earlier member has it); not read"
    if info.file_size > cfg.max_member_bytes:
        return (f"uncompressed size {info.file_size} bytes exceeds data.max_member_bytes="
                f"{cfg.max_member_bytes}; not read")
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > RATIO_FLOOR_BYTES and ratio > cfg.max_compression_ratio:
        return (f"compression ratio {ratio:.0f}:1 exceeds data.max_compression_ratio="
                f"{cfg.max_compression_ratio:g}; not read")
    return None


def zip_members(path: Path, cfg) -> tuple[list[str], list[tuple[str, str]]]:
    """(image members safe to read, [(image member refused, why)]) of an archive, in
    archive order; hidden members are neither."""
    safe, refused = [], []
    seen: set[str] = set()
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or not is_image_name(name):
                continue
            why = screen_member(info, seen, cfg)
            if why and (why.startswith("unsafe") or not hidden(PurePosixPath(name).parts)):
                refused.append((name, why))  # '..' is reported even where it looks hidden
            elif not why and not hidden(PurePosixPath(name).parts):
                safe.append(name)
    return safe, refused


def refused_rows(archive: Path, refused: list[tuple[str, str]]) -> tuple[dict, ...]:
    """Rejected rows (stage ``source``) for the refused members of ``archive``."""
    return tuple({"id": m, "path": member_path(str(archive), m), "reason": why, "stage": "source"}
                 for m, why in refused)


def member_path(archive: str, member: str) -> str:
    """How a zip member is shown to people: ``archive.zip!/member``."""
    return f"{archive}!/{member}"


def load_zip_source(location: str, cfg) -> Source:
    """Every image member of a zip archive (any depth)."""
    path = Path(location)
    try:
        safe, refused = zip_members(path, cfg)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path} is not a readable zip archive: {exc}") from exc
    if not safe and not refused:
        raise ValueError(f"zip archive {path} holds no image files")
    columns = apply_limit(file_columns(
        safe, [str(path)] * len(safe), members=safe, paths=[member_path(str(path), m) for m in safe]
    ), cfg.limit)
    rejected = refused_rows(path, refused)
    n = len(columns["id"])
    dataset = table_dataset(columns) if n else None
    return Source(dataset, n + len(rejected), path.stem, "zip", has_labels=False, rejected=rejected)
