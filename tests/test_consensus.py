"""The restart consensus: reference partition, cluster matching, averaged probabilities,
the vote of hard clusterings, and the combined assignments tables (DAC and DESOM)."""


import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from deimos_ray.consensus import (
    combine_labelings,
    combine_probabilities,
    match_clusters,
    one_hot_consensus,
)


def test_one_hot_consensus_outvotes_each_members_mistakes():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 50)
    members = []
    for m, permutation in enumerate([[0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0]]):
        labels = np.asarray(permutation)[truth]
        wrong = np.arange(m * 20, m * 20 + 20)  # 10 % of the rows, different ones per member
        labels[wrong] = (labels[wrong] + 1 + rng.integers(0, 3, size=20)) % 4
        members.append(labels)
        assert adjusted_rand_score(truth, labels) < 0.9
    assert adjusted_rand_score(truth, one_hot_consensus(members, 4, seed=0)) == 1.0


def test_one_hot_consensus_refuses_members_of_different_lengths():
    with pytest.raises(ValueError, match="same rows"):
        one_hot_consensus([np.zeros(5, int), np.zeros(6, int)], 2)
    with pytest.raises(ValueError, match="at least one"):
        one_hot_consensus([], 2)


def test_match_clusters_inverts_a_relabelling_and_keeps_the_most_rows():
    reference = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    labels = np.array([2, 2, 2, 0, 0, 1, 1, 1, 1])  # 2 -> 0, 0 -> 1, 1 -> 2; row 5 is off
    order = match_clusters(labels, reference, 3)
    assert order.tolist() == [1, 2, 0]
    assert (order[labels] == reference).sum() == 8


def test_combine_probabilities_undoes_permuted_columns():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(3, 0.3), size=60)
    members = [p, p[:, [2, 0, 1]], p[:, [1, 2, 0]]]
    mean, agreement = combine_probabilities(members, seed=0)
    assert agreement == [1.0, 1.0, 1.0]
    # The same matrix, its columns in the reference's order.
    order = match_clusters(p.argmax(axis=1), mean.argmax(axis=1), 3)
    np.testing.assert_allclose(mean[:, order], p, atol=1e-12)


def test_combine_probabilities_averages_matched_columns():
    # Member b calls the clusters by the other name; on row 2 the two disagree, and b's
    # confidence outweighs a's.
    a = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.1, 0.9], [0.2, 0.8]])
    b = np.array([[0.1, 0.9], [0.3, 0.7], [0.9, 0.1], [0.8, 0.2], [0.9, 0.1]])
    mean, agreement = combine_probabilities([a, b], seed=0)
    matched_b = b[:, ::-1]  # b's cluster 1 is a's cluster 0
    expected = (a + matched_b) / 2
    if mean[0, 0] < mean[0, 1]:  # the reference may name a's cluster 0 either way
        expected = expected[:, ::-1]
    np.testing.assert_allclose(mean, expected)
    assert mean.argmax(axis=1)[2] != mean.argmax(axis=1)[0]  # row 2 follows b: 0.35 against 0.65
    assert agreement == [0.8, 1.0]


def test_combine_labelings_votes_after_matching():
    truth = np.repeat(np.arange(3), 4)  # 12 rows, clusters 0, 1, 2
    a = truth.copy()
    b = np.array([2, 0, 1])[truth]  # a relabelling of the truth
    c = np.array([1, 2, 0])[truth]
    b[0] = 0  # b's cluster 0 is the truth's 1: row 0 outvoted by a and c
    c[5] = 0  # c's cluster 0 is the truth's 2: row 5 outvoted by a and b
    combined, share, agreement = combine_labelings([a, b, c], 3, seed=0)
    assert adjusted_rand_score(truth, combined) == 1.0
    expected_share = np.ones(12)
    expected_share[[0, 5]] = 2 / 3
    np.testing.assert_allclose(share, expected_share)
    assert agreement == [1.0, 11 / 12, 11 / 12]


def test_combine_labelings_breaks_ties_by_the_reference():
    # Two members that disagree on rows 3 and 4: every vote there ties one to one, and
    # the reference partition (k-means over both memberships) decides, whichever ids
    # its seed happens to give the two clusters (lowest-id-wins would follow the ids).
    a = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    b = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    for seed in range(10):
        combined, share, _ = combine_labelings([a, b], 2, seed=seed)
        reference = one_hot_consensus([a, b], 2, seed=seed)
        assert (combined == reference).all(), seed
        np.testing.assert_allclose(share, [1, 1, 1, 0.5, 0.5, 1, 1, 1, 1, 1])
