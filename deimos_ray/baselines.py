"""Baselines every report is judged against, all on the same input: k-means, Ward's
agglomerative clustering, and UMAP then Ward (Lowe et al. 2024, arXiv 2406.02465: a
manifold embedding of pretrained features, then a classical clusterer)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.neighbors import KNeighborsClassifier

KMEANS_FIT_ROWS = 50_000  # k-means is fitted on a sample of at most this many rows
WARD_FIT_ROWS = 10_000  # Ward's linkage (memory quadratic in the rows) likewise
UMAP_FIT_ROWS = 10_000  # UMAP's neighbour graph, then Ward on its embedding, likewise
UMAP_VOTERS = 10  # a row outside UMAP's sample takes the cluster most of its nearest sampled rows hold


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
    idx = fit_sample(len(x), max_fit_samples, seed)
    fitted = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x[idx])
    if len(idx) == len(x):
        return fitted
    means = np.stack([x[idx][fitted == c].mean(axis=0) for c in range(k)])
    d = (x ** 2).sum(1, keepdims=True) - 2 * x @ means.T + (means ** 2).sum(1)
    return d.argmin(axis=1)


def umap_ward_baseline(features: np.ndarray, k: int, seed: int = 0, components: int = 10,
                       neighbours: int = 30, min_dist: float = 0.0,
                       max_fit_samples: int = UMAP_FIT_ROWS) -> np.ndarray:
    """UMAP, then Ward's clustering of the embedding: labels for every row of ``features``.

    UMAP (``neighbours`` nearest neighbours, ``min_dist``, ``components`` dimensions:
    defaults as measured for clustering by Lowe et al. 2024) embeds a seeded sample of
    at most ``max_fit_samples`` rows, and Ward's linkage clusters that embedding. Every
    other row takes the cluster most of its ``UMAP_VOTERS`` nearest sampled rows hold, in
    the input space: the embedding's clusters need not be convex there, so the nearest
    mean would not do, and UMAP's own ``transform`` costs as much as a second fit.
    """
    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    idx = fit_sample(len(x), max_fit_samples, seed)
    embedded = umap_model(len(idx), components, neighbours, min_dist, seed).fit_transform(x[idx])
    fitted = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(embedded)
    if len(idx) == len(x):
        return fitted
    labels = np.empty(len(x), dtype=fitted.dtype)
    labels[idx] = fitted
    rest = np.setdiff1d(np.arange(len(x)), idx)
    vote = KNeighborsClassifier(n_neighbors=min(UMAP_VOTERS, len(idx))).fit(x[idx], fitted)
    labels[rest] = vote.predict(x[rest])
    return labels


def fit_sample(rows: int, max_rows: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of at most ``max_rows`` of ``rows`` (all when fewer)."""
    if rows <= max_rows:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))


def umap_model(rows: int, components: int, neighbours: int, min_dist: float, seed: int) -> Any:
    """An unfitted UMAP for ``rows`` rows: neighbours and components clamped to what so
    few rows allow (UMAP's spectral start needs more rows than components + 1); seeded,
    which also rules out threads."""
    # umap-learn compiles its numba kernels on first use (tens of seconds): imported only
    # where UMAP runs, so the jobs that skip it start as fast as before.
    import umap

    return umap.UMAP(n_neighbors=max(2, min(neighbours, rows - 1)), min_dist=min_dist,
                     n_components=max(1, min(components, rows - 2)), random_state=seed, n_jobs=1)
