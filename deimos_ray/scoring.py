"""The score table of a run: the model beside k-means, Ward's agglomerative clustering
and UMAP then Ward on the same input (the preprocessed pixels, or the backbone's
features).

Every column's internal scores are computed in that one space, so they compare;
``silhouette_embedding`` is the model's silhouette in its own embedding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from deimos_ray.baselines import (
    KMEANS_FIT_ROWS,
    UMAP_FIT_ROWS,
    WARD_FIT_ROWS,
    kmeans_baseline,
    umap_ward_baseline,
    ward_baseline,
)
from deimos_ray.config import UmapConfig
from deimos_ray.metrics import all_scores, heldout_scores, internal_scores


def scores_space(representation: str) -> str:
    """Where a run's internal scores were computed (``metrics.json``'s ``scores_space``)."""
    space = "preprocessed pixels" if representation == "pixels" else f"{representation} features"
    return f"internal scores on {space} for every method; silhouette_embedding in the model's embedding"


def sample_sizes(rows: int, sample_size: int, ward: bool = True, umap: bool = False) -> dict[str, int]:
    """How many rows each part of the score table used (``metrics.json``'s
    ``score_rows``): the quadratic parts work on seeded samples, so the scores' cost grows
    no faster than the rows; Davies-Bouldin, Calinski-Harabasz and the label scores use
    every row."""
    sizes = {"rows": rows, "silhouette_and_dunn": min(rows, sample_size),
             "kmeans_fit": min(rows, KMEANS_FIT_ROWS)}
    if ward:
        sizes["ward_fit"] = min(rows, WARD_FIT_ROWS)
    if umap:
        sizes["umap_ward_fit"] = min(rows, UMAP_FIT_ROWS)
    return sizes


def score_run(
    assignments: pd.DataFrame, ids: np.ndarray, features: np.ndarray, k: int, seed: int,
    sample_size: int, n_init: int, has_labels: bool, model_name: str,
    labels_seen: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None, ward: bool = True,
    umap: UmapConfig | None = None,
) -> dict[str, dict[str, float]]:
    """Scores of the model, of k-means, (``ward``) of Ward's agglomerative clustering and
    (``umap``, its settings) of UMAP then Ward, all on the same input ``features``
    (pixels or backbone features).

    Internal scores of every column are computed in that space, so the columns are
    comparable; ``silhouette_embedding`` is the model's silhouette in its own embedding.

    ``labels_seen(ids, labels)``, when given, marks the rows whose label training saw
    (DAC's ``model.labeled_fraction``). The external scores over all rows are then no
    longer blind, so both columns also get them over the other labelled rows only, as
    ``heldout_accuracy``, ``heldout_nmi``, ``heldout_ari`` and ``heldout_purity``.
    """
    rows = assignments.set_index("id").loc[ids]  # align the Parquet rows with the features
    labels = rows["label"].to_numpy() if has_labels else None
    clusters = rows["cluster"].to_numpy()
    model_scores = all_scores(features, clusters, labels, sample_size, seed)
    embedding = np.stack(rows["embedding"].to_numpy())
    model_scores["silhouette_embedding"] = internal_scores(embedding, clusters, sample_size, seed)["silhouette"]
    km = kmeans_baseline(features, k, seed=seed, n_init=n_init)
    baselines = {"kmeans": km}
    if ward:
        baselines["ward"] = ward_baseline(features, k, seed=seed)
    if umap is not None:
        baselines["umap_ward"] = umap_ward_baseline(features, k, seed=seed, components=umap.components,
                                                    neighbours=umap.neighbours, min_dist=umap.min_dist)
    table = {model_name: model_scores}
    seen = labels_seen(ids, labels) if labels is not None and labels_seen is not None else None
    for name, predicted in baselines.items():
        table[name] = all_scores(features, predicted, labels, sample_size, seed)
        if seen is not None:
            table[name].update(heldout_scores(labels, predicted, seen))
    if seen is not None:
        model_scores.update(heldout_scores(labels, clusters, seen))
    return table
