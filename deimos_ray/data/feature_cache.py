"""The feature cache: backbone features written once as Parquet, read by every later run
or sweep trial over the same inputs.

An entry is the folder ``CACHE/<key>/`` holding ``features.parquet`` (the readable rows:
``id``, ``label``, ``group``, ``path``, metadata, ``x`` the feature vector, and the
``backbone`` and ``size`` that made it), ``rejected.parquet`` (the inputs the decode or
the backbone could not use, with the reason) and ``info.json``. The key is a digest of
everything the features depend on (:func:`cache_key`): the source's fingerprint (ids,
file names, sizes and modification times, or the array contents), the preprocessing
settings, the backbone, its weights file's digest (a timm model's library file too),
the input size, and this package's version. A changed input, setting or weights file
gives another key, so stale features are never read. An entry appears complete or not at all: it is written under a temporary
name and renamed into place; of two runs that write the same entry at once, the first
rename wins and the other discards its copy. ``info.json`` holds a SHA-256 of each file,
checked on every read: an entry that is truncated, corrupt or incomplete on disk is
named in a warning, removed and computed again, never read as features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.extensions import ArrowTensorArray

import deimos_ray
from deimos_ray.data.features import BANK_COLUMN
from deimos_ray.data.sources.base import Source
from deimos_ray.models.backbones import fetch_library_weights

# The one data setting that changes nothing the cache holds: how failures are handled.
NOT_IN_KEY = ("on_error",)
TENSOR_COLUMNS = ("x", BANK_COLUMN)  # stored as fixed-shape tensors, row-aligned
ADDED_SINCE = {"crop": None}  # data settings newer than the key's format: left out at their default
FEATURES_FILE, REJECTED_FILE, INFO_FILE = "features.parquet", "rejected.parquet", "info.json"


def _file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_fingerprint(source: Source) -> str:
    """A digest of the source's inputs: ids, file names with their sizes and modification
    times (zip archives: the archive's), array contents and encoded bytes, and the inputs
    refused before decoding."""
    digest = hashlib.sha256()
    digest.update(f"{source.format}:{source.num_inputs}".encode())
    for row in source.rejected:
        digest.update(f"rejected:{row.get('id')}:{row.get('reason')}".encode())
    if source.dataset is None:
        return digest.hexdigest()
    columns = [c for c in ("id", "file", "member", "image", "bytes") if c in source.dataset.columns()]
    stats: dict[str, str] = {}
    for batch in source.dataset.select_columns(columns).iter_batches(batch_size=4096, batch_format="numpy"):
        digest.update("\0".join(map(str, batch["id"])).encode())
        for file, member in zip(batch.get("file", []), batch.get("member", [""] * len(batch["id"])), strict=False):
            if file not in stats:
                st = os.stat(file)
                stats[file] = f"{st.st_size}:{st.st_mtime_ns}"
            digest.update(f"{file}!{member}:{stats[file]}".encode())
        for image in batch.get("image", []):
            digest.update(np.ascontiguousarray(image).tobytes())
        for data in batch.get("bytes", []):
            digest.update(bytes(data))
    return digest.hexdigest()


def cache_key(source: Source, data_cfg: Any, features_cfg: Any, image_size: int) -> str:
    """The entry's name: a digest of what the features depend on (module docstring)."""
    data = {k: v for k, v in dataclasses.asdict(data_cfg).items() if k not in NOT_IN_KEY}
    for name, default in ADDED_SINCE.items():  # so entries written before the field stay found
        if data.get(name) == default:
            del data[name]
    if data_cfg.metadata:
        st = os.stat(data_cfg.metadata)
        data["metadata_file"] = f"{st.st_size}:{st.st_mtime_ns}"
    parts = {
        "source": source_fingerprint(source),
        "data": data,
        "backbone": features_cfg.backbone,
        "weights": _file_digest(features_cfg.weights) if features_cfg.weights else None,
        "image_size": image_size,
        "version": deimos_ray.__version__,
    }
    if features_cfg.backbone.startswith("timm:") and not features_cfg.weights:
        # The Hub's file can change under the same name (torchvision's names carry their hash).
        parts["weights"] = _file_digest(fetch_library_weights(features_cfg.backbone))
    if features_cfg.views != "none":  # entries written before views existed stay found
        parts["views"] = features_cfg.views
    text = json.dumps(parts, sort_keys=True, default=str)
    return f"{features_cfg.backbone.replace(':', '-')}-{image_size}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"


def _damage(entry: Path) -> str | None:
    """Why the entry cannot be read (a missing or changed file, no checksums), or None."""
    try:
        info = json.loads((entry / INFO_FILE).read_text())
    except (OSError, ValueError) as exc:
        return f"{INFO_FILE} cannot be read ({exc})"
    checksums = info.get("sha256")
    if not isinstance(checksums, dict):
        return f"{INFO_FILE} holds no checksums (written by an older version)"
    for name, expected in checksums.items():
        if not (entry / name).is_file():
            return f"{name} is missing"
        if _file_digest(entry / name) != expected:
            return f"{name} does not match its checksum (truncated or changed on disk)"
    return None


def read_entry(cache_dir: Path, key: str) -> tuple[ray.data.Dataset, pd.DataFrame] | None:
    """(readable rows, rejected rows) of the entry ``key``, or None when there is none or
    it is damaged (then it is named in a warning and removed, to be computed again)."""
    entry = Path(cache_dir) / key
    if not entry.exists():
        return None
    damage = _damage(entry)
    if damage is not None:
        warnings.warn(f"feature cache entry {entry} is damaged: {damage}; it is removed and the features "
                      "are computed again", stacklevel=2)
        _remove(entry)
        return None
    if not (entry / FEATURES_FILE).is_file():  # no input was readable
        return ray.data.from_items([]), pd.read_parquet(entry / REJECTED_FILE)
    good = ray.data.read_parquet(str(entry / FEATURES_FILE)).drop_columns(["backbone", "size"])
    return good, pd.read_parquet(entry / REJECTED_FILE)


def _remove(entry: Path) -> None:
    """Remove an entry: renamed aside first, so no reader sees it half-deleted."""
    aside = entry.parent / f".{entry.name}.{uuid.uuid4().hex}.removed"
    try:
        os.rename(entry, aside)
    except OSError:  # another run removed (or replaced) it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def write_entry(cache_dir: Path, key: str, good: pa.Table, rejected: pd.DataFrame,
                backbone: str, image_size: int) -> None:
    """Write the entry ``key`` atomically: rows sorted by id, so every run that reads it
    sees the same order whatever order the extraction finished in."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    table = good if good.num_rows else None
    tmp = cache_dir / f".{key}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        files = [REJECTED_FILE]
        if table is not None:
            files.append(FEATURES_FILE)
            tensors = [c for c in TENSOR_COLUMNS if c in table.column_names]  # x, and a view bank
            frame = table.drop_columns(tensors).to_pandas()
            order = np.argsort(frame["id"].to_numpy(dtype=str), kind="stable")
            frame = frame.iloc[order].reset_index(drop=True)
            out = pa.Table.from_pandas(frame, preserve_index=False)
            n = len(frame)
            for column in tensors:
                values = np.stack(table.column(column).to_numpy(zero_copy_only=False)).astype(np.float32)
                shape = getattr(table.column(column).type, "shape", None)  # a tensor column comes out flat
                values = values.reshape(len(values), *shape) if shape else values
                out = out.append_column(column, ArrowTensorArray.from_numpy(values[order]))
                dim = int(values.shape[-1])
            out = out.append_column("backbone", pa.array([backbone] * n))
            out = out.append_column("size", pa.array([image_size] * n, pa.int32()))
            pq.write_table(out, tmp / FEATURES_FILE)
            rows = n
        else:
            rows, dim = 0, 0
        rejected.to_parquet(tmp / REJECTED_FILE, index=False)
        (tmp / INFO_FILE).write_text(json.dumps({"key": key, "backbone": backbone, "size": image_size,
                                                 "rows": rows, "dim": dim, "rejected": len(rejected),
                                                 "version": deimos_ray.__version__,
                                                 "sha256": {name: _file_digest(tmp / name) for name in files}},
                                                indent=2))
        try:
            os.rename(tmp, cache_dir / key)
        except OSError:  # another run wrote the same entry first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
