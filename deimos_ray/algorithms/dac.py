"""DAC as the job spine runs it (Chang et al., ICCV 2017), with the DeIMOS extensions:
labelled pairs as extra supervision, and small clusters merged after assignment."""

from __future__ import annotations

import argparse
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
import torch
import torch.nn.functional as F

from deimos_ray.algorithms.base import Algorithm, Predictor
from deimos_ray.assignments import fixed_list, remap_clusters
from deimos_ray.config import JobConfig
from deimos_ray.config_io import from_dict
from deimos_ray.consensus import (
    agreement,
    average_matched,
    consensus_orders,
    read_aligned,
    write_combined,
)
from deimos_ray.data.features import BANK_COLUMN
from deimos_ray.data.prepare import PreparedData
from deimos_ray.errors import UsageError
from deimos_ray.models.dac import (
    PAIR_LOSSES,
    RECIPES,
    SCHEDULES,
    SELECTIONS,
    TRUNKS,
    DACConfig,
    DACNet,
)
from deimos_ray.train import dac_loop
from deimos_ray.train.checkpoint import load_state

TOPK = 3  # topk_clusters / topk_probs hold the 3 most probable clusters


@dataclass(frozen=True)
class DACJobConfig(JobConfig):
    """Everything ``jobs/train_dac.py`` needs: :class:`JobConfig`, the DAC model and
    its post-processing.

    Attributes:
        min_cluster_size: DeIMOS extension. After assignment, clusters with fewer
            members are merged into the most similar remaining cluster (cosine
            similarity of the clusters' mean label features); 0 disables it.
    """

    model: DACConfig = field(default_factory=DACConfig)
    min_cluster_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_cluster_size < 0:
            raise ValueError(f"min_cluster_size must be >= 0, got {self.min_cluster_size}")


