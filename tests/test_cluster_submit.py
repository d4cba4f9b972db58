"""A real cluster: two Ray nodes started with ``ray start`` (token authentication on, ports
of their own), jobs sent with ``ray job submit --working-dir .`` as the README shows. A job
the cluster cannot run beside Ray Data is refused at once instead of hanging; one that
fits writes its Parquet. Only the processes the test started are stopped."""

from __future__ import annotations

import shutil
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from tests.cluster import BIN, local_cluster
from tests.helpers import ROOT


@pytest.fixture
def two_node_cluster():
    """A head and a worker node of 1 CPU each, under a temporary folder of their own;
    yields the environment that submits to it."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray command is not installed beside this Python")
    with local_cluster(1, [1]) as (env, temp, _):
        yield env, temp


def submit(env: dict[str, str], *job: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ray", "job", "submit", "--working-dir", ".", "--", "python", *job], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)


@pytest.mark.slow
def test_jobs_submitted_to_a_two_node_cluster_refuse_what_cannot_fit_and_run_what_can(two_node_cluster):
    env, temp = two_node_cluster
    # Two workers of 1 CPU on a 2-CPU cluster: nothing would be left for Ray Data, and the
    # job used to hang for good. It is refused before training, naming the fix.
    t0 = time.monotonic()
    refused = submit(env, "jobs/train_dec.py", "--smoke-test", "--num-workers", "2", "--out", str(temp / "dec"))
    assert refused.returncode != 0
    assert "the cluster has 2 CPUs and 2 Ray Train worker(s) x 1 CPU need 3" in refused.stdout + refused.stderr
    assert "--num-workers" in refused.stdout and time.monotonic() - t0 < 120
    assert not (temp / "dec").exists()

    # One worker fits beside Ray Data: the README's command, verbatim but for the size.
    out = temp / "dac"
    done = submit(env, "jobs/train_dac.py", "--smoke-test", "--limit", "100", "--out", str(out))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "accounting: 100 inputs = 100 assigned + 0 rejected" in done.stdout
    assert pq.read_table(out / "assignments").num_rows == 100
    assert pq.read_table(out / "rejected.parquet").num_rows == 0
