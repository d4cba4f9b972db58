"""Per-epoch reports with checkpoints, and loading them back (the Ray edge of training).

Every rank calls :func:`report_epoch` the same number of times (``ray.train.report`` is a
barrier); rank 0 alone writes the state. States are plain dicts of tensors and Python
scalars so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch

from deimos_ray.train.collective import rank

STATE_FILE = "state.pt"


def _local_mode() -> bool:
    """True when the loop runs in the driver (``num_workers=0``)."""
    from ray.train.v2.api.context import LocalTrainContext

    return isinstance(ray.train.get_context(), LocalTrainContext)


def report_epoch(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Report ``metrics`` and, unless ``state`` is None, a checkpoint holding ``state``
    (written by rank 0 only).

    With workers, Ray copies the checkpoint to the run's storage during ``report`` and
    the temporary folder can go. In local mode Ray keeps a reference to the folder
    itself, so it must outlive the call: it is left for the job to export.
    """
    if _local_mode():
        checkpoint = None
        if state is not None:
            directory = tempfile.mkdtemp(prefix="deimos_ray_ckpt_")
            torch.save(state, os.path.join(directory, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(directory)
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
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return load_state(directory)


def load_state(directory: str | Path) -> dict[str, Any]:
    """Load ``state.pt`` from a checkpoint directory, tensors only (no code execution)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {directory} a deimos_ray checkpoint?")
    return torch.load(path, map_location="cpu", weights_only=True)
