"""The ``assignments/`` folder: a trained model's per-image rows, written as Parquet by Ray
Data model actors (:func:`write_assignments`), read back and remapped.

Which columns a model gives is its algorithm's
(:meth:`deimos_ray.algorithms.base.Algorithm.predictor`).

The rows are written to a staging folder beside the destination and renamed into place
only when the write has finished, so a crash never leaves a half-written
``assignments/``. The Parquet file metadata carries the run's config, the package
version and the metrics that were known at write time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch

from deimos_ray import __version__
from deimos_ray.files import write_staged_dir

if TYPE_CHECKING:  # the algorithms write through this module: a type only, no import cycle
    from deimos_ray.algorithms.base import Algorithm

METADATA_KEY = b"deimos_ray"
ROWS_PER_FILE = 250_000


def fixed_list(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """(N, m) array -> a Parquet column of length-m lists."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), dtype), values.shape[1])


class Assigner:
    """Ray Data actor: loads the model once (the algorithm's predictor), then maps
    batches of ``x`` to assignments."""

    def __init__(self, algorithm: Algorithm, checkpoint_dir: str, metadata: dict[str, Any],
                 use_gpu: bool = False):
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.predict = algorithm.predictor(checkpoint_dir, self.device)
        self.metadata = {METADATA_KEY: json.dumps(metadata, default=str).encode()}

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        x = torch.from_numpy(np.array(batch["x"], dtype=np.float32)).to(self.device)  # a writable copy
        columns = {
            "id": pa.array(batch["id"], pa.string()),
            "path": pa.array(batch["path"], pa.string()),
            "group": pa.array(batch["group"], pa.string()),
            "label": pa.array(batch["label"], pa.int64()),
            **self.predict(x),
        }
        for name, values in batch.items():  # metadata columns travel with their image
            if name not in columns and name != "x":
                columns[name] = pa.array(np.asarray(values), from_pandas=True)  # NaN -> null
        return pa.table(columns).replace_schema_metadata(self.metadata)


def write_assignments(
    algorithm: Algorithm,
    ds: ray.data.Dataset,
    checkpoint_dir: str | Path,
    destination: str | Path,
    metadata: dict[str, Any],
    use_gpu: bool = False,
) -> Path:
    """Assign every row of ``ds`` (columns id, path, group, label, x) and write Parquet.

    Args:
        algorithm: The algorithm that trained the checkpoint (its predictor gives the
            model's columns).
        ds: Preprocessed, readable rows.
        checkpoint_dir: A checkpoint directory of ``algorithm``.
        destination: The ``assignments/`` folder to create (replaced if it exists).
        metadata: JSON-able dict stored in every file's metadata under ``deimos_ray``.
        use_gpu: One GPU per model actor.

    Returns:
        The destination path.
    """
    metadata = {**metadata, "package_version": __version__}
    assigned = ds.map_batches(
        Assigner,
        fn_constructor_args=(algorithm, str(Path(checkpoint_dir).resolve()), metadata, use_gpu),
        batch_size=1024,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
        num_gpus=1 if use_gpu else 0,
    )
    # Few, large files: Ray Data writes one file per block unless given a minimum.
    return write_staged_dir(destination, lambda staging: assigned.write_parquet(
        str(staging), min_rows_per_file=ROWS_PER_FILE))


def remap_clusters(assignments_dir: str | Path, mapping: dict[int, int]) -> None:
    """Rewrite the ``cluster`` column of every assignments file through ``mapping``
    (old -> new; clusters not in it stay) into a staged copy of the folder that replaces
    it by a rename: a crash leaves the old folder or the new one, never a mix."""
    if not mapping:
        return
    old = pa.array(list(mapping), pa.int32())
    new = pa.array(list(mapping.values()), pa.int32())
    source = Path(assignments_dir)

    def write(staging: Path) -> None:
        staging.mkdir(parents=True)
        for path in sorted(source.glob("*.parquet")):
            table = pq.read_table(path)
            cluster = table.column("cluster")
            position = pc.index_in(cluster, value_set=old)
            remapped = pc.if_else(pc.is_null(position), cluster, pc.take(new, position))
            table = table.set_column(table.schema.get_field_index("cluster"), "cluster", remapped)
            pq.write_table(table, staging / path.name)

    write_staged_dir(source, write)


def read_metadata(assignments_dir: str | Path) -> dict[str, Any]:
    """The ``deimos_ray`` metadata of the first Parquet file of an assignments folder."""
    files = sorted(Path(assignments_dir).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {assignments_dir}")
    meta = pq.read_schema(files[0]).metadata or {}
    return json.loads(meta[METADATA_KEY])
