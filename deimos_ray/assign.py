"""Model -> per-image assignments -> Parquet, with Ray Data model actors.

The rows are written to a staging folder beside the destination and renamed into place
only when the write has finished, so a crash never leaves a half-written
``assignments/``. The Parquet file metadata carries the run's config, the package
version and the metrics that were known at write time.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from deimos_ray import __version__
from deimos_ray.config import from_dict
from deimos_ray.models.dec import DEC, DECConfig, build_autoencoder
from deimos_ray.train.checkpoint import load_state

METADATA_KEY = b"deimos_ray"
ROWS_PER_FILE = 250_000


def load_dec(checkpoint_dir: str | Path, device: str = "cpu") -> DEC:
    """Rebuild a trained DEC/IDEC model from a checkpoint directory (weights only)."""
    state = load_state(checkpoint_dir)
    if state.get("phase") != "cluster":
        raise ValueError(f"{checkpoint_dir} holds a {state.get('phase')!r} checkpoint, not a trained DEC model")
    cfg = from_dict(DECConfig, state["config"])
    model = DEC(cfg, build_autoencoder(cfg, tuple(state["input_shape"])))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


class DECAssigner:
    """Ray Data actor: loads the model once, then maps batches of ``x`` to assignments."""

    def __init__(self, checkpoint_dir: str, metadata: dict[str, Any], use_gpu: bool = False):
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model = load_dec(checkpoint_dir, self.device)
        self.metadata = {METADATA_KEY: json.dumps(metadata, default=str).encode()}

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        x = torch.as_tensor(np.asarray(batch["x"]), dtype=torch.float32, device=self.device)
        z, q, _ = self.model(x)
        confidence, cluster = q.max(dim=1)
        z = z.cpu().numpy().astype(np.float32)
        columns = {
            "id": pa.array(batch["id"], pa.string()),
            "path": pa.array(batch["path"], pa.string()),
            "group": pa.array(batch["group"], pa.string()),
            "label": pa.array(batch["label"], pa.int64()),
            "cluster": pa.array(cluster.cpu().numpy(), pa.int32()),
            "confidence": pa.array(confidence.cpu().numpy(), pa.float32()),
            "embedding": pa.FixedSizeListArray.from_arrays(z.reshape(-1), z.shape[1]),
        }
        for name, values in batch.items():  # metadata columns travel with their image
            if name not in columns and name != "x":
                columns[name] = pa.array(np.asarray(values), from_pandas=True)  # NaN -> null
        return pa.table(columns).replace_schema_metadata(self.metadata)


def write_assignments(
    ds: ray.data.Dataset,
    checkpoint_dir: str | Path,
    destination: str | Path,
    metadata: dict[str, Any],
    use_gpu: bool = False,
) -> Path:
    """Assign every row of ``ds`` (columns id, path, group, label, x) and write Parquet.

    Args:
        ds: Preprocessed, readable rows.
        checkpoint_dir: A DEC checkpoint directory.
        destination: The ``assignments/`` folder to create (replaced if it exists).
        metadata: JSON-able dict stored in every file's metadata under ``deimos_ray``.
        use_gpu: One GPU per model actor.

    Returns:
        The destination path.
    """
    destination = Path(destination).resolve()
    staging = destination.parent / f".{destination.name}.partial-{uuid.uuid4().hex[:8]}"
    metadata = {**metadata, "package_version": __version__}
    assigned = ds.map_batches(
        DECAssigner,
        fn_constructor_args=(str(Path(checkpoint_dir).resolve()), metadata, use_gpu),
        batch_size=1024,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
        num_gpus=1 if use_gpu else 0,
    )
    try:
        # Few, large files: Ray Data writes one file per block unless given a minimum.
        assigned.write_parquet(str(staging), min_rows_per_file=ROWS_PER_FILE)
        _replace_dir(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return destination


def _replace_dir(source: Path, destination: Path) -> None:
    """Move ``source`` to ``destination`` by renames; the old copy is removed last."""
    old = None
    if destination.exists():
        old = destination.parent / f".{destination.name}.old-{uuid.uuid4().hex[:8]}"
        destination.rename(old)
    source.rename(destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_metadata(assignments_dir: str | Path) -> dict[str, Any]:
    """The ``deimos_ray`` metadata of the first Parquet file of an assignments folder."""
    import pyarrow.parquet as pq

    files = sorted(Path(assignments_dir).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {assignments_dir}")
    meta = pq.read_schema(files[0]).metadata or {}
    return json.loads(meta[METADATA_KEY])
