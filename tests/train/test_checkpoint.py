"""Per-epoch checkpoints: written by rank 0, found again by a rerun, loaded weights-only."""

from __future__ import annotations

import sys

import pytest
import ray
import torch

from deimos_ray.config import ScalingConfig
from deimos_ray.train.checkpoint import STATE_FILE, latest_state, load_state, report_epoch
from deimos_ray.train.driver import export_checkpoint, fit

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def counting_loop(config):
    """Counts epochs from the latest checkpoint's count, reporting one per epoch."""
    state = latest_state()
    start = 0 if state is None else int(state["epoch"])
    for epoch in range(start, config["epochs"]):
        report_epoch({"epoch": epoch + 1}, {"epoch": epoch + 1, "weights": torch.full((2,), float(epoch))})
    return {"started_at": start}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_the_latest_checkpoint_is_exported_and_found_by_a_rerun(ray_session, tmp_path, workers):
    scaling = ScalingConfig(num_workers=workers)
    first = fit(counting_loop, {"epochs": 3}, ray_session.data.range(2), scaling, tmp_path / "ray", name="run")
    exported = export_checkpoint(first, tmp_path / "checkpoint")
    state = load_state(exported)
    assert state["epoch"] == 3 and torch.equal(state["weights"], torch.full((2,), 2.0))
    # The run lives in storage (the driver's in ray/run/driver/), and a rerun continues it.
    second = fit(counting_loop, {"epochs": 5}, ray_session.data.range(2), scaling, tmp_path / "ray", name="run")
    assert second.return_value["started_at"] == 3
    assert load_state(export_checkpoint(second, tmp_path / "checkpoint"))["epoch"] == 5


class NotATensor:
    """An object a weights-only load must refuse (unpickling it would run code)."""


def test_load_state_names_a_missing_file_and_refuses_code(tmp_path):
    with pytest.raises(FileNotFoundError, match="deimos_ray checkpoint"):
        load_state(tmp_path)

    torch.save({"object": NotATensor()}, tmp_path / STATE_FILE)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        load_state(tmp_path)  # weights_only: no arbitrary objects (no code) are loaded
