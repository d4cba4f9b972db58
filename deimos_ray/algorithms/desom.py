"""DESOM as the job spine runs it (Forest et al., ESANN 2019), and the astro two-level
pipeline: DESOM-1 on cutouts or tiles, then DESOM-2 over each group's histo-vector of
its members' DESOM-1 nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from deimos_ray.algorithms.base import Algorithm
from deimos_ray.algorithms.dec import require_dense_for_metadata
from deimos_ray.assign import load_desom
from deimos_ray.config import DESOMJobConfig, to_dict
from deimos_ray.data.prepare import PreparedData
from deimos_ray.files import write_atomic
from deimos_ray.models.desom import histo_vectors
from deimos_ray.models.som import som_errors
from deimos_ray.report import draw_desom_pictures, draw_members
from deimos_ray.restarts import combine_desom_assignments
from deimos_ray.train import desom_loop
from deimos_ray.train.driver import export_checkpoint, fit


class DESOMAlgorithm(Algorithm):
    """DESOM: an autoencoder and a SOM layer trained together
    (:mod:`deimos_ray.train.desom_loop`).

    After assignment the quantisation and topographic errors join the metrics and the
    map pictures go to ``DIR/report/``; with ``levels=2`` DESOM-2 then maps the groups
    (:func:`run_level2`). Restarts vote their groupings of the nodes; the map columns,
    pictures and ``checkpoint/`` are the lowest-loss restart's.
    """

    name = "desom"
    job = "train_desom"
    config_class = DESOMJobConfig
    train_loop = staticmethod(desom_loop.train_loop_per_worker)

    def n_clusters(self, cfg: DESOMJobConfig) -> int:
        return cfg.model.clusters

    def check(self, cfg: DESOMJobConfig) -> None:
        require_dense_for_metadata(cfg)

    def training_rows(self, cfg: DESOMJobConfig, data: PreparedData) -> ray.data.Dataset:
        if cfg.levels == 2:  # fail before training, not after
            require_groups(data.good.select_columns(["group"]).to_pandas()["group"])
        return data.good.select_columns(["x"])

    def final_loss(self, summary: dict[str, Any]) -> float:
        """The mean training loss (reconstruction + gamma x SOM) of the last epoch."""
        return float(summary["loss"])

    def combine(self, cfg: DESOMJobConfig, sources: list[Path], destination: Path, kept: int) -> list[float]:
        return combine_desom_assignments(sources, destination, cfg.model.clusters, kept, seed=cfg.seed)

    def after_assign(self, cfg: DESOMJobConfig, out: Path, assignments: pd.DataFrame,
                     data: PreparedData) -> tuple[pd.DataFrame, dict[str, Any]]:
        model, _ = load_desom(out / "checkpoint")
        errors = som_errors(model.som, torch.as_tensor(np.stack(assignments["embedding"].to_numpy())))
        pictures = draw_desom_pictures(model, assignments["som_row"].to_numpy(),
                                       assignments["som_col"].to_numpy(), out / "report")
        print(f"[{self.job}] quantisation error {errors['quantization_error']:.4f}, topographic error "
              f"{errors['topographic_error']:.4f}; pictures: {', '.join(p.name for p in pictures)}")
        extra: dict[str, Any] = {"som": errors, "report": [str(p.relative_to(out)) for p in pictures]}
        if cfg.levels == 2:
            images = len(data.input_shape) == 3  # only images have representatives to draw
            representatives = group_representatives(assignments, data.good) if images else {}
            extra["level2"] = run_level2(cfg, out, representatives, self.job)
        return assignments, extra


def require_groups(groups: pd.Series) -> None:
    """Refuse a two-level run whose rows are not grouped (at least 2 groups, some with
    several members); called before DESOM-1 trains."""
    sizes = groups[groups.fillna("") != ""].value_counts()
    if len(sizes) < 2 or sizes.max() < 2:
        raise ValueError("--levels 2 needs rows grouped by exposure or source image (at least 2 "
                         "groups, some with several members): tile the images (--tile) or use a "
                         "source with a group column")


def group_representatives(assignments: pd.DataFrame, good: ray.data.Dataset) -> dict[str, np.ndarray]:
    """One image per group: the member closest to its best-matching prototype."""
    rows = assignments[assignments["group"].fillna("") != ""]
    best = rows.sort_values("bmu_distance").drop_duplicates("group")
    wanted = dict(zip(best["id"], best["group"], strict=True))
    ids = np.array(list(wanted), dtype=object)
    picked = good.select_columns(["id", "x"]).map_batches(
        lambda b: {k: v[np.isin(b["id"], ids)] for k, v in b.items()}, batch_format="numpy")
    out = {}
    for batch in picked.iter_batches(batch_size=1024, batch_format="numpy"):
        for i, x in zip(batch["id"], batch["x"], strict=True):
            out[wanted[i]] = np.asarray(x, dtype=np.float32)
    return out


def run_level2(cfg: DESOMJobConfig, out: Path, representatives: dict[str, np.ndarray],
               job: str) -> dict[str, Any]:
    """DESOM-2 over the groups of a finished DESOM-1 run in ``out``.

    Writes ``out/groups.parquet`` (group, som_row, som_col, cluster, members,
    bmu_distance), ``out/level2/checkpoint`` and ``out/level2/report/`` (hits, U-matrix
    and ``members.png``: for each occupied DESOM-2 cell, up to nine of its groups, each
    shown by its most typical member image).
    """
    rows, cols = cfg.model.map_size
    table = pq.read_table(out / "assignments", columns=["group", "som_row", "som_col"]).to_pandas()
    table = table[table["group"].fillna("") != ""]  # grouping checked before DESOM-1 trained
    nodes = (table["som_row"] * cols + table["som_col"]).to_numpy()
    names, vectors, counts = histo_vectors(table["group"].tolist(), nodes, rows * cols, cfg.histo_clip_quantile)
    print(f"[{job}] level 2: {len(names)} groups -> histo-vectors of {rows * cols} nodes")

    level2 = out / "level2"
    level2.mkdir(exist_ok=True)
    loop_config = {"model": to_dict(cfg.level2), "seed": cfg.seed, "input_shape": [rows * cols],
                   "checkpoint_interval_s": cfg.checkpoint_interval_s}
    dataset = ray.data.from_items([{"x": v} for v in vectors.numpy()])
    result = fit(desom_loop.train_loop_per_worker, loop_config, dataset, cfg.scaling, level2 / "ray",
                 name="train", max_failures=cfg.max_failures)
    export_checkpoint(result, level2 / "checkpoint")

    model, node_cluster = load_desom(level2 / "checkpoint")
    with torch.no_grad():
        _, _, d = model(vectors)
    d_bmu, bmu = d.min(dim=1)
    cols2 = cfg.level2.map_size[1]
    groups = pd.DataFrame({
        "group": names,
        "som_row": (bmu // cols2).numpy().astype(np.int32),
        "som_col": (bmu % cols2).numpy().astype(np.int32),
        "cluster": np.asarray(node_cluster, dtype=np.int32)[bmu.numpy()],
        "members": counts.sum(dim=1).numpy().astype(np.int64),
        "bmu_distance": d_bmu.clamp(min=0).sqrt().numpy().astype(np.float32),
    })
    table = pa.Table.from_pandas(groups, preserve_index=False)
    write_atomic(out / "groups.parquet", lambda tmp: pq.write_table(table, tmp))

    pictures = draw_desom_pictures(model, groups["som_row"].to_numpy(), groups["som_col"].to_numpy(),
                                   level2 / "report")
    per_cell: dict[tuple[int, int], list[np.ndarray]] = {}
    for g, r, c in zip(groups["group"], groups["som_row"], groups["som_col"], strict=True):
        if g in representatives and len(per_cell.setdefault((int(r), int(c)), [])) < 9:
            per_cell[(int(r), int(c))].append(representatives[g])
    if per_cell:
        images = {cell: np.stack(v) for cell, v in per_cell.items()}
        pictures.append(draw_members(images, *cfg.level2.map_size, level2 / "report" / "members.png"))
    errors = model.som.errors(d)
    print(f"[{job}] level 2: {groups[['som_row', 'som_col']].drop_duplicates().shape[0]} cells used; "
          f"quantisation error {errors['quantization_error']:.4f}, topographic error "
          f"{errors['topographic_error']:.4f}; groups.parquet, level2/report/")
    return {"groups": len(names), "som": errors, "training": result.return_value,
            "report": [str(p.relative_to(out)) for p in pictures]}