class DACAlgorithm(Algorithm):
    """DAC: pair selection by thresholds on the label features' cosine similarity
    (:mod:`deimos_ray.train.dac_loop`).

    The rows drawn by ``model.labeled_fraction`` carry their label into training
    (column ``known``) and are left out of the ``heldout_*`` scores. After assignment,
    clusters smaller than ``min_cluster_size`` merge into their most similar cluster.
    Restarts combine by the consensus of their probabilities.
    """

    name = "dac"
    job = "train_dac"
    description = """Train DAC (Deep Adaptive Clustering) on a set of images; one Parquet row per image.

Locally (starts a private Ray instance):
    deimos-ray train dac                                   # built-in digits
    deimos-ray train dac --data ../shared/data/usps.npz
    deimos-ray train dac --recipe reference              # the reference code's training
    deimos-ray train dac --data /path/to/hirise --originals-only --image-size 32 \\
        --set model.augmentation.rotate90=true --set model.augmentation.hflip=true

On a Ray cluster (jobs/train_dac.py joins the cluster it is submitted to):
    ray job submit --working-dir . -- python jobs/train_dac.py --data /shared/tiles \\
        --num-workers 4 --use-gpu --gather-pairs --out /shared/runs/dac-tiles
    ray job submit --working-dir . -- python jobs/train_dac.py --data /shared/usps.npz \\
        --recipe reference --restarts 8 --concurrent-restarts 8 --num-workers 1 --use-gpu

Outputs (DIR = --out): config.yaml, metrics.json, checkpoint/, assignments/*.parquet
(cluster, confidence, topk_clusters, topk_probs, embedding = label features),
rejected.parquet; with --restarts, restarts/R/ holds each restart's checkpoint and
assignments, and assignments/ their consensus. Rerunning with the same --out and the
same model settings resumes, schedule included.
"""
    config_class = DACJobConfig
    train_loop = staticmethod(dac_loop.train_loop_per_worker)
    smoke = {
        "data.limit": 300,
        "model.epochs": 2,
        "model.conv_widths": [8, 16],
        "model.hidden_dim": 16,
        "checkpoint_interval_s": 0,
    }

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--recipe", choices=list(RECIPES), default="paper", help="paper (default: the "
                       "paper's algorithm) or reference (the reference MNIST code's training: one "
                       "threshold 0.9 to 0.7 over 20 epochs, chunk selection, squared-error loss, "
                       "small rotations/shifts/zooms); the flags below and --set override it")
        p.add_argument("--schedule", choices=SCHEDULES, help="threshold schedule: paper (default; "
                       "stops when u <= l, 46 epochs), deimos (u0/l0/u_coeff/l_coeff/lambda_step "
                       "via --set model.*), official (the reference code's single threshold)")
        p.add_argument("--selection", choices=SELECTIONS, help="batch (paper: each batch selects its "
                       "pairs) or chunk (reference: targets from a chunk of clean images, then "
                       "several passes over its augmented views)")
        p.add_argument("--pair-loss", choices=PAIR_LOSSES, help="bce (paper) or mse (reference code)")
        p.add_argument("--trunk", choices=TRUNKS, help="the network trained on pixels: vgg (default, "
                       "small 3x3 conv stacks) or resnet18 (unused with --backbone: DAC then trains "
                       "its head on the backbone's features)")
        p.add_argument("--fine-tune-backbone", action="store_true", help="with --backbone: train the "
                       "backbone under the head with the pair loss, on the images at --feature-size, "
                       "instead of the head alone on its cached features (costly on CPUs)")
        p.add_argument("--trunk-lr-ratio", type=float, help="with --fine-tune-backbone: the backbone's "
                       "learning rate as a fraction of --lr (default 0.1)")
        p.add_argument("--trunk-weights", help="ResNet-18 state dict file to start --trunk resnet18 "
                       "from (nothing is downloaded)")
        p.add_argument("--batch-size", type=int, help="images per step across all workers; pairs are "
                       "selected among them (default 128)")
        p.add_argument("--lr", type=float, help="RMSprop learning rate (default 0.001)")
        p.add_argument("--no-augment", action="store_true", help="train on the images only, "
                       "without the two augmented views per image")
        p.add_argument("--labeled-fraction", type=float, help="fraction of the labelled rows whose "
                       "labels join training as must-link / cannot-link pairs (default 0)")
        p.add_argument("--labeled-weight", type=float, help="weight of the labelled pairs' loss (default 1)")
        p.add_argument("--min-cluster-size", type=int, help="after training, merge clusters smaller "
                       "than this into their most similar cluster (default 0: off)")
        p.add_argument("--gather-pairs", action="store_true", help="with several workers, select "
                       "pairs across the global batch (all-gathers the label features)")

    def settings(self, args: argparse.Namespace) -> dict[str, Any]:
        return {
            "model.schedule": args.schedule, "model.selection": args.selection,
            "model.pair_loss": args.pair_loss, "model.trunk": args.trunk,
            "model.trunk_weights": args.trunk_weights,
            "model.fine_tune_backbone": True if args.fine_tune_backbone else None,
            "model.trunk_lr_ratio": args.trunk_lr_ratio,
            "model.batch_size": args.batch_size,
            "model.lr": args.lr, "model.augment": False if args.no_augment else None,
            "model.labeled_fraction": args.labeled_fraction, "model.labeled_weight": args.labeled_weight,
            "min_cluster_size": args.min_cluster_size,
            "model.gather_pairs": True if args.gather_pairs else None,
        }

    def preset(self, args: argparse.Namespace) -> dict[str, Any]:
        return RECIPES[getattr(args, "recipe", None) or "paper"]

    def check(self, cfg: DACJobConfig) -> None:
        if cfg.data.metadata_features:
            raise ValueError("DAC trains on images; metadata_features apply to dense models (train_dec)")
        if cfg.model.fine_tune_backbone and not cfg.features.enabled:
            raise ValueError("--fine-tune-backbone needs --backbone NAME (the network to fine-tune)")

    def fine_tunes_backbone(self, cfg: DACJobConfig) -> bool:
        return cfg.model.fine_tune_backbone

    def check_data(self, cfg: DACJobConfig, data: PreparedData) -> None:
        super().check_data(cfg, data)
        if cfg.model.labeled_fraction > 0 and not data.has_labels:
            raise UsageError("--labeled-fraction needs a source with labels (none has a label)")

    def training_rows(self, cfg: DACJobConfig, data: PreparedData) -> ray.data.Dataset:
        fraction = cfg.model.labeled_fraction
        bank = [BANK_COLUMN] if BANK_COLUMN in data.good.columns() else []  # --views augment:N
        return data.good.select_columns(["id", "label", "x", *bank]).map_batches(
            _draw_known_labels, fn_kwargs={"fraction": fraction, "seed": cfg.seed}, batch_format="numpy")

    def final_loss(self, summary: dict[str, Any]) -> float:
        """The mean pair loss of the last epoch."""
        return float(summary["history"][-1]["pair_loss"])

    def predictor(self, checkpoint_dir: str | Path, device: str = "cpu") -> Predictor:
        """``cluster``, ``confidence`` (max probability), ``topk_clusters`` /
        ``topk_probs`` (up to 3), ``embedding`` (the label features)."""
        net = load_dac(checkpoint_dir, device)
        return lambda x: dac_probability_columns(torch.softmax(net(x), dim=1))

    def combine(self, cfg: DACJobConfig, sources: list[Path], destination: Path, kept: int,
                orders: list[np.ndarray] | None = None) -> list[float]:
        """The consensus of the restarts' probabilities (:mod:`deimos_ray.consensus`): their
        clusters matched to a reference partition and averaged. The rows keep the first
        source's order and every column but the model's, which come from the averaged
        probabilities (``embedding``: their label feature)."""
        table, probabilities = read_dac_probabilities(sources)
        labelings = [p.argmax(axis=1) for p in probabilities]
        if orders is None:
            _, orders = consensus_orders(labelings, probabilities[0].shape[1], cfg.seed)
        mean = average_matched(probabilities, orders)
        shares = agreement(labelings, orders, mean.argmax(axis=1))
        for name, values in dac_probability_columns(torch.from_numpy(mean)).items():
            table = table.set_column(table.schema.get_field_index(name), name, values)
        write_combined(table, sources, 0, destination,
                       {"agreement": shares, "orders": [np.asarray(order).tolist() for order in orders]})
        return shares

    def after_assign(self, cfg: DACJobConfig, out: Path, assignments: pd.DataFrame,
                     data: PreparedData) -> tuple[pd.DataFrame, dict[str, Any]]:
        if cfg.min_cluster_size <= 0:
            return assignments, {}
        features = torch.as_tensor(np.stack(assignments["embedding"].to_numpy()))
        merged, mapping = reassign_small_clusters(assignments["cluster"].to_numpy().copy(), features,
                                                  cfg.min_cluster_size)
        moved = int(assignments["cluster"].isin(list(mapping)).sum())
        remap_clusters(out / "assignments", mapping)
        print(f"[{self.job}] min_cluster_size {cfg.min_cluster_size}: {len(mapping)} small cluster(s) "
              f"merged, {moved} image(s) moved " + (str(mapping) if mapping else ""))
        return (assignments.assign(cluster=merged.numpy().astype(np.int32)),
                {"small_clusters_merged": {str(k): v for k, v in mapping.items()}, "images_moved": moved})

    def after_assign_new(self, run_metrics: dict[str, Any], assignments_dir: Path) -> None:
        """The run's merge of small clusters, as it made it (``small_clusters_merged``)."""
        merged = {int(old): int(new) for old, new in run_metrics.get("small_clusters_merged", {}).items()}
        remap_clusters(assignments_dir, merged)

    def labels_seen(self, cfg: DACJobConfig) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        fraction = cfg.model.labeled_fraction
        if fraction <= 0:
            return None
        return lambda ids, labels: known_label_mask(ids, labels, fraction, cfg.seed)


