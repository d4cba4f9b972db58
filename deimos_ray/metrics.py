"""Cluster scores: label-free (internal) and, when labels are known, external.

Internal scores need only the features and the assignment: silhouette (on a fixed-size,
seeded sample), Davies-Bouldin, Calinski-Harabasz, the classic Dunn index (on a sample),
the cluster-size entropy and the number of non-empty clusters. External scores compare
with ground truth: accuracy under the best one-to-one matching of clusters to classes
(Hungarian algorithm), NMI, ARI and purity. Cluster ids are arbitrary; none of these
depends on them.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist, pdist
from sklearn import metrics as skm

INTERNAL = ("silhouette", "davies_bouldin", "calinski_harabasz", "dunn", "size_entropy", "n_clusters")
EXTERNAL = ("accuracy", "nmi", "ari", "purity")
# The external scores over only the rows whose label training did not see (DAC with
# labelled pairs), beside the same scores over every row: ``heldout_accuracy``, ...
HELDOUT_PREFIX = "heldout_"
HELDOUT = tuple(HELDOUT_PREFIX + name for name in EXTERNAL)


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def cluster_accuracy(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Accuracy after matching clusters to classes one-to-one (Hungarian algorithm).

    With more clusters than classes, unmatched clusters count as errors.
    """
    labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
    classes, t = np.unique(labels_true, return_inverse=True)
    clusters, p = np.unique(labels_pred, return_inverse=True)
    counts = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    np.add.at(counts, (p, t), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels_true))


def purity(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Fraction of samples in their cluster's majority class."""
    _, t = np.unique(labels_true, return_inverse=True)
    _, p = np.unique(labels_pred, return_inverse=True)
    counts = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(counts, (p, t), 1)
    return float(counts.max(axis=1).sum() / len(t))


def dunn_index(features: np.ndarray, labels: np.ndarray) -> float:
    """Classic Dunn index: smallest between-cluster distance over largest diameter.

    Between-cluster distance is single linkage (closest pair of points in two clusters);
    a cluster's diameter is its largest pairwise distance. Higher is better. Quadratic in
    the number of points: pass a sample for large data.
    """
    ids = np.unique(labels)
    if len(ids) < 2:
        return float("nan")
    groups = [features[labels == c] for c in ids]
    diameter = max((pdist(g).max() if len(g) > 1 else 0.0) for g in groups)
    separation = min(
        cdist(groups[i], groups[j]).min() for i in range(len(groups)) for j in range(i + 1, len(groups))
    )
    return float(separation / diameter) if diameter > 0 else float("inf")


def size_entropy(labels: np.ndarray) -> float:
    """Shannon entropy (nats) of the cluster-size distribution; log(K) when balanced."""
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def internal_scores(features: np.ndarray, labels: np.ndarray, sample_size: int = 2000, seed: int = 0) -> dict[str, float]:
    """Label-free scores of ``labels`` in the space of ``features`` (N, D).

    Silhouette and Dunn use the same seeded sample of ``sample_size`` points, so repeated
    calls on the same data give the same numbers. Scores that need two or more clusters
    are NaN when there is only one.
    """
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    labels = np.asarray(labels)
    k = len(np.unique(labels))
    out = {"size_entropy": size_entropy(labels), "n_clusters": float(k)}
    if k < 2 or k >= len(labels):
        out.update(silhouette=float("nan"), davies_bouldin=float("nan"), calinski_harabasz=float("nan"), dunn=float("nan"))
        return out
    idx = _sample(len(labels), sample_size, seed)
    sample_ok = len(np.unique(labels[idx])) >= 2
    out["silhouette"] = float(skm.silhouette_score(features[idx], labels[idx])) if sample_ok else float("nan")
    out["davies_bouldin"] = float(skm.davies_bouldin_score(features, labels))
    out["calinski_harabasz"] = float(skm.calinski_harabasz_score(features, labels))
    out["dunn"] = dunn_index(features[idx], labels[idx]) if sample_ok else float("nan")
    return out


def external_scores(labels_true: np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    """Agreement with ground truth; rows whose true label is -1 (unknown) are ignored."""
    labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
    known = labels_true >= 0
    t, p = labels_true[known], labels_pred[known]
    if len(t) == 0:
        return {}
    return {
        "accuracy": cluster_accuracy(t, p),
        "nmi": float(skm.normalized_mutual_info_score(t, p)),
        "ari": float(skm.adjusted_rand_score(t, p)),
        "purity": purity(t, p),
    }


def heldout_scores(labels_true: np.ndarray, labels_pred: np.ndarray, seen: np.ndarray) -> dict[str, float]:
    """:func:`external_scores` over the rows training did not see the label of (``seen``
    False), named ``heldout_accuracy``, ``heldout_nmi``, ..."""
    unseen = np.where(seen, -1, labels_true)  # -1: left out, as an unknown label is
    return {HELDOUT_PREFIX + name: value for name, value in external_scores(unseen, labels_pred).items()}


def all_scores(features, labels_pred, labels_true=None, sample_size: int = 2000, seed: int = 0) -> dict[str, float]:
    """Internal scores, plus external ones when ``labels_true`` has known labels."""
    scores = internal_scores(features, labels_pred, sample_size, seed)
    if labels_true is not None:
        scores.update(external_scores(labels_true, labels_pred))
    return scores


def format_table(columns: dict[str, dict[str, float]], order: tuple[str, ...] = EXTERNAL + HELDOUT + INTERNAL) -> str:
    """A plain-text table: one row per metric, one column per method."""
    names = list(columns)
    keys = [k for k in order if any(k in c for c in columns.values())]
    keys += sorted({k for c in columns.values() for k in c} - set(keys))
    width = max(len(k) for k in keys) + 2
    lines = ["metric".ljust(width) + "".join(n.rjust(14) for n in names)]
    for key in keys:
        cells = []
        for name in names:
            v = columns[name].get(key)
            cells.append(("-" if v is None else f"{v:.4f}" if key != "n_clusters" else f"{v:.0f}").rjust(14))
        lines.append(key.ljust(width) + "".join(cells))
    return "\n".join(lines)
