"""A worker's rows in memory or streamed: the same batches, passes and samples; a
streamed shard's memory bounded by its window; and each training loop giving the same
model from either, with one worker and with two."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import ray
import torch

from deimos_ray.config import ScalingConfig
from deimos_ray.config_io import to_dict
from deimos_ray.models.dac import DACConfig
from deimos_ray.models.dec import DECConfig
from deimos_ray.models.desom import DESOMConfig
from deimos_ray.train import dac_loop, dec_loop, desom_loop
from deimos_ray.train.checkpoint import load_state
from deimos_ray.train.common import Batches
from deimos_ray.train.driver import fit
from deimos_ray.train.rows import InMemoryRows, RowsPlan, StreamingRows, plan_rows

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SHAPE = (1, 4, 4)


def rows_dataset(n: int, blocks: int = 5) -> ray.data.Dataset:
    """Rows whose ``x`` holds their position (every value of row i is i) and a ``known``."""
    x = np.repeat(np.arange(n, dtype=np.float32), 16).reshape(n, *SHAPE)
    return ray.data.from_numpy(x).rename_columns({"data": "x"}).map_batches(
        lambda b: {**b, "known": (b["x"][:, 0, 0, 0] % 3).astype(np.int64)}, batch_format="numpy"
    ).repartition(blocks).materialize()


def positions(columns) -> list[int]:
    return columns["x"][:, 0, 0, 0].long().tolist()


def test_a_window_that_holds_the_shard_draws_the_in_memory_batches(ray_session):
    ds = rows_dataset(10)
    memory = InMemoryRows.read(ds, SHAPE, ("known",))
    stream = StreamingRows(ds, SHAPE, ("known",), window_rows=10)
    batches = Batches(n_local=10, n_global=10, batch_size=4, seed=7)  # 3 steps: 12 rows, 2 wrap
    assert memory.n == stream.n == 10
    for epoch in (0, 1):
        a = [positions(c) for _, c in memory.epoch(batches, epoch)]
        b = [positions(c) for _, c in stream.epoch(batches, epoch)]
        assert a == b and len(a) == 3 and all(len(p) == 4 for p in a)
    assert [positions(c) for c in stream.scan(3)] == [positions(c) for c in memory.scan(3)]
    index = torch.tensor([7, 2, 9, 2])
    assert positions(stream.take(index)) == positions(memory.take(index)) == [7, 2, 9, 2]
    assert torch.equal(stream.take(index)["known"], torch.tensor([1, 2, 0, 2]))
    assert positions(stream.take(torch.zeros(0, dtype=torch.int64))) == []
    first = lambda x: x[:, 0, 0, :2]  # noqa: E731  (an embedding of each row)
    assert torch.equal(stream.map_rows(index, first), memory.map_rows(index, first))
    assert stream.map_rows(index, first)[:, 0].tolist() == [7, 2, 9, 2]
    assert len(stream.map_rows(torch.zeros(0, dtype=torch.int64), first)) == 0


def test_small_windows_visit_every_row_once_an_epoch(ray_session):
    ds = rows_dataset(103)
    stream = StreamingRows(ds, SHAPE, window_rows=10)
    batches = Batches(n_local=103, n_global=103, batch_size=8, seed=0)  # 13 steps: 104 rows
    for epoch in (0, 1):
        seen = [p for _, c in stream.epoch(batches, epoch) for p in positions(c)]
        assert len(seen) == 104 and set(seen) == set(range(103))
        assert seen[:10] != sorted(seen[:10])  # permuted within the window


def test_a_streamed_shard_holds_a_window_whatever_its_length(ray_session):
    peaks = {}
    for n in (300, 3000):
        stream = StreamingRows(rows_dataset(n, blocks=20), SHAPE, window_rows=50)
        batches = Batches(n_local=n, n_global=n, batch_size=16, seed=0)
        for _ in stream.epoch(batches, 0):
            pass
        sum(len(c["x"]) for c in stream.scan())
        stream.take(torch.arange(0, n, n // 10))
        # A sample of half the rows, as DEC's k-means start takes up to 50,000: only its
        # embeddings are kept, never the sample's inputs.
        assert len(stream.map_rows(torch.arange(0, n, 2), lambda x: x[:, 0, 0, :1])) == n // 2
        peaks[n] = stream.peak_rows
    assert peaks[300] == peaks[3000] <= 1024 + 10  # the scan's batch, the largest piece held


def test_the_plan_streams_a_shard_over_its_memory_limit():
    assert not plan_rows(100 * 2**20, 1000, 2, in_memory_mb=64, window_mb=8).stream
    plan = plan_rows(100 * 2**20, 1000, 1, in_memory_mb=64, window_mb=8)
    assert plan == RowsPlan(stream=True, window_rows=80)  # 0.1 MiB a row
    assert plan_rows(1, 1, 1, in_memory_mb=0, window_mb=8).stream


def blobs(n=96, dims=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, size=(3, dims))
    labels = np.arange(n) % 3
    return (centres[labels] + 0.05 * rng.normal(size=(n, dims))).astype(np.float32), labels


def as_dataset(x, shape, blocks=4):
    rows = [{"x": row.reshape(shape), "known": -1} for row in x]
    return ray.data.from_items(rows).repartition(blocks).materialize()


LOOPS = {
    "dec": (dec_loop.train_loop_per_worker, SHAPE,
            DECConfig(n_clusters=3, hidden_dims=(16, 16), latent_dim=3, pretrain_epochs=2, epochs=3,
                      batch_size=16, update_interval=2, tol=0.0, kmeans_n_init=2)),
    "dac": (dac_loop.train_loop_per_worker, (1, 8, 8),
            DACConfig(n_clusters=3, conv_widths=(4, 8), hidden_dim=8, batch_size=16, augment=False,
                      schedule="deimos", lambda_step=0.1, epochs=3)),
    "desom": (desom_loop.train_loop_per_worker, SHAPE,
              DESOMConfig(map_size=(2, 2), n_clusters=3, hidden_dims=(16,), latent_dim=3, iterations=12,
                          batch_size=16, kmeans_n_init=2)),
}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2], ids=["driver", "two-workers"])
@pytest.mark.parametrize("name", sorted(LOOPS))
def test_streaming_and_in_memory_training_give_the_same_model(ray_session, tmp_path, name, workers):
    loop, shape, cfg = LOOPS[name]
    x, _ = blobs(dims=int(np.prod(shape)))
    ds = as_dataset(x, shape)
    states = {}
    for mode, in_memory_mb in (("memory", 2048.0), ("stream", 0.0)):
        scaling = ScalingConfig(num_workers=workers, in_memory_mb=in_memory_mb)
        # In the driver the progress probe (a sample taken on every rank) and a report
        # every epoch; on two workers reports only at the end, each costs up to 2 s there.
        config = {"model": to_dict(cfg), "seed": 0, "input_shape": list(shape),
                  "checkpoint_interval_s": 0 if workers == 0 else 3600,
                  "progress_rows": 20 if workers == 0 else 0}
        result = fit(loop, config, ds, scaling, tmp_path, name=mode)
        with result.checkpoint.as_directory() as d:
            states[mode] = load_state(d)
    memory, stream = states["memory"], states["stream"]
    assert memory["model"].keys() == stream["model"].keys()
    for key, value in memory["model"].items():
        torch.testing.assert_close(stream["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    if name == "desom":
        assert stream["node_clusters"] == memory["node_clusters"]


@pytest.mark.slow
def test_dec_updates_its_target_in_the_middle_of_a_streamed_epoch(ray_session, tmp_path):
    # Windows of about 16 rows and a target update every 2 of an epoch's 60 steps: each
    # update is a pass over all rows while the epoch's pass is open, with blocks still
    # to come (a second split; a worker's Ray Data shard has one pass open at a time).
    loop, shape, cfg = LOOPS["dec"]
    x, labels = blobs(n=960, dims=int(np.prod(shape)))
    scaling = ScalingConfig(num_workers=1, in_memory_mb=0, stream_window_mb=0.001)
    config = {"model": to_dict(cfg), "seed": 0, "input_shape": list(shape), "checkpoint_interval_s": 3600}
    result = fit(loop, config, as_dataset(x, shape, blocks=96), scaling, tmp_path)
    summary = result.return_value
    assert summary["epochs"] == cfg.epochs and summary["steps"] == cfg.epochs * 60
    assert summary["delta_label"] is not None  # labels compared across updates, over all rows
