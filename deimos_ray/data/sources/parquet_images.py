"""A Parquet table whose rows hold encoded image files (PNG, JPEG, ...) as bytes.

The image column is ``bytes`` or ``image`` (binary); ``id``, ``label``, ``group`` and
``path`` are optional and every other column is kept as metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deimos_ray.data.sources.base import Source, table_dataset

BYTES_COLUMNS = ("bytes", "image")


def image_bytes_column(schema: pa.Schema) -> str | None:
    """The binary column holding encoded images, if the schema has one."""
    for name in BYTES_COLUMNS:
        if name in schema.names:
            kind = schema.field(name).type
            if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
                return name
    return None


def load_parquet_images_source(location: str, cfg) -> Source:
    path = Path(location)
    table = pq.read_table(path)
    column = image_bytes_column(table.schema)
    if column is None:
        raise ValueError(f"{path} has no binary 'bytes' or 'image' column of encoded images")
    if cfg.limit is not None:
        table = table.slice(0, cfg.limit)
    n = table.num_rows
    names = set(table.column_names)
    ids = table.column("id").cast(pa.string()).to_pylist() if "id" in names else [f"{path.stem}-{i:06d}" for i in range(n)]
    labels = table.column("label").to_numpy() if "label" in names else np.full(n, -1)
    columns = {
        "id": ids,
        "label": np.asarray(labels, dtype=np.int64),
        "group": table.column("group").cast(pa.string()).to_pylist() if "group" in names else ids,
        "path": table.column("path").cast(pa.string()).to_pylist() if "path" in names else [f"{path}#{i}" for i in range(n)],
        "bytes": table.column(column),
    }
    for name in table.column_names:
        if name not in ("id", "label", "group", "path", column):
            columns[name] = table.column(name)
    return Source(table_dataset(columns), n, path.stem, "parquet", has_labels=bool((columns["label"] >= 0).any()))
