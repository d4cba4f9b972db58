"""Baselines every report is judged against: k-means and Ward's agglomerative clustering
on the same input."""

from __future__ import annotations

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans

KMEANS_FIT_ROWS = 50_000  # k-means is fitted on a sample of at most this many rows
WARD_FIT_ROWS = 10_000  # Ward's linkage (memory quadratic in the rows) likewise


def kmeans_baseline(features: np.ndarray, k: int, seed: int = 0, n_init: int = 10,
                    max_fit_samples: int = KMEANS_FIT_ROWS) -> np.ndarray:
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


def ward_baseline(features: np.ndarray, k: int, seed: int = 0, max_fit_samples: int = WARD_FIT_ROWS) -> np.ndarray:
    """Ward's agglomerative clustering labels for every row of ``features`` (N, ...).

    Ward's linkage needs memory quadratic in the rows, so it is fitted on a seeded
    sample of at most ``max_fit_samples`` rows; every other row joins the cluster whose
    mean is nearest (the criterion Ward's merges minimise).
    """
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    idx = np.arange(len(x))
    if len(x) > max_fit_samples:
        idx = np.sort(np.random.default_rng(seed).choice(len(x), max_fit_samples, replace=False))
    fitted = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x[idx])
    if len(idx) == len(x):
        return fitted
    means = np.stack([x[idx][fitted == c].mean(axis=0) for c in range(k)])
    d = (x ** 2).sum(1, keepdims=True) - 2 * x @ means.T + (means ** 2).sum(1)
    return d.argmin(axis=1)
