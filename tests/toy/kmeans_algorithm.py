"""A fourth algorithm, written only here: k-means on the rows, as an ``Algorithm``.

It proves the seam: registered from outside the package, it runs through a job, a sweep
with restarts, the assignment of new images and the report without any file of
``deimos_ray`` naming it (``CONTRIBUTING.md``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray.train
import torch
from PIL import Image
from sklearn.cluster import KMeans

from deimos_ray.algorithms import register
from deimos_ray.algorithms.base import Algorithm, Predictor
from deimos_ray.assignments import fixed_list
from deimos_ray.config import JobConfig
from deimos_ray.config_io import from_dict
from deimos_ray.consensus import vote_assignments
from deimos_ray.train.checkpoint import load_state, report_epoch
from deimos_ray.train.common import load_shard


@dataclass(frozen=True)
class KMeansConfig:
    """The model: k centres, fitted by scikit-learn's k-means."""

    n_clusters: int = 3
    epochs: int = 1
    n_init: int = 1


@dataclass(frozen=True)
class KMeansJobConfig(JobConfig):
    """The toy job's config: the shared settings and :class:`KMeansConfig`."""

    model: KMeansConfig = field(default_factory=KMeansConfig)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """One worker (or the driver) fits k-means on its rows and reports the centres."""
    cfg = from_dict(KMeansConfig, config["model"])
    x = load_shard(ray.train.get_dataset_shard("train"), tuple(config["input_shape"])).flatten(1).numpy()
    fitted = KMeans(cfg.n_clusters, n_init=cfg.n_init, random_state=int(config["seed"])).fit(x)
    state = {"algorithm": "centres", "centres": torch.from_numpy(fitted.cluster_centers_.astype(np.float32)),
             "input_shape": list(config["input_shape"]), "seed": int(config["seed"])}
    report_epoch({"epoch": 1, "inertia": float(fitted.inertia_)}, state)
    return {"inertia": float(fitted.inertia_)}


class KMeansAlgorithm(Algorithm):
    """k-means as a deep clustering method would be plugged in."""

    name = "centres"  # not "kmeans": that is the baseline's column in the score table
    job = "train_centres"
    config_class = KMeansJobConfig
    train_loop = staticmethod(train_loop_per_worker)
    smoke = {"data.limit": 60}

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--n-init", type=int, help="k-means restarts inside one training")

    def settings(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"model.n_init": args.n_init}

    def predictor(self, checkpoint_dir: str | Path, device: str = "cpu") -> Predictor:
        centres = load_state(checkpoint_dir)["centres"].to(device)

        def columns(x: torch.Tensor) -> dict[str, pa.Array]:
            d = torch.cdist(x.flatten(1), centres)  # (B, k)
            p = torch.softmax(-d, dim=1)
            confidence, cluster = p.max(dim=1)
            return {"cluster": pa.array(cluster.cpu().numpy(), pa.int32()),
                    "confidence": pa.array(confidence.cpu().numpy(), pa.float32()),
                    "embedding": fixed_list(d.cpu().numpy().astype(np.float32), pa.float32())}
        return columns

    def final_loss(self, summary: dict[str, Any]) -> float:
        return summary["inertia"]

    def combine(self, cfg: KMeansJobConfig, sources: list[Path], destination: Path, kept: int,
                orders: list[np.ndarray] | None = None) -> list[float]:
        return vote_assignments(sources, destination, cfg.model.n_clusters, kept, cfg.seed, orders)

    def report_pictures(self, run: Path, report_dir: Path, images_of: Any) -> list[str]:
        centres = load_state(run / "checkpoint")["centres"].numpy()
        span = np.ptp(centres) or 1.0
        pixels = np.round(255 * (centres - centres.min()) / span).astype(np.uint8)
        Image.fromarray(np.kron(pixels, np.ones((8, 8), np.uint8))).save(report_dir / "centres.png")
        return ["centres.png"]


KMEANS = register(KMeansAlgorithm())
