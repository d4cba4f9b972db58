"""Helpers every training loop shares: reading a shard into memory, log lines."""

from __future__ import annotations

import warnings

import numpy as np

from deimos_ray.train.common import format_metrics, load_columns


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
