"""One clustering from several trainings of the same rows (the restarts' consensus), and
the reading and writing of the restarts' assignments folders it combines.

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
(:func:`vote`). An algorithm's ``combine`` hook puts these pieces together for its
own columns, for a training and for new images alike. Everything is linear in the number of rows: there is no
row-by-row co-association matrix.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from deimos_ray.assignments import METADATA_KEY, ROWS_PER_FILE, read_metadata
from deimos_ray.files import write_staged_dir


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


def consensus_orders(labelings: Sequence[np.ndarray], k: int, seed: int = 0,
                     n_init: int = 10) -> tuple[np.ndarray, list[np.ndarray]]:
    """Steps 1 and 2: the reference partition, and each member's matching to it
    (``order`` such that the member's cluster ``c`` is the reference's ``order[c]``)."""
    reference = one_hot_consensus(labelings, k, seed, n_init)
    return reference, [match_clusters(labels, reference, k) for labels in labelings]


def average_matched(probabilities: Sequence[np.ndarray], orders: Sequence[np.ndarray]) -> np.ndarray:
    """Step 3: the members' (rows, k) probabilities, columns put in the matched order,
    averaged per row (float64)."""
    probabilities = [np.asarray(p, dtype=np.float64) for p in probabilities]
    if any(p.shape != probabilities[0].shape for p in probabilities):
        raise ValueError("every member must give probabilities of the same shape")
    mean = np.zeros_like(probabilities[0])
    for p, order in zip(probabilities, orders, strict=True):
        matched = np.empty_like(p)
        matched[:, order] = p
        mean += matched / len(probabilities)
    return mean


def vote(labelings: Sequence[np.ndarray], orders: Sequence[np.ndarray], k: int,
         prefer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Members that give one cluster per row, matched by ``orders``, vote: every row
    takes the cluster most members give it; where clusters tie, ``prefer``'s when it is
    among them (else the lowest id).

    Returns:
        The combined cluster per row and the share of members that gave it.
    """
    matched = [order[np.asarray(labels, dtype=np.int64)] for labels, order in zip(labelings, orders, strict=True)]
    rows = np.arange(len(matched[0]))
    votes = np.zeros((len(rows), k), dtype=np.int64)
    for labels in matched:
        votes[rows, labels] += 1
    top = votes.max(axis=1)
    combined = np.where(votes[rows, prefer] == top, prefer, votes.argmax(axis=1))
    return combined, top / len(matched)


def agreement(labelings: Sequence[np.ndarray], orders: Sequence[np.ndarray], combined: np.ndarray) -> list[float]:
    """Per member, the share of rows where its matched cluster is the combined one."""
    return [float(np.mean(order[np.asarray(labels)] == combined)) for labels, order in zip(labelings, orders,
                                                                                           strict=True)]


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
    labelings = [np.asarray(p).argmax(axis=1) for p in probabilities]
    _, found = consensus_orders(labelings, np.asarray(probabilities[0]).shape[1], seed, n_init)
    if orders is not None:
        orders.extend(found)
    mean = average_matched(probabilities, found)
    return mean, agreement(labelings, found, mean.argmax(axis=1))


def combine_labelings(labelings: Sequence[np.ndarray], k: int, seed: int = 0, n_init: int = 10,
                      orders: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """The module docstring's steps for members that give one cluster per row: a vote
    (:func:`vote`), ties going to the reference partition's cluster.

    Args:
        labelings: Each member's cluster per row (0 .. k-1), rows in one order.
        k: Number of clusters.
        seed, n_init: For the reference partition's k-means.
        orders: When given, each member's matching is appended to it
            (:func:`combine_probabilities`).

    Returns:
        The combined cluster per row, the share of members that gave each row that
        cluster, and per member its agreement.
    """
    labelings = [np.asarray(labels, dtype=np.int64) for labels in labelings]
    reference, found = consensus_orders(labelings, k, seed, n_init)
    if orders is not None:
        orders.extend(found)
    combined, share = vote(labelings, found, k, prefer=reference)
    return combined, share, agreement(labelings, found, combined)


# --- the restarts' assignments folders ---------------------------------------------------


def read_aligned(sources: list[Path], column: str, base: int = 0) -> tuple[pa.Table, list[np.ndarray]]:
    """``sources[base]``'s assignments table and every source's ``column`` in that
    table's row order, from assignments of the same rows (matched by ``id``)."""
    first = pq.read_table(sources[base])
    ids = pd.Index(first.column("id").to_numpy(zero_copy_only=False))
    if not ids.is_unique:
        raise ValueError(f"{sources[base]}: row ids are not unique")
    values = []
    for i, source in enumerate(sources):
        table = first if i == base else pq.read_table(source, columns=["id", column])
        position = pd.Index(table.column("id").to_numpy(zero_copy_only=False)).get_indexer(ids)
        if table.num_rows != len(ids) or (position < 0).any():
            raise ValueError(f"{source} does not assign the same rows as {sources[base]}")
        column_values = table.column(column).to_numpy(zero_copy_only=False)
        values.append((np.stack(column_values) if column_values.dtype == object else column_values)[position])
    return first, values


def write_combined(table: pa.Table, sources: list[Path], base: int, destination: str | Path,
                   combine: dict[str, Any]) -> None:
    """Write a combined assignments table, its metadata ``sources[base]``'s plus
    ``consensus`` (``combine``: each restart's agreement and matching; the sources),
    staged and renamed into place as :func:`deimos_ray.assignments.write_assignments`
    writes."""
    metadata = read_metadata(sources[base])
    metadata["consensus"] = {**combine, "sources": [str(s) for s in sources]}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata, default=str).encode()})

    def write(staging: Path) -> None:
        staging.mkdir(parents=True)
        for part, start in enumerate(range(0, max(table.num_rows, 1), ROWS_PER_FILE)):
            pq.write_table(table.slice(start, ROWS_PER_FILE), staging / f"part-{part:05d}.parquet")

    write_staged_dir(destination, write)


def vote_assignments(sources: list[Path], destination: str | Path, k: int, kept: int, seed: int = 0,
                     orders: list[np.ndarray] | None = None) -> list[float]:
    """Combine restarts that give one cluster per row by a vote, as files.

    The rows, their order and every other column are ``sources[kept]``'s (the restart
    whose model is the run's); ``cluster`` becomes the vote and ``confidence`` (replaced,
    or added) the share of restarts that gave the row that cluster. Ties go to the
    reference partition in a training (``orders`` None: the consensus is found here),
    and to the kept restart's cluster for new images (``orders``: the training's saved
    matching; new rows have no reference partition).

    Returns:
        Each restart's agreement with the combined clusters (share of rows).
    """
    table, labelings = read_aligned(sources, "cluster", base=kept)
    if orders is None:
        prefer, orders = consensus_orders(labelings, k, seed)
    else:
        prefer = np.asarray(orders[kept])[labelings[kept]]
    combined, share = vote(labelings, orders, k, prefer)
    shares = agreement(labelings, orders, combined)
    table = table.set_column(table.schema.get_field_index("cluster"), "cluster", pa.array(combined, pa.int32()))
    confidence = pa.array(share, pa.float32())
    if "confidence" in table.column_names:
        table = table.set_column(table.schema.get_field_index("confidence"), "confidence", confidence)
    else:
        table = table.append_column("confidence", confidence)
    write_combined(table, sources, kept, destination,
                   {"kept": kept, "agreement": shares, "orders": [np.asarray(o).tolist() for o in orders]})
    return shares
