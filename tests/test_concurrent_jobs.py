"""Two jobs and a sweep started at once on one machine, each with its own --out and its
own private Ray, beside this session's Ray: all finish with their own correct outputs,
and no Ray traceback reaches their logs (Train's cleanup actor once failed there with
"Found multiple active Ray instances")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq

from tests.helpers import ROOT


def test_two_jobs_and_a_sweep_at_once_each_finish_with_their_own_outputs(ray_session, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each starts its own Ray
    common = ["--smoke-test", "--num-workers", "1"]
    runs = {
        "a": (120, ["jobs/train_dec.py", *common, "--limit", "120", "--k", "3"]),
        "b": (150, ["jobs/train_dec.py", *common, "--limit", "150", "--k", "3"]),
        "sweep": (130, ["jobs/tune_sweep.py", "--algorithm", "dec", *common, "--limit", "130", "--k", "2", "3"]),
    }
    started = {}
    for name, (limit, argv) in runs.items():
        started[name] = (limit, subprocess.Popen([sys.executable, str(ROOT / argv[0]), *argv[1:], "--out",
                                                  str(tmp_path / name)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                 stderr=subprocess.STDOUT, text=True))
    for name, (limit, run) in started.items():
        log, _ = run.communicate(timeout=900)
        assert run.returncode == 0, log[-3000:]
        assert "Traceback" not in log and "multiple active Ray" not in log, log[-3000:]
        assert pq.read_table(tmp_path / name / "assignments").num_rows == limit
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["accounting"]["assigned"] == limit
    trials = pq.read_table(tmp_path / "sweep" / "trials.parquet").to_pandas()
    assert len(trials) == 2  # k = 2 and 3, each trained beside the two jobs
