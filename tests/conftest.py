"""Shared fixtures: one Ray instance for each test worker's session (each start costs 5-12 s)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

# `make test` runs two pytest-xdist workers. Each gets a new temporary folder of its own,
# which its subprocesses and Ray's session folders (Ray follows TMPDIR on Linux) inherit:
# the tests that compare the deimos_ray_* paths in the temporary folder before and after a
# run then see only their own worker's. It goes when the worker's tests pass and stays,
# with Ray's logs, when one fails.
_OWN_TEMP = None
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    _OWN_TEMP = tempfile.mkdtemp(prefix=f"drt-{worker}-")  # short: Ray's socket paths have a length limit
    os.environ["TMPDIR"] = _OWN_TEMP
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def pytest_sessionfinish(session, exitstatus):
    if _OWN_TEMP and exitstatus == 0:
        shutil.rmtree(_OWN_TEMP, ignore_errors=True)

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
