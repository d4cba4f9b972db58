"""The ``deimos-ray`` command as a new user meets it: every mistake a user can make is one
line on stderr with exit status 2, before any work (nothing is written to --out); help
and version answer; the examples in the help name only settings that exist."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from deimos_ray import __version__
from deimos_ray.commands import main


def run(argv, capsys):
    """(exit status, stdout, stderr) of ``deimos-ray argv`` in this process."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help (0) and its own usage errors (2)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


BAD = [
    (["train", "dec", "--backbone", "no_such_net"], "unknown backbone 'no_such_net'"),
    (["train", "dec", "--backbone", "torchvision:resnet5"],
     "torchvision has no model 'resnet5'; nearest: resnet50"),
    (["train", "dec", "--data", "{empty}"], "holds no images"),
    (["train", "dec", "--data", "/no/such/folder"], "does not exist"),
    (["train", "dec", "--set", "no.such.key=1"], "--set no.such.key: no setting 'no.such.key' (every setting"),
    (["train", "dec", "--set", "model.lr_x=1"], "nearest: model.lr"),
    (["train", "dac", "--set", "model.tol=0.1"], "configs/train_dac.yaml"),
    (["train", "dec", "--k", "5000"], "--k is 5000 and 'digits' holds 1797 images"),
    (["train", "dec", "--k", "20", "--limit", "10"], "holds 10 images (--limit)"),
    (["train", "dac", "--k", "1"], "--k must be >= 2"),
    (["train", "desom", "--epochs", "3"], "--iterations"),
    (["train", "dex"], "did you mean 'dec'"),
    (["trian"], "unknown command 'trian'; did you mean 'train'"),
    (["sweep", "--algorithm", "dec", "--grid", "model.no_such=1,2"], "--grid model.no_such: no setting"),
    (["sweep", "--algorithm", "dec", "--k", "3", "5000"], "--k is 5000"),
    (["report", "/no/such/run"], "/no/such/run does not exist"),
    (["report", "{empty}"], "is not a finished run"),
    (["assign", "--run", "/no/such/run", "--data", "digits", "--out", "{out}"], "does not exist"),
    (["export", "/no/such/run", "--csv", "x.csv"], "does not exist"),
    (["export", "{empty}"], "--csv FILE and/or --folders DIR"),
]


RUN_ALL = """
import contextlib, io, json, sys
from deimos_ray.commands import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory):
    """(argv, message, out folder, exit status, stderr) of every case of :data:`BAD`, run in
    one fresh interpreter: as a user meets them, with no Ray of the test session around."""
    root = tmp_path_factory.mktemp("mistakes")
    empty = root / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    cases = []
    for i, (argv, message) in enumerate(BAD):
        out = root / f"out{i}"
        argv = [a.format(empty=empty, out=out) for a in argv]
        if argv[0] in ("train", "sweep"):
            argv += ["--out", str(out)]
        cases.append((argv, message, out))
    done = subprocess.run([sys.executable, "-c", RUN_ALL, json.dumps([argv for argv, _, _ in cases])],
                          capture_output=True, text=True, check=True, cwd=root)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return [(*case, code, err) for case, (code, err) in zip(cases, results, strict=True)]


@pytest.mark.parametrize("index", range(len(BAD)), ids=[" ".join(a) for a, _ in BAD])
def test_a_mistake_is_one_line_with_status_2_before_any_work(mistakes, index):
    argv, message, out, code, err = mistakes[index]
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert not out.exists()  # nothing was started or written


def test_help_and_version_answer_without_heavy_imports():
    # A fresh interpreter: the overview must not import torch or Ray.
    code = ("import sys; from deimos_ray.commands import main; main(['--help']); main(['--version']); "
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "commands:" in done.stdout and f"deimos-ray {__version__}" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "False False"


@pytest.mark.parametrize("command", [["train", "dac"], ["train", "dec"], ["train", "desom"], ["sweep"],
                                     ["assign"], ["report"], ["export"]])
def test_every_command_has_help_whose_examples_name_real_settings(command, capsys):
    code, out, _ = run([*command, "--help"], capsys)
    assert code == 0 and "usage: deimos-ray " + " ".join(command) in out
    from deimos_ray.algorithms import ALGORITHMS
    from deimos_ray.config_io import setting_paths

    if command[0] == "train":
        paths = setting_paths(ALGORITHMS[command[1]].config_class)
        for example in re.findall(r"--set ([a-z_]+\.[\w.]+)=", out):
            assert example in paths, f"{example} is not a setting of {command[1]}"
        assert "configs/train_" in out


def test_the_train_overview_lists_the_algorithms(capsys):
    code, out, _ = run(["train", "--help"], capsys)
    assert code == 0 and all(f"  {name}" in out for name in ("dac", "dec", "desom"))


def test_a_training_ray_gives_up_on_is_one_line_naming_why():
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

    from deimos_ray.cli import training_failure

    lost = training_failure(ControllerError(WorkerGroupStartupTimeoutError(2)))
    assert lost == "training stopped: the cluster no longer has room for its 2 Ray Train worker(s) (a node was lost?)"
    failed = training_failure(WorkerGroupError("worker 0 failed", {0: ValueError("loss is nan")}))
    assert failed == "training failed: ValueError: loss is nan"
