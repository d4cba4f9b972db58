"""DEC and IDEC as the job spine runs them (Xie et al., ICML 2016; Guo et al., IJCAI 2017)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from deimos_ray.algorithms.base import Algorithm, Predictor
from deimos_ray.assignments import fixed_list
from deimos_ray.config import JobConfig
from deimos_ray.config_io import from_dict
from deimos_ray.models.dec import DEC, DECConfig, build_autoencoder
from deimos_ray.train import dec_loop
from deimos_ray.train.checkpoint import load_state


@dataclass(frozen=True)
class DECJobConfig(JobConfig):
    """Everything ``jobs/train_dec.py`` needs: :class:`JobConfig` and the DEC / IDEC model."""

    model: DECConfig = field(default_factory=DECConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.restarts.count != 1:
            raise ValueError("DEC trains once (restarts.count must be 1): its k-means start "
                             "already restarts n_init times")


class DECAlgorithm(Algorithm):
    """DEC / IDEC: autoencoder pretraining, k-means centres, self-training on the
    target distribution (:mod:`deimos_ray.train.dec_loop`). Trains once: no restarts."""

    name = "dec"
    job = "train_dec"
    description = """Train DEC or IDEC on a set of images and write one Parquet row per image.

Locally (starts a private Ray instance):
    deimos-ray train dec                                  # built-in digits
    deimos-ray train dec --data ../shared/data/usps.npz --variant idec --update-interval 30
    deimos-ray train dec --data /path/to/images --image-size 28 --k 8

On a Ray cluster (jobs/train_dec.py joins the cluster it is submitted to):
    ray job submit --working-dir . -- python jobs/train_dec.py --data /shared/usps.npz \\
        --num-workers 4 --use-gpu --out /shared/runs/dec-usps

Outputs (DIR = --out): config.yaml, metrics.json, checkpoint/, assignments/*.parquet,
rejected.parquet. Rerunning with the same --out resumes training from its checkpoint.
"""
    config_class = DECJobConfig
    train_loop = staticmethod(dec_loop.train_loop_per_worker)
    smoke = {
        "data.limit": 300,
        "model.pretrain_epochs": 2,
        "model.epochs": 2,
        "model.update_interval": 2,
        "model.hidden_dims": [64, 64, 128],
        "model.kmeans_n_init": 2,
        "checkpoint_interval_s": 0,
    }

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--variant", choices=["dec", "idec"],
                       help="dec: KL loss only; idec: also keeps the reconstruction loss (slower, "
                       "preserves local structure)")
        p.add_argument("--pretrain-epochs", type=int, help="autoencoder pretraining epochs: the main "
                       "cost, and the main lever on quality")
        p.add_argument("--update-interval", type=int, help="steps between target-distribution updates "
                       "over the whole dataset (smaller: more full passes, closer tracking)")

    def settings(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"model.variant": args.variant, "model.pretrain_epochs": args.pretrain_epochs,
                "model.update_interval": args.update_interval}

    def model_name(self, cfg: DECJobConfig) -> str:
        return cfg.model.variant

    def check(self, cfg: DECJobConfig) -> None:
        require_dense_for_metadata(cfg)

    def predictor(self, checkpoint_dir: str | Path, device: str = "cpu") -> Predictor:
        """``cluster``, ``confidence`` (max q), ``embedding`` (z)."""
        model = load_dec(checkpoint_dir, device)

        def columns(x):
            z, q, _ = model(x)
            confidence, cluster = q.max(dim=1)
            return {
                "cluster": pa.array(cluster.cpu().numpy(), pa.int32()),
                "confidence": pa.array(confidence.cpu().numpy(), pa.float32()),
                "embedding": fixed_list(z.cpu().numpy().astype(np.float32), pa.float32()),
            }
        return columns


def load_dec(checkpoint_dir: str | Path, device: str = "cpu") -> DEC:
    """Rebuild a trained DEC/IDEC model from a checkpoint directory (weights only)."""
    state = load_state(checkpoint_dir)
    if state.get("phase") != "cluster":
        raise ValueError(f"{checkpoint_dir} holds a {state.get('phase')!r} checkpoint, not a trained DEC model")
    cfg = from_dict(DECConfig, state["config"])
    model = DEC(cfg, build_autoencoder(cfg, tuple(state["input_shape"])))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def require_dense_for_metadata(cfg: JobConfig) -> None:
    """Metadata features are appended to flat feature vectors, which only the dense
    autoencoder takes (DEC and DESOM)."""
    if cfg.data.metadata_features and cfg.model.autoencoder != "dense":
        raise ValueError("metadata_features extend flat feature vectors: use model.autoencoder=dense")
