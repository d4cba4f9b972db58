"""Helpers shared by the tests: loading scripts, and writing small image folders."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from deimos_ray.algorithms import ALGORITHMS
from deimos_ray.config_io import override_all
from deimos_ray.job import run_training_job

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def load_script(path: str) -> ModuleType:
    """Import the script at ``path`` under the project root (``jobs/`` and ``bench/``
    hold scripts, not packages)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_job(name: str) -> ModuleType:
    """Import ``jobs/<name>.py``."""
    return load_script(f"jobs/{name}.py")


# A smoke training on a few images may put them all in one or two clusters; the job then
# warns that fewer clusters came back than asked. Tests that do not check that warning
# keep it out of the test log.
smoke_may_collapse = pytest.mark.filterwarnings("ignore:.* distinct clusters, fewer than:UserWarning")


def write_image_folder(root, n_good=6):
    """Good PNG/JPEG files in nested folders, plus a dotfile and a non-image to skip."""
    rng = np.random.default_rng(0)
    (root / "a" / "b").mkdir(parents=True)
    paths = []
    for i in range(n_good):
        sub = root / ("a" if i % 2 else "a/b")
        ext = ".PNG" if i % 3 == 0 else ".jpg"
        path = sub / f"img{i}{ext}"
        Image.fromarray(rng.integers(0, 255, (20, 30), dtype=np.uint8)).save(path, format="PNG" if ext == ".PNG" else "JPEG")
        paths.append(path)
    (root / ".hidden.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return paths


def backbone_smoke_settings(algorithm, images, **settings) -> dict:
    """``algorithm``'s smoke-test settings on the image folder ``images``, three clusters,
    trained in the driver on EfficientNet-Lite0 features at 32 px, then ``settings``
    (dotted paths, ``.`` written as ``__``)."""
    return {**load_job(algorithm.job).SMOKE, "data.spec": str(images), "model.n_clusters": 3,
            "scaling.num_workers": 0, "features.backbone": "efficientnet_lite0", "features.image_size": 32,
            **{key.replace("__", "."): value for key, value in settings.items()}}


def backbone_job(tmp_path, name: str, n_good: int = 16, **settings):
    """Train algorithm ``name`` on a new folder ``tmp_path/images`` of ``n_good`` images
    with :func:`backbone_smoke_settings` and ``settings``: (the good files, the job's
    metrics, the run folder ``tmp_path/run``)."""
    images = tmp_path / "images"
    images.mkdir()
    good = write_image_folder(images, n_good=n_good)
    algorithm = ALGORITHMS[name]
    cfg = override_all(algorithm.config_class(), backbone_smoke_settings(algorithm, images, **settings))
    return good, run_training_job(algorithm, cfg, tmp_path / "run"), tmp_path / "run"


def write_bad_files(root):
    """The committed zero-byte, text-as-.jpg and truncated files."""
    for name in ("zero.png", "text.jpg", "truncated.jpg"):
        shutil.copy(FIXTURES / "bad" / name, root / name)


def interrupted_after_two_reports(config):
    """Ray Train loop: the loop of module ``config["loop_module"]``, stopped by an error
    right after its second report the first time it runs (the file ``config["marker"]``
    remembers), as a crash would stop it. A rerun with the same run name resumes."""
    module = importlib.import_module(config["loop_module"])
    marker = Path(config["marker"])
    real = module.report_epoch
    reports = []

    def report(metrics, state):
        real(metrics, state)
        reports.append(metrics)
        if len(reports) == 2 and not marker.exists():
            marker.touch()
            raise RuntimeError("interrupted")

    module.report_epoch = report
    try:
        return module.train_loop_per_worker(config)
    finally:
        module.report_epoch = real


def registered_checkpoint(storage: Path) -> dict | None:
    """The latest checkpoint Ray Train's controller has registered for the run in
    ``storage`` (a written folder alone is not enough: a retry or a rerun starts from
    this one)."""
    try:
        snapshot = json.loads((storage / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return None
    return snapshot.get("latest_checkpoint_result")
