"""DEC and IDEC as the job spine runs them (Xie et al., ICML 2016; Guo et al., IJCAI 2017)."""

from __future__ import annotations

from deimos_ray.algorithms.base import Algorithm
from deimos_ray.config import DECJobConfig
from deimos_ray.train import dec_loop


class DECAlgorithm(Algorithm):
    """DEC / IDEC: autoencoder pretraining, k-means centres, self-training on the
    target distribution (:mod:`deimos_ray.train.dec_loop`). Trains once: no restarts."""

    name = "dec"
    job = "train_dec"
    config_class = DECJobConfig
    train_loop = staticmethod(dec_loop.train_loop_per_worker)

    def model_name(self, cfg: DECJobConfig) -> str:
        return cfg.model.variant

    def check(self, cfg: DECJobConfig) -> None:
        require_dense_for_metadata(cfg)


def require_dense_for_metadata(cfg: DECJobConfig) -> None:
    """Metadata features are appended to flat feature vectors, which only the dense
    autoencoder takes (DEC and DESOM)."""
    if cfg.data.metadata_features and cfg.model.autoencoder != "dense":
        raise ValueError("metadata_features extend flat feature vectors: use model.autoencoder=dense")
