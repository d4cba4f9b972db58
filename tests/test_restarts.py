"""Restarts: several trainings at once from threads of the driver, the warning when the
cluster cannot hold them, a failure stopping the ones not started, and the algorithms'
combination of their assignments (for a training and, with its saved matching, for new
images)."""

from __future__ import annotations

import json
import threading
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import adjusted_rand_score

from deimos_ray.algorithms import ALGORITHMS
from deimos_ray.algorithms.dac import DACJobConfig
from deimos_ray.algorithms.desom import DESOMJobConfig
from deimos_ray.assignments import METADATA_KEY
from deimos_ray.config import RestartConfig, ScalingConfig
from deimos_ray.consensus import combine_probabilities
from deimos_ray.models.desom import DESOMConfig
from deimos_ray.train import restarts
from deimos_ray.train.restarts import _warn_if_cluster_too_small, fit_restarts

DAC, DESOM = ALGORITHMS["dac"], ALGORITHMS["desom"]


def test_concurrent_restarts_the_cluster_cannot_hold_are_announced(ray_session):
    # The test session's Ray has 4 CPUs and no GPU: 2 trainings of 1 worker fit (2 + 1 for
    # Ray Data), 3 trainings of 2 workers do not, nor do 2 one-GPU trainings.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_cluster_too_small(ScalingConfig(num_workers=1), 2)
    with pytest.warns(UserWarning, match="3 restarts at once need 7 CPU but the cluster has 4; the others wait"):
        _warn_if_cluster_too_small(ScalingConfig(num_workers=2), 3)
    with pytest.warns(UserWarning, match="2 restarts at once need 2 GPU but the cluster has 0"):
        _warn_if_cluster_too_small(ScalingConfig(num_workers=1, use_gpu=True), 2)


def test_a_failing_concurrent_restart_stops_the_ones_not_started(monkeypatch, tmp_path):
    # Only the threading is under test here, so the Ray Train run is replaced: restart 1
    # fails while restart 0 is still training; restarts 2-5 must never start, restart 0
    # must finish, and the failure must reach the caller.
    started, finished = [], []
    zero_running = threading.Event()

    def fake_fit(train_loop, loop_config, rows, scaling, storage, name, max_failures, callbacks, label):
        started.append(name)
        if name == "train":
            zero_running.set()
            time.sleep(0.5)
            finished.append(name)
            return None
        zero_running.wait()
        raise RuntimeError(f"{name} failed")

    monkeypatch.setattr(restarts, "fit", fake_fit)
    monkeypatch.setattr(restarts, "_warn_if_cluster_too_small", lambda scaling, concurrent: None)
    with pytest.raises(RuntimeError, match="train-restart1 failed"):
        cfg = DACJobConfig(restarts=RestartConfig(count=6, concurrent=2))
        fit_restarts(lambda config: None, {"seed": 0}, None, cfg, tmp_path, lambda value: 0.0, "test")
    assert sorted(started) == ["train", "train-restart1"] and finished == ["train"]


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

    agreement = DAC.combine(DACJobConfig(seed=0), sources, tmp_path / "out", kept=0)
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
    assert metadata["job"] == "t" and metadata["consensus"]["agreement"] == agreement
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())  # no staging left

    # New images are combined by the same function with the saved matching: the same rows
    # give the same table.
    orders = [np.asarray(order) for order in metadata["consensus"]["orders"]]
    DAC.combine(DACJobConfig(seed=0), sources, tmp_path / "again", kept=0, orders=orders)
    again = pq.read_table(tmp_path / "again")
    for column in ("id", "cluster", "confidence", "topk_clusters", "embedding"):
        assert again.column(column).equals(out.column(column))


def test_combine_dac_assignments_refuses_different_rows(tmp_path):
    p = np.full((4, 2), 0.5)
    for name, ids in [("a", ["1", "2", "3", "4"]), ("b", ["1", "2", "3", "5"])]:
        (tmp_path / name).mkdir()
        pq.write_table(_dac_table(np.array(ids), p), tmp_path / name / "part.parquet")
    with pytest.raises(ValueError, match="same rows"):
        DAC.combine(DACJobConfig(), [tmp_path / "a", tmp_path / "b"], tmp_path / "out", kept=0)
    assert not (tmp_path / "out").exists()


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

    cfg = DESOMJobConfig(model=DESOMConfig(n_clusters=3), seed=0)
    agreement = DESOM.combine(cfg, sources, tmp_path / "out", kept=1)
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
    assert metadata["consensus"]["kept"] == 1 and metadata["consensus"]["agreement"] == agreement

    # New images: the saved matching, ties going to the kept restart's cluster.
    orders = [np.asarray(order) for order in metadata["consensus"]["orders"]]
    DESOM.combine(cfg, sources, tmp_path / "again", kept=1, orders=orders)
    again = pq.read_table(tmp_path / "again")
    assert again.column("cluster").equals(out.column("cluster"))
    assert again.column("confidence").equals(out.column("confidence"))
