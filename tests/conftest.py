"""Shared fixtures: one Ray instance for the whole test session (each start costs 5-12 s)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 4 logical CPUs: Train workers and Ray Data tasks both fit."""
    import ray

    from deimos_ray.runtime import configure_data_context

    ray.init(address="local", num_cpus=4, object_store_memory=1 << 30,
             dashboard_host="127.0.0.1", log_to_driver=True)
    configure_data_context(quiet=True)
    yield ray
    ray.shutdown()
