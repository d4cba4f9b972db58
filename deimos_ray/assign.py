"""Model -> per-image assignments -> Parquet, with Ray Data model actors.

The rows are written to a staging folder beside the destination and renamed into place
only when the write has finished, so a crash never leaves a half-written
``assignments/``. The Parquet file metadata carries the run's config, the package
version and the metrics that were known at write time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
import torch.nn.functional as F

from deimos_ray import __version__
from deimos_ray.config import from_dict
from deimos_ray.files import write_staged_dir
from deimos_ray.models.dac import DACConfig, DACNet
from deimos_ray.models.dec import DEC, DECConfig, build_autoencoder
from deimos_ray.models.desom import DESOM, DESOMConfig
from deimos_ray.train.checkpoint import load_state

METADATA_KEY = b"deimos_ray"
ROWS_PER_FILE = 250_000
TOPK = 3  # topk_clusters / topk_probs hold the 3 most probable clusters


def load_dec(checkpoint_dir: str | Path, device: str = "cpu") -> DEC:
    """Rebuild a trained DEC/IDEC model from a checkpoint directory (weights only)."""
    return _load_dec(load_state(checkpoint_dir), checkpoint_dir).to(device).eval()


def _load_dec(state: dict[str, Any], where: str | Path) -> DEC:
    if state.get("phase") != "cluster":
        raise ValueError(f"{where} holds a {state.get('phase')!r} checkpoint, not a trained DEC model")
    cfg = from_dict(DECConfig, state["config"])
    model = DEC(cfg, build_autoencoder(cfg, tuple(state["input_shape"])))
    model.load_state_dict(state["model"])
    return model


def load_dac(checkpoint_dir: str | Path, device: str = "cpu") -> DACNet:
    """Rebuild a trained DAC network from a checkpoint directory (weights only)."""
    return _load_dac(load_state(checkpoint_dir), checkpoint_dir).to(device).eval()


def _load_dac(state: dict[str, Any], where: str | Path) -> DACNet:
    if state.get("algorithm") != "dac":
        raise ValueError(f"{where} does not hold a DAC checkpoint")
    net = DACNet(from_dict(DACConfig, state["config"]), tuple(state["input_shape"]), state.get("backbone"))
    net.load_state_dict(state["model"])
    return net


def _fixed_list(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """(N, m) array -> a Parquet column of length-m lists."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), dtype), values.shape[1])


def _dec_columns(model: DEC, x: torch.Tensor) -> dict[str, pa.Array]:
    z, q, _ = model(x)
    confidence, cluster = q.max(dim=1)
    return {
        "cluster": pa.array(cluster.cpu().numpy(), pa.int32()),
        "confidence": pa.array(confidence.cpu().numpy(), pa.float32()),
        "embedding": _fixed_list(z.cpu().numpy().astype(np.float32), pa.float32()),
    }


def _dac_columns(net: DACNet, x: torch.Tensor) -> dict[str, pa.Array]:
    return dac_probability_columns(torch.softmax(net(x), dim=1))


def dac_probability_columns(probs: torch.Tensor) -> dict[str, pa.Array]:
    """DAC's columns from (rows, k) cluster probabilities: one network's, or the
    restarts' averaged ones (:func:`deimos_ray.restarts.combine_dac_assignments`)."""
    top_p, top_c = probs.topk(min(TOPK, probs.shape[1]), dim=1)
    return {
        "cluster": pa.array(top_c[:, 0].cpu().numpy(), pa.int32()),
        "confidence": pa.array(top_p[:, 0].cpu().numpy().astype(np.float32), pa.float32()),
        "topk_clusters": _fixed_list(top_c.cpu().numpy().astype(np.int32), pa.int32()),
        "topk_probs": _fixed_list(top_p.cpu().numpy().astype(np.float32), pa.float32()),
        # The label features, as models.dac.label_features: the probabilities over their L2 norm.
        "embedding": _fixed_list(F.normalize(probs, p=2, dim=1).cpu().numpy().astype(np.float32), pa.float32()),
    }


def load_desom(checkpoint_dir: str | Path, device: str = "cpu") -> tuple[DESOM, list[int]]:
    """Rebuild a trained DESOM from a checkpoint directory, with its node -> cluster table."""
    model, clusters = _load_desom(load_state(checkpoint_dir), checkpoint_dir)
    return model.to(device).eval(), clusters


