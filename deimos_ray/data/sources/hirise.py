"""HiRISE Mars orbital landmark releases (Doran et al.; Zenodo 2538136 and 4002935).

Layouts, as a folder or as the release zip:

- v3: ``labels-map-proj-v3.txt`` (``filename class_id``), ``map-proj-v3/``,
  ``landmarks_map-proj-v3_classmap.csv`` (``class_id,name``, no header);
- v3.2: ``labels-map-proj_v3_2.txt`` (also spelled ``labels-map-proj-v3_2.txt``),
  ``labels-map-proj_v3_2_train_val_test.txt`` (``filename class_id set``),
  ``map-proj-v3_2/``, ``landmarks_map-proj-v3_2_classmap.csv``; its zip has a
  ``__MACOSX/`` tree, skipped.

File names carry the augmentation that made a copy: ``-r90``, ``-r180``, ``-r270``
(rotations), ``-fh``, ``-fv`` (flips), ``-brt`` (brightness). A copy's ``group`` is its
original's id, so scores can be computed on originals and copies stay with them;
``originals_only`` keeps the originals alone. Files the labels list but the folder lacks
(a partial download) are counted and reported, not fatal.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deimos_ray.data.sources.archive import member_path, refused_rows, screen_member
from deimos_ray.data.sources.base import (
    Source,
    apply_limit,
    file_columns,
    hidden,
    is_image_name,
    table_dataset,
)

LABELS_RE = re.compile(r"labels-map-proj[-_]v3(?:[-_]2)?\.txt$")
SPLITS_RE = re.compile(r"labels-map-proj[-_]v3[-_]2_train_val_test\.txt$")
CLASSMAP_RE = re.compile(r"landmarks_map-proj[-_]v3(?:[-_]2)?_classmap\.csv$")
AUGMENTATION_RE = re.compile(r"-(r90|r180|r270|fh|fv|brt)$")


def split_augmentation(filename: str) -> tuple[str, str]:
    """(original's file name, augmentation tag or '') of a landmark file name."""
    stem, ext = filename.rsplit(".", 1) if "." in filename else (filename, "")
    m = AUGMENTATION_RE.search(stem)
    if not m:
        return filename, ""
    original = stem[: m.start()]
    return (f"{original}.{ext}" if ext else original), m.group(1)


@dataclass
class _Listing:
    """The files of a release, from a folder or a zip, by relative posix name."""

    root: Path
    names: list[str]
    is_zip: bool
    refused: list[tuple[str, str]]  # zip image members never read, and why

    @classmethod
    def of(cls, location: Path, cfg) -> _Listing:
        if location.is_dir():
            names = [p.relative_to(location).as_posix() for p in location.rglob("*") if p.is_file()]
            return cls(location, names, False, [])
        names, refused, seen = [], [], set()
        with zipfile.ZipFile(location) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                why = screen_member(info, seen, cfg)
                if why is None:
                    names.append(info.filename)
                elif is_image_name(info.filename):
                    refused.append((info.filename, why))
        return cls(location, names, True, refused)

    def visible(self) -> list[str]:
        return [n for n in self.names if not hidden(PurePosixPath(n).parts)]

    def find(self, pattern: re.Pattern) -> str | None:
        matches = sorted(n for n in self.visible() if pattern.search(PurePosixPath(n).name))
        return matches[0] if matches else None

    def read_text(self, name: str) -> str:
        if self.is_zip:
            with zipfile.ZipFile(self.root) as zf:
                return zf.read(name).decode("utf-8", errors="replace")
        return (self.root / name).read_text(errors="replace")


def is_hirise(location: Path) -> bool:
    """True when a folder (top level or one below) or a zip holds a HiRISE labels file.

    Folders are not walked in full: detection must stay cheap on folders of millions of
    images.
    """
    try:
        if location.is_dir():
            candidates = [*location.glob("*.txt"), *location.glob("*/*.txt")]
            return any(LABELS_RE.search(p.name) for p in candidates)
        with zipfile.ZipFile(location) as zf:
            return any(LABELS_RE.search(PurePosixPath(n).name) and not hidden(PurePosixPath(n).parts)
                       for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _parse_labels(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip()]


def load_hirise_source(location: str, cfg) -> Source:
    """Rows for every landmark file present, labelled from the release's lists."""
    listing = _Listing.of(Path(location), cfg)
    labels_name = listing.find(SPLITS_RE) or listing.find(LABELS_RE)
    if labels_name is None:
        raise ValueError(f"{location} holds no HiRISE labels file (labels-map-proj-v3.txt or _v3_2)")
    lines = _parse_labels(listing.read_text(labels_name))
    classmap_name = listing.find(CLASSMAP_RE)
    classes = {}
    if classmap_name:
        for row in listing.read_text(classmap_name).splitlines():
            if "," in row:
                key, name = row.split(",", 1)
                if key.strip().isdigit():
                    classes[int(key)] = name.strip()
    # Images: any image file in the release (normally under map-proj-v3*/), by base name.
    images = {PurePosixPath(n).name: n for n in listing.visible() if is_image_name(n) and n != labels_name}

    ids, files, members, paths, labels, groups = [], [], [], [], [], []
    extra = {"class_name": [], "augmentation": [], "set": []}
    listed, missing = set(), 0
    refused = {PurePosixPath(name).name for name, _ in listing.refused}
    for parts in lines:
        filename, class_id = parts[0], int(parts[1]) if len(parts) > 1 else -1
        listed.add(filename)
        original, tag = split_augmentation(filename)
        if cfg.originals_only and tag:
            continue
        if filename not in images:
            missing += filename not in refused  # a refused member is a rejected row, not missing
            continue
        _append(listing, images[filename], filename, original, class_id, tag,
                parts[2] if len(parts) > 2 else "", classes, ids, files, members, paths, labels, groups, extra)
    unlisted = sorted(set(images) - listed)
    for filename in unlisted:  # present but not in the labels: kept, unlabelled
        original, tag = split_augmentation(filename)
        if cfg.originals_only and tag:
            continue
        _append(listing, images[filename], filename, original, -1, tag, "", classes,
                ids, files, members, paths, labels, groups, extra)
    if not ids:
        raise ValueError(f"{location}: the labels list {len(lines)} files but none of them is present")
    columns = apply_limit(file_columns(ids, files, labels=labels, groups=groups, members=members,
                                       paths=paths, extra=extra), cfg.limit)
    notes = (
        f"HiRISE labels {PurePosixPath(labels_name).name}: {len(lines)} lines; "
        f"{len(ids)} files used{' (originals only)' if cfg.originals_only else ''}; "
        f"{missing} listed but missing; {len(unlisted)} present but unlisted",
    )
    rejected = refused_rows(listing.root, listing.refused)
    return Source(table_dataset(columns), len(columns["id"]) + len(rejected), Path(location).stem, "hirise",
                  has_labels=True, missing=missing, notes=notes, rejected=rejected)


def _append(listing, name, filename, original, class_id, tag, split, classes,
            ids, files, members, paths, labels, groups, extra) -> None:
    ids.append(filename)
    groups.append(original)
    labels.append(class_id)
    if listing.is_zip:
        files.append(str(listing.root))
        members.append(name)
        paths.append(member_path(str(listing.root), name))
    else:
        files.append(str(listing.root / name))
        members.append("")
        paths.append(str(listing.root / name))
    extra["class_name"].append(classes.get(class_id, ""))
    extra["augmentation"].append(tag)
    extra["set"].append(split)
