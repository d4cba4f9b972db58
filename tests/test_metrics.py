"""Every score against values computed by hand on tiny inputs."""

import math

import numpy as np
import pytest

from deimos_ray.metrics import (
    all_scores,
    cluster_accuracy,
    dunn_index,
    external_scores,
    format_table,
    heldout_scores,
    internal_scores,
    purity,
    size_entropy,
)
from deimos_ray.scoring import sample_sizes


def test_accuracy_uses_best_one_to_one_matching():
    truth = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([2, 2, 1, 0, 0, 1])  # 2->0, 0->1, 1->2: 5 of 6 right
    assert cluster_accuracy(truth, pred) == pytest.approx(5 / 6)
    # Two clusters may not both map to class 0: [a a b b] vs [0 0 0 0] is 0.5.
    assert cluster_accuracy(np.zeros(4, int), np.array([0, 0, 1, 1])) == pytest.approx(0.5)


def test_purity_allows_many_to_one():
    assert purity(np.zeros(4, int), np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert purity(np.array([0, 0, 1, 1, 1]), np.array([0, 0, 0, 1, 1])) == pytest.approx(4 / 5)


def test_external_scores_of_a_relabelled_perfect_clustering():
    truth = np.array([0, 0, 1, 1, 2, 2])
    s = external_scores(truth, np.array([5, 5, 3, 3, 9, 9]))
    assert s == pytest.approx({"accuracy": 1.0, "nmi": 1.0, "ari": 1.0, "purity": 1.0})


def test_external_scores_ignore_unknown_labels():
    s = external_scores(np.array([0, 0, -1, 1]), np.array([1, 1, 0, 0]))
    assert s["accuracy"] == pytest.approx(1.0)


def test_heldout_scores_leave_out_the_seen_rows():
    truth = np.array([0, 0, 1, 1, 2, -1])
    pred = np.array([5, 5, 5, 7, 7, 7])
    seen = np.array([False, True, True, False, False, False])
    # Left: rows 0, 3, 4 (row 5 has no label); each in its own class, two clusters.
    scores = heldout_scores(truth, pred, seen)
    assert scores["heldout_accuracy"] == pytest.approx(2 / 3)
    assert scores["heldout_purity"] == pytest.approx(2 / 3)
    assert set(scores) == {"heldout_accuracy", "heldout_nmi", "heldout_ari", "heldout_purity"}
    # Over every labelled row the same clustering scores differently: the seen rows count.
    assert external_scores(truth, pred)["accuracy"] == pytest.approx(3 / 5)


def test_dunn_index_by_hand():
    # 1-D: clusters {0, 1} and {4, 6}: separation 3 (1 to 4), largest diameter 2.
    x = np.array([[0.0], [1.0], [4.0], [6.0]])
    assert dunn_index(x, np.array([0, 0, 1, 1])) == pytest.approx(1.5)
    assert math.isnan(dunn_index(x, np.zeros(4, int)))


def test_size_entropy_by_hand():
    assert size_entropy(np.array([0, 0, 1, 1])) == pytest.approx(math.log(2))
    assert size_entropy(np.array([0, 0, 0, 1])) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert size_entropy(np.zeros(5, int)) == pytest.approx(0.0)


def test_internal_scores_by_hand():
    # Two tight, far-apart pairs in 1-D: points 0,1 and 10,11.
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    labels = np.array([0, 0, 1, 1])
    s = internal_scores(x, labels)
    # silhouette of point 0: a = 1, b = mean(10, 11) = 10.5 -> 1 - 1/10.5; by symmetry
    # point 1: a = 1, b = mean(9, 10) = 9.5 -> 1 - 1/9.5.
    expected_sil = np.mean([1 - 1 / 10.5, 1 - 1 / 9.5, 1 - 1 / 9.5, 1 - 1 / 10.5])
    assert s["silhouette"] == pytest.approx(expected_sil)
    # Davies-Bouldin: scatter 0.5 each, centroid distance 10 -> (0.5 + 0.5) / 10.
    assert s["davies_bouldin"] == pytest.approx(0.1)
    # Calinski-Harabasz: B = 4 * 5^2 = 100 over (k-1) = 1; W = 4 * 0.25 = 1 over (n-k) = 2.
    assert s["calinski_harabasz"] == pytest.approx(200.0)
    assert s["dunn"] == pytest.approx(9.0)
    assert s["n_clusters"] == 2 and s["size_entropy"] == pytest.approx(math.log(2))


def test_internal_scores_single_cluster_are_nan_not_errors():
    s = internal_scores(np.random.default_rng(0).normal(size=(10, 2)), np.zeros(10, int))
    assert math.isnan(s["silhouette"]) and s["n_clusters"] == 1


def test_silhouette_sample_is_seeded():
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(500, 3)), rng.integers(0, 3, 500)
    a = internal_scores(x, labels, sample_size=100, seed=3)["silhouette"]
    b = internal_scores(x, labels, sample_size=100, seed=3)["silhouette"]
    assert a == b


def test_all_scores_and_table():
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    s = all_scores(x, np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
    assert s["accuracy"] == 1.0
    table = format_table({"dec": s, "kmeans": s})
    assert "accuracy" in table.splitlines()[1] and "kmeans" in table.splitlines()[0]


def test_the_score_table_states_the_rows_each_part_used():
    assert sample_sizes(75_000, 2000) == {"rows": 75_000, "silhouette_and_dunn": 2000, "kmeans_fit": 50_000,
                                          "ward_fit": 10_000}
    assert sample_sizes(300, 2000, ward=False) == {"rows": 300, "silhouette_and_dunn": 300, "kmeans_fit": 300}
    assert sample_sizes(75_000, 2000, umap=True)["umap_ward_fit"] == 10_000
