"""From a source spec to the rows a model trains on: load, join metadata, decode, tile,
normalise, and split off every input that could not be read (with its reason).

:func:`prepare_data` runs once per job (or once per sweep); everything after it reads
:class:`PreparedData`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from deimos_ray.config import DataConfig
from deimos_ray.data.metadata import join_metadata
from deimos_ray.data.preprocess import ImageSpec, preprocess, resolve_image_spec, split_rejected
from deimos_ray.data.sources import load_source

REJECTED_SCHEMA = pa.schema(
    [("id", pa.string()), ("path", pa.string()), ("reason", pa.string()), ("stage", pa.string())]
)


@dataclass
class PreparedData:
    """Preprocessed rows, the rejected inputs, and the counts behind the accounting.

    Attributes:
        good: Readable rows (one per image, or per tile) with ``x``.
        rejected: ``id, path, reason, stage`` of every input that could not be used.
        spec: Geometry of ``x``.
        input_shape: Shape of one model input (``spec.shape``, or a flat vector when
            metadata features are appended).
        num_inputs: Images the source holds.
        good_inputs: Images that produced rows (``num_inputs - len(rejected)``).
        has_labels: Whether any row has a known label.
        missing: Images a labels list names but the source lacks (not inputs).
        notes: What the source reported while loading.
    """

    good: ray.data.Dataset
    rejected: pd.DataFrame
    spec: ImageSpec
    input_shape: tuple[int, ...]
    num_inputs: int
    good_inputs: int
    has_labels: bool
    missing: int = 0
    notes: tuple[str, ...] = ()


def _append_meta_features(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    flat = np.asarray(batch["x"], dtype=np.float32).reshape(len(batch["x"]), -1)
    batch["x"] = np.concatenate([flat, np.stack(batch["_meta_features"]).astype(np.float32)], axis=1)
    return batch


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Load, join metadata, decode, tile and normalise; split off unreadable inputs.

    Raises:
        ValueError: ``on_error: fail`` and an input could not be read (names the file),
            or no input could be read at all.
    """
    source = load_source(cfg)
    rejected_parts = [pd.DataFrame(list(source.rejected), columns=REJECTED_SCHEMA.names)]
    shape = source.image_shape[:2] if source.image_shape else None
    spec = resolve_image_spec(shape, cfg)
    good = None
    if source.dataset is not None:
        ds = source.dataset
        if cfg.metadata:
            sample = ds.select_columns(["id"]).take_batch(1000)["id"].tolist()
            ds, _ = join_metadata(ds, sample, cfg)
        processed = preprocess(ds, spec).materialize()
        good, bad = split_rejected(processed)
        good = good.materialize()
        rejected_parts.append(bad.to_pandas())
    rejected = pd.concat([p for p in rejected_parts if len(p)] or rejected_parts, ignore_index=True)
    if cfg.on_error == "fail" and len(rejected):
        first = rejected.iloc[0]
        raise ValueError(
            f"cannot read {first['path'] or first['id']}: {first['reason']} "
            f"({len(rejected)} unreadable input(s); use on_error=skip to record and go on)"
        )
    if good is None or good.count() == 0:
        raise ValueError(f"none of the {source.num_inputs} inputs of {cfg.spec!r} could be read")
    input_shape = spec.shape
    if cfg.metadata_features:
        good = good.map_batches(_append_meta_features, batch_format="numpy").materialize()
        input_shape = (int(np.prod(spec.shape)) + len(cfg.metadata_features),)
    good_inputs = len(good.unique("_source_id")) if cfg.tile else good.count()
    return PreparedData(good, rejected, spec, input_shape, source.num_inputs, good_inputs,
                        source.has_labels, source.missing, source.notes)


def write_rejected(rejected: pd.DataFrame, path: Path) -> None:
    """``rejected.parquet`` with columns id, path, reason, stage (empty when none)."""
    table = pa.Table.from_pandas(rejected[REJECTED_SCHEMA.names], schema=REJECTED_SCHEMA, preserve_index=False)
    pq.write_table(table, path)


def collect_features(good: ray.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(ids, flattened x) of every readable row, for the baseline and the pixel scores."""
    ids, xs = [], []
    for batch in good.select_columns(["id", "x"]).iter_batches(batch_size=4096, batch_format="numpy"):
        ids.append(batch["id"])
        xs.append(np.asarray(batch["x"], dtype=np.float32).reshape(len(batch["id"]), -1))
    return np.concatenate(ids), np.concatenate(xs)
