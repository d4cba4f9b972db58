"""Helpers every training loop shares: reading a shard into memory, log lines, the
thread count a loop trains with, batches of equal steps, the report clock, and the
progress score of early stopping."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import ray
import torch

from deimos_ray.config import ScalingConfig
from deimos_ray.train.common import (
    PROGRESS_SCORE,
    Batches,
    CheckpointClock,
    ProgressProbe,
    format_metrics,
    load_columns,
)
from deimos_ray.train.driver import fit
from deimos_ray.train.rows import InMemoryRows

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_load_columns_reads_a_ray_dataset_into_writable_row_aligned_tensors(ray_session):
    x = np.arange(5 * 4, dtype=np.float32).reshape(5, 1, 2, 2)
    rows = [{"x": row, "known": i - 1} for i, row in enumerate(x)]
    ds = ray_session.data.from_items(rows)
    with warnings.catch_warnings():
        # Ray hands out read-only arrays; reading them must not warn (and must copy).
        warnings.simplefilter("error", UserWarning)
        out = load_columns(ds, (1, 2, 2), ("known",))
    order = out["known"].argsort()
    np.testing.assert_array_equal(out["x"][order].numpy(), x)
    np.testing.assert_array_equal(out["known"][order].numpy(), np.arange(5) - 1)
    out["x"][0, 0, 0, 0] = -1.0  # writable, and not a view of Ray's memory


def test_format_metrics_rounds_floats_and_marks_unmeasured_values():
    line = format_metrics({"epoch": 3, "loss": 0.0123456, "delta_label": float("nan"), "phase": "cluster"}, 3)
    assert line == "epoch 3 loss 0.0123 delta_label n/a phase cluster"


def report_threads(config):
    return {"threads": torch.get_num_threads()}


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "torch_threads", "expected"), [(0, None, 1), (1, None, 1), (0, 2, 2), (1, 2, 2)])
def test_a_loop_trains_with_the_same_thread_count_in_the_driver_and_a_worker(
    ray_session, tmp_path, workers, torch_threads, expected
):
    # The count decides the order of floating-point sums, and so, for DAC, the model a
    # seed trains: without pinning, the driver gets every core and a worker one.
    before = torch.get_num_threads()
    scaling = ScalingConfig(num_workers=workers, cpus_per_worker=1, torch_threads=torch_threads)
    result = fit(report_threads, {}, ray_session.data.range(4), scaling, tmp_path, name=f"t{workers}")
    assert scaling.threads == expected
    assert result.return_value["threads"] == expected
    assert torch.get_num_threads() == before  # the driver gets its own count back


def test_torch_threads_must_be_positive():
    with pytest.raises(ValueError, match="torch_threads"):
        ScalingConfig(torch_threads=0)


def test_batches_take_the_same_steps_on_every_worker_and_wrap_a_short_shard():
    # One process: the global row count sets the steps; a shard shorter than the steps
    # need wraps around, so every index stays in range and every row is used.
    batches = Batches(n_local=10, n_global=10, batch_size=4, seed=0)
    epoch = list(batches.epoch(0))
    assert batches.steps == 3 and [len(b) for b in epoch] == [4, 4, 4]
    seen = torch.cat(epoch)
    assert seen.max() < 10 and set(seen.tolist()) == set(range(10))
    assert not torch.equal(torch.cat(list(batches.epoch(1))), seen)  # a new order each epoch
    assert torch.equal(torch.cat(list(Batches(10, 10, 4, seed=0).epoch(0))), seen)  # seeded


def test_the_checkpoint_clock_reports_at_the_interval_and_at_the_end():
    clock = CheckpointClock(interval_s=3600)
    assert not clock.due()
    assert clock.due(final=True)
    assert CheckpointClock(interval_s=0).due()


def test_the_progress_probe_scores_a_fixed_sample_separated_high_and_one_cluster_worst():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.concatenate([rng.normal(0, 0.1, (40, 1, 2, 2)), rng.normal(5, 0.1, (40, 1, 2, 2))])
                         .astype(np.float32))
    rows = InMemoryRows({"x": x})
    probe = ProgressProbe(rows, rows=30, seed=3)
    assert len(probe.x) == 30 and torch.equal(probe.x, x[probe.index])
    assert torch.equal(ProgressProbe(rows, rows=30, seed=3).index, probe.index)  # the same rows every epoch and trial
    truth = (probe.x.flatten(1).mean(dim=1) > 2.5).long()
    assert probe.score(lambda p: truth)[PROGRESS_SCORE] > 0.9
    mixed = torch.arange(30) % 2
    assert probe.score(lambda p: mixed)[PROGRESS_SCORE] < 0.1
    assert probe.score(lambda p: torch.zeros(30))[PROGRESS_SCORE] == -1.0
    off = ProgressProbe(rows, rows=0, seed=3)
    assert not off.on and off.score(lambda p: truth) == {}
