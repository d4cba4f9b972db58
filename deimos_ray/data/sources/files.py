"""Folders of images and manifests (CSV or Parquet tables of paths)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from deimos_ray.data.sources.base import (
    Source,
    apply_limit,
    file_columns,
    hidden,
    is_image_name,
    reserved_clash,
    table_dataset,
)


def list_image_files(root: Path) -> list[Path]:
    """Image files below ``root`` (any depth, extensions in any case), sorted, no dotfiles."""
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and is_image_name(p.name) and not hidden(p.relative_to(root).parts)
    )


def encode_class_names(names: list[str | None]) -> tuple[np.ndarray, list[str]]:
    """Integer labels for class names in sorted order; None becomes -1."""
    classes = sorted({n for n in names if n})
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[n] if n else -1 for n in names], dtype=np.int64), classes


def load_folder_source(location: str, cfg) -> Source:
    """Every image file below a folder; with ``labels_from_folders`` the parent folder's
    name is the class (files directly in the root stay unlabelled)."""
    root = Path(location)
    files = list_image_files(root)
    if not files:
        raise ValueError(f"folder {root} holds no image files (any of .jpg .jpeg .png .tif .tiff .bmp .gif .webp)")
    ids = [p.relative_to(root).as_posix() for p in files]
    extra, labels, notes = {}, None, ()
    if cfg.labels_from_folders:
        names = [p.parent.name if p.parent != root else None for p in files]
        labels, classes = encode_class_names(names)
        extra["class_name"] = [n or "" for n in names]
        notes = (f"classes from folder names: {', '.join(f'{i}={c}' for i, c in enumerate(classes))}",)
    columns = apply_limit(file_columns(ids, [str(p) for p in files], labels=labels, extra=extra), cfg.limit)
    return Source(table_dataset(columns), len(columns["id"]), root.name, "folder",
                  has_labels=bool(cfg.labels_from_folders), notes=notes)


def load_manifest_source(location: str, cfg) -> Source:
    """A CSV or Parquet table with a ``path`` column and optional ``id``, ``label``,
    ``group`` and metadata columns; relative paths resolve against the table's folder.

    A listed file that does not exist is an input like any other: it is rejected with
    the reason when it cannot be read.
    """
    path = Path(location)
    df = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    if "path" not in df.columns:
        raise ValueError(f"manifest {path} needs a 'path' column (found {list(df.columns)})")
    if df.empty:
        raise ValueError(f"manifest {path} lists no images")
    clash = reserved_clash(df.columns, allowed=("path", "id", "label", "group"))
    if clash:
        raise ValueError(f"manifest {path}: columns {clash} are deimos_ray's own; rename them")
    files = [str(p if Path(p).is_absolute() else (path.parent / p)) for p in df["path"].astype(str)]
    ids = df["id"].astype(str).tolist() if "id" in df.columns else df["path"].astype(str).tolist()
    if len(set(ids)) != len(ids):
        raise ValueError(f"manifest {path}: ids must be unique (give an 'id' column)")
    labels, extra = None, {}
    if "label" in df.columns:
        if pd.api.types.is_numeric_dtype(df["label"]):
            labels = df["label"].fillna(-1).astype(np.int64).to_numpy()
        else:  # class names: encode in sorted order, keep the names
            labels, _ = encode_class_names([None if pd.isna(v) else str(v) for v in df["label"]])
            extra["class_name"] = df["label"].fillna("").astype(str).tolist()
    groups = df["group"].astype(str).tolist() if "group" in df.columns else None
    for col in df.columns:
        if col not in ("path", "id", "label", "group"):
            extra[str(col)] = df[col].tolist()
    columns = apply_limit(file_columns(ids, files, labels=labels, groups=groups,
                                       paths=df["path"].astype(str).tolist(), extra=extra), cfg.limit)
    return Source(table_dataset(columns), len(columns["id"]), path.stem, "manifest",
                  has_labels=labels is not None and bool((np.asarray(labels) >= 0).any()))
