"""Two jobs started at once on one machine, each with its own --out and its own private
Ray, beside this session's Ray: both finish with their own correct outputs, and no Ray
traceback reaches their logs (Train's cleanup actor once failed there with "Found
multiple active Ray instances")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq

from tests.helpers import ROOT


def test_two_jobs_at_once_each_finish_with_their_own_outputs(ray_session, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each starts its own Ray
    jobs = {}
    for name, limit in (("a", 120), ("b", 150)):
        argv = [sys.executable, str(ROOT / "jobs" / "train_dec.py"), "--smoke-test", "--limit", str(limit),
                "--k", "3", "--num-workers", "1", "--out", str(tmp_path / name)]
        jobs[name] = (limit, subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.STDOUT, text=True))
    for name, (limit, job) in jobs.items():
        log, _ = job.communicate(timeout=600)
        assert job.returncode == 0, log[-3000:]
        assert "Traceback" not in log and "multiple active Ray" not in log, log[-3000:]
        assert pq.read_table(tmp_path / name / "assignments").num_rows == limit
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["accounting"]["assigned"] == limit
