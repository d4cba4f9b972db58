"""A local multi-node Ray cluster started with ``ray start`` (token authentication on,
ports of its own, a temporary folder of its own), for the cluster tests and
``bench/node_loss.py``. Only the processes it started are stopped."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

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


@contextlib.contextmanager
def local_cluster(head_cpus: int, worker_cpus: list[int]) -> Iterator[tuple[dict[str, str], Path, list[subprocess.Popen]]]:
    """A head node and one worker node per entry of ``worker_cpus``; yields the
    environment that submits to it, its temporary folder and the ``ray start``
    processes (head first; killing one's process group is losing that node)."""
    temp = Path(tempfile.mkdtemp(prefix="drc_"))  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    commands = [("head", ["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                          "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                          "--ray-client-server-port", str(free_port()), "--num-cpus", str(head_cpus),
                          "--temp-dir", str(temp), *node_ports(21000)])]
    for i, cpus in enumerate(worker_cpus):
        commands.append((f"worker{i}", ["ray", "start", "--block", "--address", f"127.0.0.1:{gcs}",
                                        "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
                                        *node_ports(23000 + 2000 * i)]))
    started = []
    try:
        for name, cmd in commands:
            log = temp / f"{name}.log"
            started.append(subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                            start_new_session=True))
            wait_for(lambda log=log: "Ray runtime started" in log.read_text(), 90, f"the {name} node did not start")
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
        # Right after `ray start` the job agent may not answer yet ("No available agent
        # to submit job"): wait until the job API does.
        wait_for(lambda: subprocess.run(["ray", "job", "list"], env=env, capture_output=True).returncode == 0,
                 60, "the job API did not answer")
        yield env, temp, started
    finally:
        # Each node's processes are in the process group of its `ray start` (a session
        # of its own), and nothing else is: the test's cluster goes, any other Ray stays.
        # Ray's graceful stop takes about 30 s here; the nodes hold nothing worth it.
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        wait_for(lambda: not processes_naming(str(temp)), 30, "the test cluster did not stop")
        left = processes_naming(str(temp))
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes of the test cluster still running: {left}"
