"""A whole node lost during training, on a local multi-node cluster (``ray start``, as
the cluster test): the node that runs the Ray Train worker is killed (its ``ray start``
process group: raylet, workers, object store) once the run has a registered checkpoint.

Two cases, one table row each:

- ``room left``: a head with no CPUs and two nodes of 2 CPUs; after the loss the other
  node still holds the worker and Ray Data's task. With ``--max-failures 2`` the job
  should go on from its last checkpoint and finish.
- ``no room left``: the other node has 1 CPU, too few for the worker and Ray Data.
  The job should stop, with one line, rather than wait for ever.

Each row: the node that was lost, the job's final status, seconds from the loss to the
end, whether the training resumed from a checkpoint, whether ``--out`` holds only whole
files, and the job's last log line.

    .venv/bin/python bench/node_loss.py          # both cases (about 6 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import local_cluster, processes_naming  # noqa: E402
from tests.helpers import registered_checkpoint  # noqa: E402

JOB = ["jobs/train_dec.py", "--smoke-test", "--set", "model.pretrain_epochs=40", "--set", "checkpoint_interval_s=0",
       "--max-failures", "2"]


def ray(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ray", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def train_worker_pid(env: dict[str, str]) -> int | None:
    """The pid of the live Ray Train worker, from the state API."""
    done = ray(env, "list", "actors", "--filter", "class_name=RayTrainWorker", "--filter", "state=ALIVE",
               "--format", "json")
    try:
        actors = json.loads(done.stdout)
    except ValueError:
        return None
    return int(actors[0]["pid"]) if actors else None


def node_of(pid: int | None, started: list) -> int | None:
    """Which node (index into ``started``) runs process ``pid``: workers have process
    groups of their own, their raylet is in its ``ray start``'s."""
    groups = {p.pid: i for i, p in enumerate(started)}
    try:
        process = psutil.Process(pid) if pid else None
        while process is not None and os.getpgid(process.pid) not in groups:
            process = process.parent()
    except (psutil.Error, ProcessLookupError):
        return None
    return groups[os.getpgid(process.pid)] if process is not None else None


def job_status(env: dict[str, str], job_id: str) -> str:
    done = ray(env, "job", "status", job_id)
    out = done.stdout + done.stderr
    for status in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING"):
        if status in out.upper():
            return status
    return "?"


def whole_files(out: Path) -> bool:
    """No staging leftovers (``.*partial*``) in the run folder."""
    return not [p for p in out.rglob(".*") if "partial" in p.name]


def one_case(name: str, worker_cpus: list[int], timeout: float) -> dict:
    with local_cluster(0, worker_cpus) as (env, temp, started):
        out = temp / "run"
        submitted = ray(env, "job", "submit", "--no-wait", "--working-dir", ".", "--", "python", *JOB, "--out", str(out))
        job_id = re.search(r"raysubmit_[A-Za-z0-9]+", submitted.stdout).group(0)
        try:
            return lose_a_node(name, worker_cpus, env, started, job_id, out, timeout)
        finally:
            # The job's driver runs in a session of its own: stop it, or it outlives the cluster.
            for pid in processes_naming(str(out)):
                os.kill(pid, signal.SIGKILL)


def lose_a_node(name: str, worker_cpus: list[int], env: dict[str, str], started: list, job_id: str, out: Path,
                timeout: float) -> dict:
    t0 = time.monotonic()
    while registered_checkpoint(out / "ray" / "train") is None and time.monotonic() - t0 < 300:
        time.sleep(0.5)
    pid = train_worker_pid(env)
    while pid is None and time.monotonic() - t0 < 330:  # the state API can lag a new actor
        time.sleep(1)
        pid = train_worker_pid(env)
    node = node_of(pid, started)
    if node in (None, 0):
        return {"case": name, "lost": f"the training worker (pid {pid}) is on no worker node",
                "status": job_status(env, job_id)}
    os.killpg(started[node].pid, signal.SIGKILL)
    lost_at = time.monotonic()
    status = job_status(env, job_id)
    while status in ("RUNNING", "PENDING") and time.monotonic() - lost_at < timeout:
        time.sleep(2)
        status = job_status(env, job_id)
    logs = [line for line in ray(env, "job", "logs", job_id).stdout.splitlines() if line.strip()]
    metrics = out / "metrics.json"
    resumed = json.loads(metrics.read_text())["training"]["resumed_from"] if metrics.is_file() else None
    return {"case": name, "lost": f"node {node} ({worker_cpus[node - 1]} CPUs)", "status": status,
            "seconds": round(time.monotonic() - lost_at), "resumed_from": resumed,
            "whole_files": whole_files(out), "last_line": logs[-1] if logs else ""}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--timeout", type=float, default=240, help="seconds to wait after the loss")
    args = p.parse_args()
    rows = [one_case("room left", [2, 2], args.timeout), one_case("no room left", [2, 1], args.timeout)]
    for row in rows:
        print(" | ".join(f"{k}: {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
