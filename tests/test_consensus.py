"""The restart consensus: reference partition, cluster matching, averaged probabilities,
the vote of hard clusterings, and the combined assignments tables (DAC and DESOM)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import adjusted_rand_score

from deimos_ray.assign import METADATA_KEY, combine_dac_assignments, combine_desom_assignments
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


def _dac_table(ids, probabilities, extra=None):
    features = probabilities / np.linalg.norm(probabilities, axis=1, keepdims=True)
    k = probabilities.shape[1]
    flat = pa.array(features.reshape(-1).astype(np.float32), pa.float32())
    columns = {
        "id": pa.array(ids), "label": pa.array(np.zeros(len(ids), np.int64)),
        "cluster": pa.array(probabilities.argmax(axis=1).astype(np.int32)),
        "confidence": pa.array(probabilities.max(axis=1).astype(np.float32)),
        "topk_clusters": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(len(ids) * 2, np.int32)), 2),
        "topk_probs": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(len(ids) * 2, np.float32)), 2),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, k),
        **(extra or {}),
    }
    return pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps({"job": "t"}).encode()})


def test_combine_dac_assignments_writes_the_averaged_probabilities_in_the_first_order(tmp_path):
    rng = np.random.default_rng(2)
    ids = np.array([f"img-{i:03d}" for i in range(40)])
    p = rng.dirichlet(np.full(3, 0.5), size=40)
    q = rng.dirichlet(np.full(3, 0.5), size=40)
    shuffled = rng.permutation(40)
    sources = []
    for name, table in [("a", _dac_table(ids, p, {"class_name": pa.array(ids)})),
                        ("b", _dac_table(ids[shuffled], q[shuffled]))]:
        (tmp_path / name).mkdir()
        pq.write_table(table, tmp_path / name / "part.parquet")
        sources.append(tmp_path / name)

    agreement = combine_dac_assignments(sources, tmp_path / "out", seed=0)
    out = pq.read_table(tmp_path / "out")
    mean, expected_agreement = combine_probabilities([p, q], seed=0)
    assert agreement == expected_agreement
    assert out.column("id").to_pylist() == ids.tolist()
    assert out.column("class_name").to_pylist() == ids.tolist()  # other columns travel unchanged
    assert out.column("cluster").to_pylist() == mean.argmax(axis=1).tolist()
    np.testing.assert_allclose(out.column("confidence").to_numpy(), mean.max(axis=1), rtol=1e-6)
    topk = np.stack(out.column("topk_clusters").to_numpy(zero_copy_only=False))
    assert topk.shape == (40, 3) and (topk[:, 0] == mean.argmax(axis=1)).all()
    embedding = np.stack(out.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-6)
    metadata = json.loads(pq.read_schema(next((tmp_path / "out").glob("*.parquet"))).metadata[METADATA_KEY])
    assert metadata["job"] == "t" and metadata["restart_combine"]["agreement"] == agreement
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())  # no staging left


def test_combine_dac_assignments_refuses_different_rows(tmp_path):
    p = np.full((4, 2), 0.5)
    for name, ids in [("a", ["1", "2", "3", "4"]), ("b", ["1", "2", "3", "5"])]:
        (tmp_path / name).mkdir()
        pq.write_table(_dac_table(np.array(ids), p), tmp_path / name / "part.parquet")
    with pytest.raises(ValueError, match="same rows"):
        combine_dac_assignments([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


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


def _desom_table(ids, clusters, som_row):
    n = len(ids)
    return pa.table({
        "id": pa.array(ids), "label": pa.array(np.zeros(n, np.int64)),
        "cluster": pa.array(np.asarray(clusters, np.int32)),
        "som_row": pa.array(np.asarray(som_row, np.int32)),
        "som_col": pa.array(np.zeros(n, np.int32)),
        "bmu_distance": pa.array(np.arange(n, dtype=np.float32)),
    }).replace_schema_metadata({METADATA_KEY: json.dumps({"job": "t"}).encode()})


def test_combine_desom_assignments_keeps_the_kept_map_and_votes_the_clusters(tmp_path):
    ids = np.array([f"img-{i:02d}" for i in range(12)])
    truth = np.repeat(np.arange(3), 4)
    members = [truth.copy(), np.array([2, 0, 1])[truth], np.array([1, 2, 0])[truth]]
    members[0][0] = 1
    shuffled = np.random.default_rng(0).permutation(12)
    sources = []
    for m, clusters in enumerate(members):
        order = shuffled if m == 1 else np.arange(12)  # the kept source's row order is kept
        (tmp_path / str(m)).mkdir()
        pq.write_table(_desom_table(ids[order], clusters[order], 10 * m + np.arange(12)[order]),
                       tmp_path / str(m) / "part.parquet")
        sources.append(tmp_path / str(m))

    agreement = combine_desom_assignments(sources, tmp_path / "out", k=3, kept=1, seed=0)
    out = pq.read_table(tmp_path / "out")
    assert out.column("id").to_pylist() == ids[shuffled].tolist()
    assert out.column("som_row").to_pylist() == (10 + shuffled).tolist()  # restart 1's map
    combined = np.asarray(out.column("cluster").to_pylist())
    assert adjusted_rand_score(truth[shuffled], combined) == 1.0  # row 0's mistake outvoted
    confidence = out.column("confidence").to_numpy()
    assert confidence[shuffled.tolist().index(0)] == pytest.approx(2 / 3)
    assert (np.delete(confidence, shuffled.tolist().index(0)) == 1).all()
    assert agreement == [11 / 12, 1.0, 1.0]
    metadata = json.loads(pq.read_schema(next((tmp_path / "out").glob("*.parquet"))).metadata[METADATA_KEY])
    assert metadata["restart_combine"]["kept"] == 1 and metadata["restart_combine"]["agreement"] == agreement
