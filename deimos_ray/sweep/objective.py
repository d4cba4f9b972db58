"""The label-free score a sweep chooses by, computed for every trial on the same seeded
sample of rows in the same reference space: the standardised backbone features when a
backbone is used, else a PCA of the pixels fitted once on that sample. Scores in each
model's own embedding are not comparable across k or across trials (Wang & Ye 2024),
while silhouette in one fixed space tracks clustering quality (Lowe et al. 2024)::

    objective = silhouette (reference space) - collapsed / k

where ``collapsed`` counts the k clusters asked for that are empty or tiny (fewer than
``min_cluster_fraction`` of the rows, default 0.5 %, and at least 2). A large cluster is
not penalised: science collections are uneven (the HiRISE originals are 84 % one class),
and balance terms that force equal sizes scored worse there. Davies-Bouldin,
Calinski-Harabasz and Dunn are recorded beside it, and with restarts per trial the mean
ARI between the restarts' clusterings (:func:`stability`).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from deimos_ray.data.prepare import PreparedData, collect_features
from deimos_ray.metrics import internal_scores

OBJECTIVE = "objective"
OBJECTIVE_FORMULA = "silhouette in the reference space - collapsed clusters / k"
INTERNAL_SCORES = ("silhouette", "davies_bouldin", "calinski_harabasz", "dunn")
OBJECTIVE_SCORES = (OBJECTIVE, *INTERNAL_SCORES, "clusters_found", "collapsed")  # objective_scores' keys
LABEL_SCORES = ("accuracy", "nmi", "ari", "purity")
REFERENCE_DIMS = 50  # PCA components of the pixel reference space


def reference_space(data: PreparedData, sample_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The sample every trial is scored on: (ids, vectors, description).

    With a backbone the vectors are its (standardised) features; on pixels a PCA of at
    most :data:`REFERENCE_DIMS` components fitted once on the sample, so distances are
    not dominated by the many near-constant pixels.
    """
    ids, x = collect_features(data.good)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(ids), size=min(sample_size, len(ids)), replace=False))
    ids, x = ids[pick], x[pick]
    if data.representation != "pixels":
        return ids, x, f"{data.representation} features ({x.shape[1]} values), {len(ids)} rows"
    dims = min(REFERENCE_DIMS, x.shape[1], len(ids) - 1)
    reduced = PCA(n_components=dims, svd_solver="full", random_state=seed).fit_transform(x)
    return ids, reduced.astype(np.float32), f"PCA of the pixels ({dims} components), {len(ids)} rows"


def objective_scores(reference: np.ndarray, sample_clusters: np.ndarray, all_clusters: np.ndarray, k: int,
                     min_cluster_fraction: float = 0.005, seed: int = 0) -> dict[str, float]:
    """The label-free scores of one clustering (module docstring for the objective).

    Args:
        reference: (n, d) vectors of the scored sample in the reference space.
        sample_clusters: (n,) cluster of each of those rows.
        all_clusters: The cluster of every assigned row (cluster sizes come from these).
        k: The clusters asked for.
        min_cluster_fraction: Clusters smaller than this share of the rows count as
            collapsed.
        seed: Seeds the sample of the Dunn index.

    Returns:
        ``objective``, ``silhouette``, ``davies_bouldin``, ``calinski_harabasz``,
        ``dunn``, ``clusters_found`` (distinct clusters) and ``collapsed``.
    """
    sizes = np.bincount(pd.factorize(all_clusters)[0]) if len(all_clusters) else np.zeros(0, int)
    tiny = max(2, math.ceil(min_cluster_fraction * len(all_clusters)))
    kept = int((sizes >= tiny).sum())
    collapsed = max(0, k - kept)
    scores = internal_scores(reference, sample_clusters, sample_size=len(sample_clusters), seed=seed)
    silhouette = scores["silhouette"]
    objective = (silhouette if np.isfinite(silhouette) else -1.0) - collapsed / k
    return {OBJECTIVE: float(objective), "silhouette": silhouette,
            **{name: scores[name] for name in INTERNAL_SCORES if name != "silhouette"},
            "clusters_found": int(len(sizes)), "collapsed": int(collapsed)}


def stability(run_dir: Path) -> float | None:
    """Mean ARI between every two restarts' clusterings of a run (None without restarts)."""
    parts = sorted((run_dir / "restarts").glob("*/assignments"))
    if len(parts) < 2:
        return None
    frames = [pd.read_parquet(p, columns=["id", "cluster"]).set_index("id")["cluster"] for p in parts]
    ids = frames[0].index
    aris = [adjusted_rand_score(a.loc[ids], b.loc[ids]) for a, b in itertools.combinations(frames, 2)]
    return float(np.mean(aris))
