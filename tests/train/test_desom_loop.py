"""DESOM through Ray Train: resuming an interrupted schedule at its saved iteration."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from deimos_ray.config import ScalingConfig
from deimos_ray.config_io import to_dict
from deimos_ray.models.desom import DESOMConfig
from deimos_ray.train import desom_loop
from deimos_ray.train.common import PROGRESS_SCORE
from deimos_ray.train.driver import fit
from tests import helpers
from tests.helpers import interrupted_after_two_reports

ray.cloudpickle.register_pickle_by_value(helpers)


@pytest.mark.slow
def test_rerun_resumes_an_interrupted_run_at_the_saved_iteration(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    ds = ray.data.from_items([{"x": row} for row in rng.random((64, 1, 4, 4)).astype(np.float32)])
    cfg = DESOMConfig(map_size=(2, 2), hidden_dims=(8,), latent_dim=2, iterations=12, batch_size=16)
    config = {"model": to_dict(cfg), "seed": 0, "input_shape": [1, 4, 4], "checkpoint_interval_s": 0,
              "marker": str(tmp_path / "interrupted"), "loop_module": desom_loop.__name__}
    # In the driver: its checkpoints (train/checkpoint.py) resume as Ray Train's workers' do.
    scaling = ScalingConfig(num_workers=0)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(interrupted_after_two_reports, config, ds, scaling, tmp_path, name="run")
    second = fit(desom_loop.train_loop_per_worker, config, ds, scaling, tmp_path, name="run")
    # 64 rows in batches of 16: 4 iterations an epoch, so two reports are 8 iterations.
    assert second.return_value["resumed_at_iteration"] == 8
    assert second.return_value["iterations"] == 12
    assert second.return_value["temperature"] == pytest.approx(0.1)  # reached the end of the schedule


def test_with_the_progress_probe_on_the_reports_carry_the_silhouette_of_the_map_nodes(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    ds = ray.data.from_items([{"x": row} for row in rng.random((48, 1, 4, 4)).astype(np.float32)])
    cfg = DESOMConfig(map_size=(2, 2), hidden_dims=(8,), latent_dim=2, iterations=6, batch_size=16)
    config = {"model": to_dict(cfg), "seed": 0, "input_shape": [1, 4, 4], "checkpoint_interval_s": 3600,
              "progress_rows": 30}
    result = fit(desom_loop.train_loop_per_worker, config, ds, ScalingConfig(num_workers=0), tmp_path)
    assert -1.0 <= result.metrics[PROGRESS_SCORE] <= 1.0
