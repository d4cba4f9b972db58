"""Per-epoch reports with checkpoints, and loading them back (the Ray edge of training).

Every rank calls :func:`report_epoch` the same number of times (``ray.train.report`` is a
barrier); rank 0 alone writes the state. States are plain dicts of tensors and Python
scalars so they load with ``torch.load(weights_only=True)``.

With workers, Ray Train keeps the checkpoints in the run's storage and hands the latest
back on a retry or a rerun. Ray Train's local mode (``num_workers=0``, the loop in the
driver) keeps none, so here the driver's checkpoints go to a folder of the run's own
(:func:`driver_checkpoints`, set by :func:`deimos_ray.train.driver.fit`): the last two
are kept, a rerun resumes from the newest, and an unreadable one falls back to the one
before with a warning that names it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray.train
import torch

from deimos_ray.train.collective import rank

STATE_FILE = "state.pt"
DRIVER_KEEP = 2
_driver_dir: Path | None = None  # the running local-mode training's checkpoint folder


@contextlib.contextmanager
def driver_checkpoints(directory: Path) -> Iterator[None]:
    """Keep the checkpoints of a local-mode training run inside this block in
    ``directory`` (one ``checkpoint_NNNNNN/`` per report)."""
    global _driver_dir
    previous, _driver_dir = _driver_dir, Path(directory)
    try:
        yield
    finally:
        _driver_dir = previous


def _driver_checkpoint_dirs(directory: Path | None = None) -> list[Path]:
    """The complete checkpoints in ``directory`` (default: the running local-mode
    training's), oldest first."""
    directory = directory or _driver_dir
    if directory is None or not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("checkpoint_*") if p.is_dir() and not p.name.endswith(".partial"))


def latest_driver_checkpoint(directory: Path) -> Path | None:
    """The newest complete driver checkpoint in ``directory``, or None."""
    found = _driver_checkpoint_dirs(directory)
    return found[-1] if found else None


def _save_driver_checkpoint(state: dict[str, Any]) -> str:
    """Write ``state`` as the next checkpoint (whole or not at all) and drop the old ones."""
    if _driver_dir is None:  # a loop run outside fit(): a folder of its own, as Ray would
        directory = tempfile.mkdtemp(prefix="deimos_ray_ckpt_")
        torch.save(state, os.path.join(directory, STATE_FILE))
        return directory
    existing = _driver_checkpoint_dirs()
    number = int(existing[-1].name.split("_")[1]) + 1 if existing else 0
    final = _driver_dir / f"checkpoint_{number:06d}"
    staging = _driver_dir / f"{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.save(state, staging / STATE_FILE)
    os.replace(staging, final)
    for old in existing[: max(0, len(existing) + 1 - DRIVER_KEEP)]:
        shutil.rmtree(old, ignore_errors=True)
    return str(final)


def _local_mode() -> bool:
    """True when the loop runs in the driver (``num_workers=0``)."""
    from ray.train.v2.api.context import LocalTrainContext

    return isinstance(ray.train.get_context(), LocalTrainContext)


def report_epoch(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Report ``metrics`` and, unless ``state`` is None, a checkpoint holding ``state``
    (written by rank 0 only).

    With workers, Ray copies the checkpoint to the run's storage during ``report`` and
    the temporary folder can go. In local mode Ray keeps a reference to the folder
    itself, so it must outlive the call: it is the run's driver checkpoint folder.
    """
    if _local_mode():
        checkpoint = None
        if state is not None:
            checkpoint = ray.train.Checkpoint.from_directory(_save_driver_checkpoint(state))
        ray.train.report(metrics, checkpoint=checkpoint)
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank() == 0 and state is not None:
            torch.save(state, os.path.join(tmp, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint)


def latest_state() -> dict[str, Any] | None:
    """The state of the run's latest checkpoint (after a retry or a rerun), or None."""
    if _local_mode():
        return _latest_driver_state()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_state(directory)


def _latest_driver_state() -> dict[str, Any] | None:
    """The newest readable driver checkpoint's state; an unreadable one is named in a
    warning and removed, and the one before it is tried."""
    for directory in reversed(_driver_checkpoint_dirs()):
        try:
            return load_state(directory)
        except Exception as exc:  # a torn or corrupt file: fall back, never resume from it
            warnings.warn(f"checkpoint {directory / STATE_FILE} cannot be read ({type(exc).__name__}: {exc}); "
                          "resuming from the one before it", stacklevel=2)
            shutil.rmtree(directory, ignore_errors=True)
    return None


def load_state(directory: str | Path) -> dict[str, Any]:
    """Load ``state.pt`` from a checkpoint directory, tensors only (no code execution)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} a deimos_ray checkpoint?")
    return torch.load(path, map_location="cpu", weights_only=True)
