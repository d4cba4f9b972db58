"""Helpers shared by the job tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
