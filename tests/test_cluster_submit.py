"""A real cluster: two Ray nodes started with ``ray start`` (token authentication on, ports
of their own), jobs sent with ``ray job submit --working-dir .`` as the README shows. A job
the cluster cannot run beside Ray Data is refused at once instead of hanging; one that
fits writes its Parquet. Only the processes the test started are stopped."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import ROOT

BIN = Path(sys.executable).parent  # the virtual environment's ray and python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_ports(first_worker_port: int) -> list[str]:
    """Ports of one node, all free ones, so nothing clashes with another Ray on the machine."""
    flags = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
    ports = [part for flag in flags for part in (flag, str(free_port()))]
    return [*ports, "--min-worker-port", str(first_worker_port), "--max-worker-port", str(first_worker_port + 999)]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f} s")
        time.sleep(0.5)


def processes_naming(text: str) -> list[int]:
    """PIDs whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def two_node_cluster():
    """A head and a worker node of 1 CPU each, under a temporary folder of their own;
    yields the environment that submits to it."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray command is not installed beside this Python")
    temp = Path(tempfile.mkdtemp(prefix="drc_"))  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    head_cmd = ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--ray-client-server-port",
                str(free_port()), "--num-cpus", "1", "--temp-dir", str(temp), *node_ports(21000)]
    worker_cmd = ["ray", "start", "--block", "--address", f"127.0.0.1:{gcs}", "--node-ip-address", "127.0.0.1",
                  "--num-cpus", "1", *node_ports(23000)]
    started = []
    try:
        for name, cmd in (("head", head_cmd), ("worker", worker_cmd)):
            log = temp / f"{name}.log"
            started.append(subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                            start_new_session=True))
            wait_for(lambda log=log: "Ray runtime started" in log.read_text(), 90, f"the {name} node did not start")
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
        # Right after `ray start` the job agent may not answer yet ("No available agent
        # to submit job"): wait until the job API does.
        wait_for(lambda: subprocess.run(["ray", "job", "list"], env=env, capture_output=True).returncode == 0,
                 60, "the job API did not answer")
        yield env, temp
    finally:
        # Each node's processes are in the process group of its `ray start` (a session
        # of its own), and nothing else is: the test's cluster goes, any other Ray stays.
        # Ray's graceful stop takes about 30 s here; the nodes hold nothing worth it.
        for process in started:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        wait_for(lambda: not processes_naming(str(temp)), 30, "the test cluster did not stop")
        left = processes_naming(str(temp))
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes of the test cluster still running: {left}"


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
