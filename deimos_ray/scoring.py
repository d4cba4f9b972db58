"""The score table of a run: the model and the k-means baseline on the same input.

Both columns' internal scores are computed in the same space, the preprocessed pixels
(or feature vectors), so they compare; ``silhouette_embedding`` is the model's
silhouette in its own embedding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from deimos_ray.baselines import kmeans_baseline
from deimos_ray.metrics import all_scores, heldout_scores, internal_scores

SCORES_SPACE = ("internal scores on preprocessed pixels for every method; "
                "silhouette_embedding in the model's embedding")


def score_run(
    assignments: pd.DataFrame, ids: np.ndarray, features: np.ndarray, k: int, seed: int,
    sample_size: int, n_init: int, has_labels: bool, model_name: str,
    labels_seen: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Scores of the model and of k-means on the same input features.

    Internal scores of both are computed in the same space, the preprocessed pixels, so
    the columns are comparable; ``silhouette_embedding`` is the model's silhouette in its
    own embedding.

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
    kmeans_scores = all_scores(features, km, labels, sample_size, seed)
    if labels is not None and labels_seen is not None:
        seen = labels_seen(ids, labels)
        model_scores.update(heldout_scores(labels, clusters, seen))
        kmeans_scores.update(heldout_scores(labels, km, seen))
    return {model_name: model_scores, "kmeans": kmeans_scores}
