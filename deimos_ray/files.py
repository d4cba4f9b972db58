"""Files that appear complete or not at all.

Every file a job writes goes to a hidden temporary name beside its destination and is
renamed into place (``os.replace``, atomic on one file system); folders are written the
same way by :func:`write_staged_dir`. A crash therefore leaves either the old file or the
new one, never half of one, and at worst a hidden ``.NAME.partial-*`` that the next run
removes (:func:`remove_partials`).

Callables in :data:`BEFORE_RENAME` are called with each destination just before it is
renamed into place; none are installed by the package. The tests install one that ends
the process there, to check that a crash at that moment leaves a folder a rerun can use.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deimos_ray.errors import UsageError

BEFORE_RENAME: list[Callable[[Path], None]] = []


def _partial(destination: Path) -> Path:
    return destination.parent / f".{destination.name}.partial-{uuid.uuid4().hex[:8]}"


def _before_rename(destination: Path) -> None:
    for hook in BEFORE_RENAME:
        hook(destination)


def write_atomic(destination: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` to a hidden file beside ``destination``, then rename it into place."""
    destination = Path(destination)
    tmp = _partial(destination)
    try:
        write(tmp)
        _before_rename(destination)
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)
    return destination


def write_text(destination: str | Path, text: str) -> Path:
    """Write ``text`` atomically."""
    return write_atomic(destination, lambda tmp: tmp.write_text(text))


def write_json(destination: str | Path, value: Any) -> Path:
    """Write ``value`` as indented JSON atomically (NumPy scalars as numbers)."""
    return write_text(destination, json.dumps(value, indent=2, default=float))


def save_npz(destination: str | Path, **arrays: np.ndarray) -> Path:
    """``np.savez_compressed`` atomically (NumPy would append ``.npz`` to a name without
    it); a report's montage images shrink to about a third."""
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as stream:
            np.savez_compressed(stream, **arrays)
    return write_atomic(destination, save)


def write_staged_dir(destination: str | Path, write: Callable[[Path], Any]) -> Path:
    """``write(staging)`` into a hidden folder beside ``destination``, then rename it into
    place; the old folder, if any, is moved aside first and removed last."""
    destination = Path(destination).resolve()
    staging = _partial(destination)
    try:
        write(staging)
        _before_rename(destination)
        old = None
        if destination.exists():
            old = _partial(destination)
            destination.rename(old)
        staging.rename(destination)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return destination


def copy_dir(source: str | Path, destination: str | Path) -> Path:
    """Copy the folder ``source`` to ``destination`` atomically (replacing it)."""
    return write_staged_dir(destination, lambda staging: shutil.copytree(source, staging))


def remove_partials(folder: str | Path) -> None:
    """Remove what a crashed writer left in ``folder``: hidden ``.*.partial-*`` entries."""
    for leftover in Path(folder).glob(".*.partial-*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


MIN_FREE_BYTES = 200 * 2**20  # checkpoints, Parquet and pictures of a small run


def check_writable(out: str | Path, min_free: int = MIN_FREE_BYTES) -> None:
    """Refuse, before any work, an ``--out`` that cannot be created or written or whose
    file system has less than ``min_free`` bytes free.

    Raises:
        UsageError: naming the folder, the reason and the fix.
    """
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder; name a folder")
    existing = out
    while not existing.exists():  # the nearest folder that exists is where it will be made
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is a file, not a folder; name another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {existing} is not writable; name a folder you can write to")
    free = shutil.disk_usage(existing).free
    if free < min_free:
        raise UsageError(f"--out {out}: only {free / 2**20:.0f} MiB free on its file system "
                         f"(a run needs at least {min_free / 2**20:.0f} MiB); free space or name another folder")

