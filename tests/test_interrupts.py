"""Ctrl-C on a job's driver: Ray's work stops, one line says how to resume, the exit
status is 130, every file in --out is whole, and the rerun resumes from the last
checkpoint. (SIGTERM, status 143, is tested on a sweep: tests/test_sweep.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from deimos_ray.cli import INTERRUPTED
from deimos_ray.runtime import handle_sigterm, stop_if_signalled, stop_signals, stopping_signal
from tests.helpers import ROOT, load_job, registered_checkpoint

ARGV = ["--smoke-test", "--limit", "100", "--k", "3", "--set", "model.pretrain_epochs=10",
        "--set", "checkpoint_interval_s=0"]


def test_ctrl_c_stops_a_job_with_one_line_and_the_rerun_resumes(ray_session, tmp_path):
    out = tmp_path / "run"
    argv = [*ARGV, "--out", str(out)]
    # The job joins this session's Ray (a private one would cost 10 s to start).
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    driver = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "train_dec.py"), *argv], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        # A registered checkpoint, not a written folder: a folder Ray has not yet recorded
        # is not resumed from (the interrupt may come between the two).
        while registered_checkpoint(out / "ray" / "train") is None and driver.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert driver.poll() is None, "the job ended before its first registered checkpoint"
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 130, err[-3000:]
    assert err.splitlines()[-1] == INTERRUPTED and "Traceback" not in err
    assert not (out / "metrics.json").exists() and not list(out.glob(".*partial*"))
    assert json.loads((out / "identity.json").read_text())["seed"] == 0

    job = load_job("train_dec")
    assert job.main(job.get_args_parser().parse_args(argv)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training"]["resumed_from"] is not None  # the phase and epoch it went on from
    assert pq.read_table(out / "assignments").num_rows == 100


def test_a_ctrl_c_that_a_library_swallows_still_stops_the_job_at_the_next_stage():
    swallowed = []

    def library_call() -> None:  # catches everything, as some cleanup code in libraries does
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs here, in the main thread, and raises
        except BaseException as exc:
            swallowed.append(type(exc))

    before = signal.getsignal(signal.SIGINT)
    try:
        with stop_signals():
            stop_if_signalled()  # nothing has come: nothing happens
            library_call()
            assert swallowed == [KeyboardInterrupt]
            with pytest.raises(KeyboardInterrupt):
                stop_if_signalled()
            assert stopping_signal() == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        handle_sigterm()  # forgets the signal, for the tests after this one
