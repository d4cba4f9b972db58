"""The README's two commands work from a clean clone: the Makefile builds .venv from the
tracked dependency files, refreshes it when they change, and then runs the job or tests.

A full ``make test`` inside the test suite would recurse and reinstall everything; these
tests run make in dry-run mode in a real clone, which checks the targets, their order and
that every file they need is committed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or shutil.which("make") is None or not (ROOT / ".git").exists(),
    reason="needs git, make and a git checkout",
)


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    head = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=ROOT, capture_output=True)
    if head.returncode != 0:
        pytest.skip("no commit to clone yet")
    dest = tmp_path_factory.mktemp("clone") / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(dest)], check=True)
    return dest


def dry_run(repo: Path, target: str) -> str:
    env = {**os.environ, "MAKEFLAGS": ""}
    return subprocess.run(["make", "-n", target], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout


def test_fresh_clone_creates_the_venv_then_runs(clone):
    for target, command in (("test", "-m pytest"), ("run", "jobs/train_dac.py")):
        out = dry_run(clone, target)
        assert "-m venv .venv" in out
        assert "pip install" in out and "-c constraints.txt" in out and '-e ".[dev]"' in out
        assert command in out
        assert out.index("-m venv") < out.index(command)


def test_venv_is_refreshed_only_when_dependency_files_change(clone):
    venv = clone / ".venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    stamp = venv / ".installed"
    stamp.touch()
    os.utime(stamp, (2e9, 2e9))  # newer than the dependency files
    assert "pip install" not in dry_run(clone, "test")
    os.utime(clone / "constraints.txt", (2.1e9, 2.1e9))  # a dependency file changed
    assert "pip install" in dry_run(clone, "test")


def test_everything_the_commands_need_is_committed(clone):
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "jobs/train_dac.py", "jobs/train_dec.py",
                 "jobs/train_desom.py", "configs/train_dac.yaml", "configs/train_desom.yaml",
                 "configs/train_dec.yaml", ".ci/run", "README.md"):
        assert (clone / name).is_file(), f"{name} is not committed"
    assert "make test" in (clone / ".ci" / "run").read_text()
    readme = (clone / "README.md").read_text()
    assert readme.index("make run") < 600 and "make test" in readme[:800]


def test_constraints_pin_the_tested_versions():
    pins = (ROOT / "constraints.txt").read_text()
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "ray==2.60.0"):
        assert pin in pins