def known_label_mask(ids: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Which rows lend their label to training: a seeded ``fraction`` of the labelled rows.

    The draw hashes each row's id with the seed, so it does not depend on how the rows
    are split across blocks or workers, and the scores can draw the same rows again.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if fraction <= 0:
        return np.zeros(len(labels), dtype=bool)
    draws = np.array([zlib.crc32(f"{seed}:{i}".encode()) / 2**32 for i in ids])
    return (labels >= 0) & (draws < fraction)


def _draw_known_labels(batch: dict[str, np.ndarray], fraction: float, seed: int) -> dict[str, np.ndarray]:
    """``known`` = the label for the rows :func:`known_label_mask` draws, else -1 (beside
    ``x`` and a view bank)."""
    labels = np.asarray(batch["label"], dtype=np.int64)
    known = np.where(known_label_mask(batch["id"], labels, fraction, seed), labels, -1)
    return {**{c: v for c, v in batch.items() if c not in ("id", "label")}, "known": known}


def load_dac(checkpoint_dir: str | Path, device: str = "cpu") -> DACNet:
    """Rebuild a trained DAC network from a checkpoint directory (weights only)."""
    state = load_state(checkpoint_dir)
    if state.get("algorithm") != "dac":
        raise ValueError(f"{checkpoint_dir} does not hold a DAC checkpoint")
    net = DACNet(from_dict(DACConfig, state["config"]), tuple(state["input_shape"]), state.get("backbone"))
    net.load_state_dict(state["model"])
    return net.to(device).eval()


def dac_probability_columns(probs: torch.Tensor) -> dict[str, pa.Array]:
    """DAC's columns from (rows, k) cluster probabilities: one network's, or the
    restarts' averaged ones."""
    top_p, top_c = probs.topk(min(TOPK, probs.shape[1]), dim=1)
    return {
        "cluster": pa.array(top_c[:, 0].cpu().numpy(), pa.int32()),
        "confidence": pa.array(top_p[:, 0].cpu().numpy().astype(np.float32), pa.float32()),
        "topk_clusters": fixed_list(top_c.cpu().numpy().astype(np.int32), pa.int32()),
        "topk_probs": fixed_list(top_p.cpu().numpy().astype(np.float32), pa.float32()),
        # The label features, as models.dac.label_features: the probabilities over their L2 norm.
        "embedding": fixed_list(F.normalize(probs, p=2, dim=1).cpu().numpy().astype(np.float32), pa.float32()),
    }


def read_dac_probabilities(sources: list[Path]) -> tuple[pa.Table, list[np.ndarray]]:
    """The first source's assignments table and every source's (rows, k) cluster
    probabilities in that table's row order, from DAC assignments of the same rows.

    The label features are the probabilities over their L2 norm, so dividing them by
    their sum gives the probabilities back.
    """
    first, features = read_aligned(sources, "embedding")
    return first, [f / f.sum(axis=1, keepdims=True) for f in features]


def reassign_small_clusters(
    clusters: torch.Tensor | list[int], features: torch.Tensor, min_size: int
) -> tuple[torch.Tensor, dict[int, int]]:
    """Merge clusters with fewer than ``min_size`` members into their most similar
    remaining cluster (DeIMOS extension).

    Similarity is the cosine similarity of the clusters' mean label features. Clusters
    at or above ``min_size`` stay; if none is that large, the largest one stays.

    Args:
        clusters: (N,) cluster of each image.
        features: (N, k) label features of each image.
        min_size: The smallest cluster kept.

    Returns:
        The new (N,) clusters, and {old cluster: cluster it was merged into}.
    """
    clusters = torch.as_tensor(clusters, dtype=torch.long)
    ids, counts = torch.unique(clusters, return_counts=True)
    keep = ids[counts >= min_size]
    if len(keep) == 0:
        keep = ids[counts.argmax()].view(1)
    small = [int(c) for c in ids if c not in keep]
    if not small:
        return clusters.clone(), {}
    means = torch.stack([features[clusters == c].mean(dim=0) for c in ids.tolist()])
    means = F.normalize(means, dim=1)
    index = {int(c): i for i, c in enumerate(ids)}
    kept_means = means[[index[int(c)] for c in keep]]
    mapping = {}
    for c in small:
        similarity = kept_means @ means[index[c]]
        mapping[c] = int(keep[similarity.argmax()])
    out = clusters.clone()
    for old, new in mapping.items():
        out[clusters == old] = new
    return out, mapping
