"""DESOM as the job spine runs it (Forest et al., ESANN 2019), and the astro two-level
pipeline: DESOM-1 on cutouts or tiles, then DESOM-2 over each group's histo-vector of
its members' DESOM-1 nodes."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from deimos_ray.algorithms.base import Algorithm, Predictor
from deimos_ray.algorithms.dec import require_dense_for_metadata
from deimos_ray.assignments import fixed_list
from deimos_ray.config import JobConfig
from deimos_ray.config_io import from_dict, to_dict
from deimos_ray.consensus import vote_assignments
from deimos_ray.data.prepare import PreparedData
from deimos_ray.files import write_atomic
from deimos_ray.models.desom import DESOM, DESOMConfig, histo_vectors
from deimos_ray.models.som import som_errors
from deimos_ray.report.pictures import draw_desom_pictures, draw_members
from deimos_ray.train import desom_loop
from deimos_ray.train.checkpoint import load_state
from deimos_ray.train.driver import export_checkpoint, fit


@dataclass(frozen=True)
class DESOMJobConfig(JobConfig):
    """Everything ``jobs/train_desom.py`` needs: :class:`JobConfig`, DESOM-1 (``model``)
    and the two-level pipeline's settings.

    Attributes:
        levels: 1, or 2 to map the groups (exposures, source images) with DESOM-2 over
            histo-vectors of their members' DESOM-1 nodes.
        level2: DESOM-2 of the two-level pipeline: a dense autoencoder and a larger map
            over the groups' histo-vectors.
        histo_clip_quantile: Per-node quantile at which histo-vector shares are clipped.
    """

    model: DESOMConfig = field(default_factory=DESOMConfig)
    levels: int = 1
    level2: DESOMConfig = field(default_factory=lambda: DESOMConfig(
        map_size=(20, 20), hidden_dims=(450, 300), latent_dim=100, iterations=2000, batch_size=64))
    histo_clip_quantile: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.levels not in (1, 2):
            raise ValueError(f"levels (--levels) must be 1 or 2, got {self.levels}")
        if not 0 < self.histo_clip_quantile <= 1:
            raise ValueError("histo_clip_quantile must be in (0, 1]")
        if self.restarts.count > 1 and self.model.n_clusters is None:
            raise ValueError("--restarts combines the restarts' groupings of the nodes: it needs "
                             "--k (model.n_clusters); without it every node is a cluster and one "
                             "map's nodes do not correspond to another's")


class DESOMAlgorithm(Algorithm):
    """DESOM: an autoencoder and a SOM layer trained together
    (:mod:`deimos_ray.train.desom_loop`).

    After assignment the quantisation and topographic errors join the metrics; with
    ``levels=2`` the spine then trains DESOM-2 over the groups (:func:`run_level2`).
    The report adds the map pictures, drawn from the run's files. Restarts vote their
    groupings of the nodes; the map columns, pictures and ``checkpoint/`` are the
    lowest-loss restart's.
    """

    name = "desom"
    job = "train_desom"
    description = """Train DESOM (Deep Embedded Self-Organising Map) on a set of images; one Parquet row per
image placed on a map, and the map drawn as pictures.

Locally (starts a private Ray instance):
    deimos-ray train desom                                # built-in digits, 8x8 map
    deimos-ray train desom --data ../shared/data/usps.npz --map-size 8 8 --k 10
    deimos-ray train desom --data ../shared/data/usps.npz --k 10 --iterations 2000 --restarts 8
    deimos-ray train desom --data /path/to/exposures --tile 32 --map-size 25 25 --levels 2

On a Ray cluster:
    ray job submit --working-dir . -- python jobs/train_desom.py --data /shared/cutouts \\
        --num-workers 4 --use-gpu --out /shared/runs/desom

