"""Around one run: a short day of jobs and an assignment on one private Ray leaves nothing
behind (``bench/soak.py``, whose full day is in ``bench/RESULTS.md``), and a whole node
lost during training ends the job the right way for what remains
(``bench/node_loss.py``, whose other case is in ``bench/RESULTS.md``)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.cluster import BIN
from tests.helpers import ROOT, load_script


@pytest.mark.slow
def test_a_short_day_on_one_ray_leaves_no_process_no_temporary_path_and_nothing_in_the_store():
    done = subprocess.run([sys.executable, "bench/soak.py", "--jobs", "2", "--sweeps", "0", "--assignments", "1",
                           "--every", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert re.search(r"^left: 0 Ray processes, 0 temporary paths$", done.stdout, re.M), done.stdout
    growth = re.search(r"object store ([+-]\d+) MiB", done.stdout)
    assert growth and int(growth.group(1)) <= 1, done.stdout  # nothing pinned from one run to the next


@pytest.mark.slow
def test_a_lost_node_ends_the_job_by_what_is_left_with_whole_files():
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray command is not installed beside this Python")
    node_loss = load_script("bench/node_loss.py")
    # Two worker nodes of 2 and 1 CPUs; the node running the Ray Train worker is killed.
    # The wait is generous: under load the loss takes longer to be noticed (bench/node_loss.py
    # prints the seconds); what is checked is that the job ends by itself, not when.
    row = node_loss.one_case("short", [2, 1], timeout=240)
    assert "CPUs" in row["lost"], row
    assert row["whole_files"], row
    if row["lost"].endswith("(2 CPUs)"):  # 1 CPU left: too few for the worker and Ray Data
        assert row["status"] == "FAILED", row
        assert "training stopped: the cluster has 1 CPUs left" in row["last_line"], row
        assert "rerun with the same --out" in row["last_line"], row
    else:  # 2 CPUs left: room for both, so the job goes on from its checkpoint (--max-failures 2)
        assert row["status"] == "SUCCEEDED" and row["resumed_from"], row
