"""Helpers every training loop shares: reading a shard into memory, log lines, the
thread count a loop trains with, batch-norm statistics recomputed on clean inputs."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import ray
import torch

from deimos_ray.config import ScalingConfig
from deimos_ray.train.common import format_metrics, load_columns, recompute_batch_norm
from deimos_ray.train.driver import fit

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


def test_batch_norm_statistics_are_recomputed_as_averages_over_the_given_batches():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU(),
                              torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    for _ in range(5):  # running statistics of other inputs, as after training
        net.train()(3 * torch.randn(32, 4) + 1)
    weights = [p.clone() for p in net.parameters()]
    x = torch.randn(60, 4)
    batches = list(x.split(20))
    assert recompute_batch_norm(net, batches) == 2

    first = net[0](x).detach()
    bn = net[1]
    torch.testing.assert_close(bn.running_mean, first.mean(dim=0))  # equal batches: the mean of all rows
    per_batch_var = torch.stack([b.var(dim=0, unbiased=True) for b in first.split(20)])
    torch.testing.assert_close(bn.running_var, per_batch_var.mean(dim=0))
    # The second layer saw its inputs normalised by each batch's own statistics.
    hidden = [net[3](torch.relu(torch.nn.functional.batch_norm(net[0](b), None, None, bn.weight, bn.bias,
                                                                 training=True))).detach() for b in batches]
    torch.testing.assert_close(net[4].running_mean, torch.stack([h.mean(dim=0) for h in hidden]).mean(dim=0))
    assert bn.momentum == 0.1 and net[4].momentum == 0.1  # restored
    assert not net.training
    assert all(torch.equal(a, b) for a, b in zip(weights, net.parameters(), strict=True))