Outputs (DIR = --out): config.yaml, metrics.json, checkpoint/, assignments/*.parquet
(som_row, som_col, bmu_distance, cluster, embedding), rejected.parquet, report/
(prototypes.png, hits.png, umatrix.png); with --restarts (needs --k), restarts/R/ holds
each restart's checkpoint and assignments, and cluster is their vote. With --levels 2
also groups.parquet (one row per group: group, som_row, som_col, cluster, members) and
level2/report/ (hits, U-matrix, members.png). Redraw the pictures with deimos-ray report DIR.
"""
    config_class = DESOMJobConfig
    train_loop = staticmethod(desom_loop.train_loop_per_worker)
    smoke = {
        "data.limit": 300,
        "model.iterations": 30,
        "model.hidden_dims": [64, 64],
        "model.map_size": [4, 4],
        "level2.iterations": 20,
        "level2.hidden_dims": [32, 16],
        "level2.latent_dim": 8,
        "level2.map_size": [3, 3],
        "checkpoint_interval_s": 0,
    }
    flag_help = {"k": "number of clusters (default: every map node is a cluster)",
                 "epochs": "refused: DESOM counts training in --iterations"}
    confidence_words = ("nearest their map node", "farthest from it")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--map-size", type=int, nargs=2, metavar=("ROWS", "COLS"),
                       help="SOM grid (default 8 8); --k groups its nodes into K clusters by "
                       "k-means over the prototypes, else every node is a cluster")
        p.add_argument("--iterations", type=int, help="training steps (default 10000)")
        p.add_argument("--autoencoder", choices=["dense", "conv"], help="dense (default) or conv")
        p.add_argument("--gamma", type=float, help="SOM loss weight (default 1e-3)")
        p.add_argument("--levels", type=int, choices=[1, 2],
                       help="1 (default), or 2: also map the groups (exposures, source images) with "
                       "DESOM-2 over histo-vectors of their members' DESOM-1 nodes")
        p.add_argument("--level2-map-size", type=int, nargs=2, metavar=("ROWS", "COLS"),
                       help="DESOM-2 grid (default 20 20)")

    def settings(self, args: argparse.Namespace) -> dict[str, Any]:
        if args.epochs is not None:
            raise ValueError("DESOM counts training in --iterations, not --epochs")
        return {"model.map_size": args.map_size, "model.iterations": args.iterations,
                "model.autoencoder": args.autoencoder, "model.gamma": args.gamma,
                "level2.map_size": args.level2_map_size, "levels": args.levels}

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

    def predictor(self, checkpoint_dir: str | Path, device: str = "cpu") -> Predictor:
        """``cluster`` (the node, or its k-means group), ``som_row``, ``som_col``,
        ``bmu_distance`` (Euclidean, in the embedding), ``embedding`` (z)."""
        model, clusters = load_desom(checkpoint_dir, device)
        node_cluster = torch.tensor(clusters, device=device)
        cols = model.cfg.map_size[1]

        def columns(x):
            z, _, d = model(x)
            d_bmu, bmu = d.min(dim=1)
            return {
                "cluster": pa.array(node_cluster[bmu].cpu().numpy(), pa.int32()),
                "som_row": pa.array((bmu // cols).cpu().numpy(), pa.int32()),
                "som_col": pa.array((bmu % cols).cpu().numpy(), pa.int32()),
                "bmu_distance": pa.array(d_bmu.clamp(min=0).sqrt().cpu().numpy(), pa.float32()),
                "embedding": fixed_list(z.cpu().numpy().astype(np.float32), pa.float32()),
            }
        return columns

    def combine(self, cfg: DESOMJobConfig, sources: list[Path], destination: Path, kept: int,
                orders: list[np.ndarray] | None = None) -> list[float]:
        """A vote of the restarts' groupings of the nodes
        (:func:`deimos_ray.consensus.vote_assignments`). The maps themselves cannot be
        combined, so every other column (``som_row``, ``som_col``, ``bmu_distance``,
        ``embedding``) and the row order are those of ``sources[kept]``, the restart whose
        checkpoint the run exports; ``confidence`` (added) is the share of restarts that
        gave the row its cluster."""
        return vote_assignments(sources, destination, cfg.model.clusters, kept, cfg.seed, orders)

    def after_assign(self, cfg: DESOMJobConfig, out: Path, assignments: pd.DataFrame,
                     data: PreparedData) -> tuple[pd.DataFrame, dict[str, Any]]:
        """The map's quantisation and topographic errors."""
        model, _ = load_desom(out / "checkpoint")
        errors = som_errors(model.som, torch.as_tensor(np.stack(assignments["embedding"].to_numpy())))
        print(f"[{self.job}] quantisation error {errors['quantization_error']:.4f}, topographic error "
              f"{errors['topographic_error']:.4f}")
        return assignments, {"som": errors}

    def further_training(self, cfg: DESOMJobConfig, out: Path) -> dict[str, Any] | None:
        """DESOM-2 over the groups, with ``levels=2`` (:func:`run_level2`)."""
        return {"level2": run_level2(cfg, out, self.job)} if cfg.levels == 2 else None

    def report_pictures(self, run: Path, report_dir: Path,
                        images_of: Callable[[list[str]], dict[str, np.ndarray]]) -> list[str]:
        """``prototypes.png`` (image inputs), ``hits.png`` and ``umatrix.png`` in
        ``report/``; for a two-level run also DESOM-2's in ``level2/report/`` with
        ``members.png`` (for each occupied DESOM-2 cell, up to nine of its groups, each
        shown by its member nearest its DESOM-1 prototype)."""
        if not (run / "checkpoint").is_dir():
            return []
        drawn = draw_desom_report(run, report_dir)
        if (run / "level2" / "checkpoint").is_dir() and (run / "groups.parquet").is_file():
            draw_level2_report(run, images_of)
        return [p.name for p in drawn]


def load_desom(checkpoint_dir: str | Path, device: str = "cpu") -> tuple[DESOM, list[int]]:
    """Rebuild a trained DESOM from a checkpoint directory, with its node -> cluster table."""
    state = load_state(checkpoint_dir)
    if state.get("algorithm") != "desom":
        raise ValueError(f"{checkpoint_dir} does not hold a DESOM checkpoint")
    if state.get("node_clusters") is None:
        raise ValueError(f"{checkpoint_dir} holds an unfinished DESOM run (no node -> cluster table)")
    model = DESOM(from_dict(DESOMConfig, state["config"]), tuple(state["input_shape"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), list(state["node_clusters"])


def draw_desom_report(run: Path, report_dir: Path) -> list[Path]:
    """Draw a finished map's pictures (:func:`deimos_ray.report.pictures.draw_desom_pictures`)
    into ``report_dir`` from ``run/checkpoint`` and ``run/assignments``."""
    model, _ = load_desom(run / "checkpoint")
    table = pq.read_table(run / "assignments", columns=["som_row", "som_col"])
    return draw_desom_pictures(model, table.column("som_row").to_numpy(), table.column("som_col").to_numpy(),
                               report_dir)


def draw_level2_report(run: Path, images_of: Callable[[list[str]], dict[str, np.ndarray]]) -> list[Path]:
    """DESOM-2's pictures in ``run/level2/report/``, from ``level2/checkpoint`` and
    ``groups.parquet``; ``members.png`` where the groups' representatives can be drawn."""
    level2 = run / "level2"
    model, _ = load_desom(level2 / "checkpoint")
    groups = pq.read_table(run / "groups.parquet", columns=["group", "som_row", "som_col"]).to_pandas()
    pictures = draw_desom_pictures(model, groups["som_row"].to_numpy(), groups["som_col"].to_numpy(),
                                   level2 / "report")
    representatives = group_representatives(pq.read_table(
        run / "assignments", columns=["id", "group", "bmu_distance"]).to_pandas())
    images = images_of(list(representatives.values()))
    per_cell: dict[tuple[int, int], list[np.ndarray]] = {}
    for g, r, c in zip(groups["group"], groups["som_row"], groups["som_col"], strict=True):
        if representatives.get(g) in images and len(per_cell.setdefault((int(r), int(c)), [])) < 9:
            per_cell[(int(r), int(c))].append(images[representatives[g]])
    per_cell = {cell: v for cell, v in per_cell.items() if v}
    if per_cell:
        cells = {cell: np.stack(v) for cell, v in per_cell.items()}
        pictures.append(draw_members(cells, *model.cfg.map_size, level2 / "report" / "members.png"))
    return pictures


def require_groups(groups: pd.Series) -> None:
    """Refuse a two-level run whose rows are not grouped (at least 2 groups, some with
    several members); called before DESOM-1 trains."""
    sizes = groups[groups.fillna("") != ""].value_counts()
    if len(sizes) < 2 or sizes.max() < 2:
        raise ValueError("--levels 2 needs rows grouped by exposure or source image (at least 2 "
                         "groups, some with several members): tile the images (--tile) or use a "
                         "source with a group column")


def group_representatives(assignments: pd.DataFrame) -> dict[str, str]:
    """group -> the id of its member closest to its best-matching prototype."""
    rows = assignments[assignments["group"].fillna("") != ""]
    best = rows.sort_values("bmu_distance", kind="stable").drop_duplicates("group")
    return dict(zip(best["group"], best["id"], strict=True))


def run_level2(cfg: DESOMJobConfig, out: Path, job: str) -> dict[str, Any]:
    """DESOM-2 over the groups of a finished DESOM-1 run in ``out``.

    Writes ``out/groups.parquet`` (group, som_row, som_col, cluster, members,
    bmu_distance) and ``out/level2/checkpoint``; the report draws its pictures
    (:meth:`DESOMAlgorithm.report_pictures`).
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
                 name="train", max_failures=cfg.max_failures, label=("train_desom", "level-2 training"))
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

    errors = model.som.errors(d)
    print(f"[{job}] level 2: {groups[['som_row', 'som_col']].drop_duplicates().shape[0]} cells used; "
          f"quantisation error {errors['quantization_error']:.4f}, topographic error "
          f"{errors['topographic_error']:.4f}; groups.parquet, level2/")
    return {"groups": len(names), "som": errors, "training": result.return_value}