def _load_desom(state: dict[str, Any], where: str | Path) -> tuple[DESOM, list[int]]:
    if state.get("algorithm") != "desom":
        raise ValueError(f"{where} does not hold a DESOM checkpoint")
    if state.get("node_clusters") is None:
        raise ValueError(f"{where} holds an unfinished DESOM run (no node -> cluster table)")
    model = DESOM(from_dict(DESOMConfig, state["config"]), tuple(state["input_shape"]))
    model.load_state_dict(state["model"])
    return model, list(state["node_clusters"])


def _desom_columns(model: DESOM, node_cluster: torch.Tensor, x: torch.Tensor) -> dict[str, pa.Array]:
    z, _, d = model(x)
    d_bmu, bmu = d.min(dim=1)
    cols = model.cfg.map_size[1]
    return {
        "cluster": pa.array(node_cluster[bmu].cpu().numpy(), pa.int32()),
        "som_row": pa.array((bmu // cols).cpu().numpy(), pa.int32()),
        "som_col": pa.array((bmu % cols).cpu().numpy(), pa.int32()),
        "bmu_distance": pa.array(d_bmu.clamp(min=0).sqrt().cpu().numpy(), pa.float32()),
        "embedding": _fixed_list(z.cpu().numpy().astype(np.float32), pa.float32()),
    }


def load_predictor(checkpoint_dir: str | Path, device: str = "cpu") -> Callable[[torch.Tensor], dict[str, pa.Array]]:
    """A function from a batch of inputs to the algorithm's assignment columns.

    DEC/IDEC: ``cluster``, ``confidence`` (max q), ``embedding`` (z). DAC: ``cluster``,
    ``confidence`` (max probability), ``topk_clusters`` / ``topk_probs`` (up to 3),
    ``embedding`` (the label features). DESOM: ``cluster`` (the node, or its k-means
    group), ``som_row``, ``som_col``, ``bmu_distance`` (Euclidean, in the embedding),
    ``embedding`` (z).
    """
    state = load_state(checkpoint_dir)
    if state.get("algorithm") == "desom":
        desom, clusters = _load_desom(state, checkpoint_dir)
        desom, table = desom.to(device).eval(), torch.tensor(clusters, device=device)
        return lambda x: _desom_columns(desom, table, x)
    if state.get("algorithm") == "dac":
        net = _load_dac(state, checkpoint_dir).to(device).eval()
        return lambda x: _dac_columns(net, x)
    model = _load_dec(state, checkpoint_dir).to(device).eval()
    return lambda x: _dec_columns(model, x)


class Assigner:
    """Ray Data actor: loads the model once, then maps batches of ``x`` to assignments."""

    def __init__(self, checkpoint_dir: str, metadata: dict[str, Any], use_gpu: bool = False):
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.predict = load_predictor(checkpoint_dir, self.device)
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
    ds: ray.data.Dataset,
    checkpoint_dir: str | Path,
    destination: str | Path,
    metadata: dict[str, Any],
    use_gpu: bool = False,
) -> Path:
    """Assign every row of ``ds`` (columns id, path, group, label, x) and write Parquet.

    Args:
        ds: Preprocessed, readable rows.
        checkpoint_dir: A DEC/IDEC, DAC or DESOM checkpoint directory.
        destination: The ``assignments/`` folder to create (replaced if it exists).
        metadata: JSON-able dict stored in every file's metadata under ``deimos_ray``.
        use_gpu: One GPU per model actor.

    Returns:
        The destination path.
    """
    metadata = {**metadata, "package_version": __version__}
    assigned = ds.map_batches(
        Assigner,
        fn_constructor_args=(str(Path(checkpoint_dir).resolve()), metadata, use_gpu),
        batch_size=1024,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
        num_gpus=1 if use_gpu else 0,
    )
    # Few, large files: Ray Data writes one file per block unless given a minimum.
    return write_staged(destination, lambda staging: assigned.write_parquet(
        str(staging), min_rows_per_file=ROWS_PER_FILE))


def write_staged(destination: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(staging)`` into a hidden folder beside ``destination``, then rename it into
    place, so a crash never leaves a half-written folder
    (:func:`deimos_ray.files.write_staged_dir`)."""
    return write_staged_dir(destination, write)


def remap_clusters(assignments_dir: str | Path, mapping: dict[int, int]) -> None:
    """Rewrite the ``cluster`` column of every assignments file through ``mapping``
    (old -> new; clusters not in it stay) into a staged copy of the folder that replaces
    it by a rename: a crash leaves the old folder or the new one, never a mix."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

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
    import pyarrow.parquet as pq

    files = sorted(Path(assignments_dir).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no Parquet files in {assignments_dir}")
    meta = pq.read_schema(files[0]).metadata or {}
    return json.loads(meta[METADATA_KEY])
