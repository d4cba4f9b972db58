"""DAC as the job spine runs it (Chang et al., ICCV 2017), with the DeIMOS extensions:
labelled pairs as extra supervision, and small clusters merged after assignment."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch

from deimos_ray.algorithms.base import Algorithm
from deimos_ray.assign import remap_clusters
from deimos_ray.config import DACJobConfig
from deimos_ray.data.prepare import PreparedData
from deimos_ray.errors import UsageError
from deimos_ray.models.dac import reassign_small_clusters
from deimos_ray.restarts import combine_dac_assignments
from deimos_ray.train import dac_loop


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
    config_class = DACJobConfig
    train_loop = staticmethod(dac_loop.train_loop_per_worker)

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
        return data.good.select_columns(["id", "label", "x"]).map_batches(
            _draw_known_labels, fn_kwargs={"fraction": fraction, "seed": cfg.seed}, batch_format="numpy")

    def final_loss(self, summary: dict[str, Any]) -> float:
        """The mean pair loss of the last epoch."""
        return float(summary["history"][-1]["pair_loss"])

    def combine(self, cfg: DACJobConfig, sources: list[Path], destination: Path, kept: int) -> list[float]:
        return combine_dac_assignments(sources, destination, seed=cfg.seed)

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
    """``known`` = the label for the rows :func:`known_label_mask` draws, else -1."""
    labels = np.asarray(batch["label"], dtype=np.int64)
    known = np.where(known_label_mask(batch["id"], labels, fraction, seed), labels, -1)
    return {"x": batch["x"], "known": known}
