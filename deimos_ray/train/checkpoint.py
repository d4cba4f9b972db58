"""Per-epoch reports with checkpoints, and loading them back (the Ray edge of training).

Every rank calls :func:`report_epoch` the same number of times (``ray.train.report`` is a
barrier); rank 0 alone writes the state. States are plain dicts of tensors and Python
scalars so they load with ``torch.load(weights_only=True)``.

With workers, Ray Train keeps the checkpoints in the run's storage and hands the latest
back on a retry or a rerun. Ray Train's local mode (``num_workers=0``, the loop in the
driver) keeps none, so here the driver's checkpoints go to a folder of the run's own
(:func:`driver_checkpoints`, set by :func:`deimos_ray.train.driver.fit`): the last two
are kept and a rerun resumes from the newest. In either mode an unreadable checkpoint
falls back to the one before it, with a warning that names the file.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
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
    """The state of the run's latest readable checkpoint (after a retry or a rerun), or
    None. An unreadable checkpoint (a torn or corrupt ``state.pt``) is named in a warning
    and the one before it is tried, down to training from the start."""
    if _local_mode():
        return _first_readable(
            [(d / STATE_FILE, functools.partial(load_state, d)) for d in reversed(_driver_checkpoint_dirs())],
            discard=lambda state_file: shutil.rmtree(state_file.parent, ignore_errors=True))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    return worker_state(checkpoint)


def worker_state(checkpoint: ray.train.Checkpoint) -> dict[str, Any] | None:
    """The state of ``checkpoint`` (Ray Train's latest), or of the newest readable one
    before it in the same run folder. Ray names its checkpoints by time
    (``checkpoint_<date>_<time>``), so the name orders them; the folder is listed with
    the checkpoint's own filesystem, local or remote."""
    import pyarrow.fs

    parent, name = posixpath.split(checkpoint.path.rstrip("/"))
    listed = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    earlier = sorted((info.path for info in listed if info.type == pyarrow.fs.FileType.Directory
                      and posixpath.basename(info.path).startswith("checkpoint_")
                      and posixpath.basename(info.path) < name), reverse=True)
    candidates = [checkpoint, *(ray.train.Checkpoint(path, filesystem=checkpoint.filesystem) for path in earlier)]

    def load(candidate: ray.train.Checkpoint) -> dict[str, Any]:
        with candidate.as_directory() as directory:
            return load_state(directory)

    return _first_readable([(posixpath.join(c.path, STATE_FILE), functools.partial(load, c)) for c in candidates])


def _first_readable(candidates: list[tuple[Any, Callable[[], dict[str, Any]]]],
                    discard: Callable[[Any], None] | None = None) -> dict[str, Any] | None:
    """The first state in ``candidates`` (newest first: a name and its loader) that
    loads; each one that does not is named in a warning (by rank 0) and ``discard``-ed."""
    for i, (where, load) in enumerate(candidates):
        try:
            return load()
        except Exception as exc:  # a torn or corrupt file: fall back, never resume from it
            if rank() == 0:
                then = "resuming from the one before it" if i + 1 < len(candidates) else "training from the start"
                warnings.warn(f"checkpoint {where} cannot be read ({type(exc).__name__}: {exc}); {then}", stacklevel=3)
            if discard is not None:
                discard(where)
    return None


def load_state(directory: str | Path) -> dict[str, Any]:
    """Load ``state.pt`` from a checkpoint directory, tensors only (no code execution)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} a deimos_ray checkpoint?")
    return torch.load(path, map_location="cpu", weights_only=True)
