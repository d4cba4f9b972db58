"""One clustering from several trainings of the same rows (the restarts' consensus).

Cluster ids are arbitrary in every training, so the trainings' outputs cannot simply be
averaged. The combination has three steps:

1. A reference partition: k-means over the rows' concatenated one-hot memberships (one
   block of k columns per training). Topchy, Jain & Punch, "Clustering ensembles: models
   of consensus and weak partitions" (IEEE TPAMI 27(12), 2005) show this finds the
   partition that agrees most with the members by their quadratic mutual information.
2. Each training's clusters are matched one-to-one to the reference's (Hungarian
   algorithm on the two partitions' contingency table).
3. The trainings' cluster probabilities, their columns put in the reference's order, are
   averaged per row; the averaged probabilities give the cluster (the most probable),
   the confidence and the top-k, as one network's probabilities would.

Averaging matched memberships is soft voting, as in Dimitriadou, Weingessel & Hornik,
"A combination scheme for fuzzy clustering" (IJPRAI 16(7), 2002). Members that give
only a cluster per row (DESOM's groups of map nodes) vote with one-hot memberships
(:func:`combine_labelings`). Everything is linear in the number of rows: there is no
row-by-row co-association matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning


def one_hot_consensus(labelings: Sequence[np.ndarray], k: int, seed: int = 0, n_init: int = 10) -> np.ndarray:
    """The reference partition of step 1: k-means on the concatenated one-hot memberships.

    Args:
        labelings: One cluster id per row (0 .. k-1) for each member, all of one length.
        k: Number of clusters, in the members and in the result.
        seed, n_init: The k-means's seed and restarts.
    """
    if len(labelings) == 0:
        raise ValueError("a consensus needs at least one clustering")
    n = len(labelings[0])
    if any(len(labels) != n for labels in labelings):
        raise ValueError("every clustering must label the same rows")
    eye = np.eye(k, dtype=np.float32)
    memberships = np.concatenate([eye[np.asarray(labels)] for labels in labelings], axis=1)
    with warnings.catch_warnings():
        # Members that use fewer than k clusters give fewer than k distinct rows, and
        # k-means says so; the reference then leaves clusters empty, as the members do.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(k, n_init=n_init, random_state=seed).fit_predict(memberships).astype(np.int64)


def match_clusters(labels: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """``order`` such that cluster ``c`` of ``labels`` is the reference's ``order[c]``.

    The one-to-one matching that keeps the most rows in matched clusters (Hungarian
    algorithm), as accuracy matches clusters to classes.
    """
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels), np.asarray(reference)), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    order = np.empty(k, dtype=np.int64)
    order[rows] = cols
    return order


def combine_probabilities(probabilities: Sequence[np.ndarray], seed: int = 0, n_init: int = 10,
                          orders: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[float]]:
    """The three steps of the module docstring.

    Args:
        probabilities: Each member's (rows, k) cluster probabilities, rows in one order.
        seed, n_init: For the reference partition's k-means.
        orders: When given, each member's matching (its cluster ``c`` is the combined
            cluster ``order[c]``) is appended to it, for applying the combination to
            other rows: where clusters are empty or ambiguous, matching them again
            against the combined clusters could pair them differently.

    Returns:
        The averaged (rows, k) probabilities, columns in the reference's order, and per
        member its agreement: the share of rows whose most probable cluster, matched to
        the reference, is the combined cluster.
    """
    probabilities = [np.asarray(p, dtype=np.float64) for p in probabilities]
    k = probabilities[0].shape[1]
    if any(p.shape != probabilities[0].shape for p in probabilities):
        raise ValueError("every member must give probabilities of the same shape")
    labelings = [p.argmax(axis=1) for p in probabilities]
    reference = one_hot_consensus(labelings, k, seed, n_init)
    mean = np.zeros_like(probabilities[0])
    matched_labels = []
    for p, labels in zip(probabilities, labelings, strict=True):
        order = match_clusters(labels, reference, k)
        if orders is not None:
            orders.append(order)
        matched = np.empty_like(p)
        matched[:, order] = p
        mean += matched / len(probabilities)
        matched_labels.append(order[labels])
    combined = mean.argmax(axis=1)
    agreement = [float(np.mean(labels == combined)) for labels in matched_labels]
    return mean, agreement


def combine_labelings(labelings: Sequence[np.ndarray], k: int, seed: int = 0, n_init: int = 10,
                      orders: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The module docstring's steps for members that give one cluster per row: a vote.

    Each member's clusters are matched to the reference partition's; every row takes
    the cluster most members give it, and where clusters tie, the reference's when it
    is among them (else the lowest id).

    Args:
        labelings: Each member's cluster per row (0 .. k-1), rows in one order.
        k: Number of clusters.
        seed, n_init: For the reference partition's k-means.
        orders: When given, each member's matching is appended to it
            (:func:`combine_probabilities`).

    Returns:
        The combined cluster per row, the share of members that gave each row that
        cluster, and per member its agreement: the share of rows where its matched
        cluster is the combined one.
    """
    labelings = [np.asarray(labels, dtype=np.int64) for labels in labelings]
    reference = one_hot_consensus(labelings, k, seed, n_init)
    rows = np.arange(len(reference))
    votes = np.zeros((len(reference), k), dtype=np.int64)
    matched_labels = []
    for labels in labelings:
        order = match_clusters(labels, reference, k)
        if orders is not None:
            orders.append(order)
        matched = order[labels]
        votes[rows, matched] += 1
        matched_labels.append(matched)
    top = votes.max(axis=1)
    combined = np.where(votes[rows, reference] == top, reference, votes.argmax(axis=1))
    agreement = [float(np.mean(labels == combined)) for labels in matched_labels]
    return combined, top / len(labelings), agreement
