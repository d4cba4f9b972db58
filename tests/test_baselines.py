"""The baselines of the score table on constructed groups: k-means, Ward, UMAP then Ward."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score

from deimos_ray.baselines import kmeans_baseline, umap_ward_baseline, ward_baseline


def groups(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated Gaussian groups of 100 rows in 16 dimensions."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), 100)
    return rng.normal(scale=5.0, size=(3, 16))[labels] + rng.normal(size=(300, 16)), labels


def test_every_baseline_finds_separated_groups_when_fitted_on_all_rows_or_a_sample():
    x, labels = groups()
    for baseline in (kmeans_baseline, ward_baseline, umap_ward_baseline):
        assert adjusted_rand_score(labels, baseline(x, 3, seed=0)) == 1.0, baseline.__name__
        # Fitted on 120 rows: the rest join the cluster of their nearest sampled rows.
        sampled = baseline(x, 3, seed=0, max_fit_samples=120)
        assert len(sampled) == 300 and adjusted_rand_score(labels, sampled) == 1.0, baseline.__name__


def test_umap_then_ward_follows_a_manifold_that_ward_alone_cuts_across():
    # Two concentric rings: Ward on the coordinates splits them into halves, UMAP's
    # neighbour graph keeps each ring whole.
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 400)
    radius = np.repeat([1.0, 4.0], 200)
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1) + rng.normal(scale=0.05, size=(400, 2))
    labels = np.repeat([0, 1], 200)
    assert adjusted_rand_score(labels, umap_ward_baseline(x, 2, seed=0, neighbours=15)) == 1.0
    assert adjusted_rand_score(labels, ward_baseline(x, 2)) < 0.5
