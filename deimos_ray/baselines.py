"""Baselines every report is judged against: k-means on the same input."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans


def kmeans_baseline(features: np.ndarray, k: int, seed: int = 0, n_init: int = 10, max_fit_samples: int = 50_000) -> np.ndarray:
    """k-means labels for every row of ``features`` (N, ...), flattened to vectors.

    Fits on a seeded sample of at most ``max_fit_samples`` rows (all rows when fewer) and
    predicts every row, so the cost stays bounded on large sets.
    """
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    if len(x) > max_fit_samples:
        idx = np.random.default_rng(seed).choice(len(x), max_fit_samples, replace=False)
        km.fit(x[idx])
        return km.predict(x)
    return km.fit_predict(x)
