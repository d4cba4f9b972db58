"""On a constructed uneven set (one large Gaussian group and four small ones in 64
dimensions), DEC and IDEC with the target's size prior taken from their k-means start
(``model.size_prior=start``) end at or above that start by ARI, and DESOM at or above
its own start (one iteration from its sampled prototypes)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from deimos_ray import DeepClusterer

SIZES = (300, 30, 25, 20, 15)
DEC_SETTINGS = {"model.hidden_dims": [64, 64, 128], "model.latent_dim": 5, "model.pretrain_epochs": 30,
                "model.batch_size": 64, "model.update_interval": 20, "scaling.num_workers": 0}


def uneven(seed: int = 0, dims: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the groups of ``SIZES`` (centres N(0, 1.2^2), unit spread), scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (len(SIZES), dims)) * 1.2
    x = np.concatenate([c + rng.normal(0, 1.0, (n, dims)) for c, n in zip(centres, SIZES, strict=True)])
    labels = np.concatenate([[i] * n for i, n in enumerate(SIZES)])
    return ((x - x.min()) / (x.max() - x.min())).astype(np.float32), labels


def ari_of(x: np.ndarray, labels: np.ndarray, tmp_path, name: str, algorithm: str, settings: dict) -> float:
    est = DeepClusterer(algorithm=algorithm, n_clusters=len(SIZES), random_state=0, settings=settings,
                        out_dir=str(tmp_path / name)).fit(x)
    return adjusted_rand_score(labels, est.labels_)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dec", "idec"])
def test_dec_with_the_start_prior_ends_at_or_above_its_kmeans_start(ray_session, tmp_path, variant):
    x, labels = uneven()
    settings = {**DEC_SETTINGS, "model.variant": variant}
    start = ari_of(x, labels, tmp_path, "start", "dec", {**settings, "model.epochs": 0})  # AE + k-means
    end = ari_of(x, labels, tmp_path, "end", "dec", {**settings, "model.epochs": 60, "model.size_prior": "start"})
    assert end >= start - 0.01, (start, end)


@pytest.mark.slow
def test_desom_ends_at_or_above_its_start(ray_session, tmp_path):
    x, labels = uneven()
    settings = {"model.map_size": [3, 3], "model.hidden_dims": [64, 64, 128], "model.latent_dim": 5,
                "model.batch_size": 64, "scaling.num_workers": 0}
    start = ari_of(x, labels, tmp_path, "start", "desom", {**settings, "model.iterations": 1})
    end = ari_of(x, labels, tmp_path, "end", "desom", {**settings, "model.iterations": 600})
    assert end >= start - 0.01, (start, end)
