"""Turn a source spec into a Ray Dataset with one schema.

Every source yields rows ``{id, label, group, path}`` plus either ``image`` (decoded
arrays, HxWxC) or, for files, just the ``path`` that preprocessing decodes. ``id`` is a
stable string, ``label`` an int (-1 when unknown), ``group`` the original an image belongs
with (its own id unless a source says otherwise).

Specs:
    ``digits``                 scikit-learn's 8x8 digits with labels (1,797 images; built in)
    ``path/to/file.npz``       an ``images`` array (N,H,W[,C]) and optional ``labels``/``ids``
    ``path/to/folder``         every image file below the folder, recursively
A ``format:`` prefix (``npz:``, ``folder:``, ``digits:``) overrides detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from ray.data.extensions import ArrowTensorArray

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")
FORMATS = ("digits", "npz", "folder")
ROWS_PER_BLOCK = 2048  # blocks of ~2k rows: few tasks, yet enough blocks to spread


@dataclass(frozen=True)
class Source:
    """A loaded source: the dataset, how many inputs it holds and what it is."""

    dataset: ray.data.Dataset
    num_inputs: int
    name: str
    format: str
    has_labels: bool
    decoded: bool  # True: rows carry ``image``; False: rows carry only ``path``
    image_shape: tuple[int, ...] | None = None  # (H, W, C) of decoded sources


def detect_format(spec: str) -> tuple[str, str]:
    """(format, location) for a spec, honouring an explicit ``format:`` prefix.

    Raises:
        ValueError: unknown format prefix or a spec that names no known source.
        FileNotFoundError: the path does not exist.
    """
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in FORMATS:
        return prefix, rest
    if sep and len(prefix) > 1 and "/" not in prefix:
        raise ValueError(f"unknown source format {prefix!r} in {spec!r}; known: {FORMATS}")
    if spec == "digits":
        return "digits", ""
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"data source {spec!r} does not exist; give 'digits', a .npz file or a folder"
        )
    if path.is_dir():
        return "folder", str(path)
    if path.suffix.lower() == ".npz":
        return "npz", str(path)
    raise ValueError(
        f"cannot tell the format of {spec!r}; give a .npz file or a folder, "
        f"or prefix the spec with one of {[f + ':' for f in FORMATS]}"
    )


def load_source(spec: str, limit: int | None = None) -> Source:
    """Build the Ray Dataset for ``spec`` (see the module docstring for specs).

    Args:
        spec: Source specification.
        limit: Keep only the first ``limit`` inputs (in the source's stable order).
    """
    fmt, location = detect_format(spec)
    if fmt == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        # Digits hold 0..16 intensities; scale to the usual 0..255 uint8 range.
        images = np.clip(np.round(bunch.images * 255.0 / 16.0), 0, 255).astype(np.uint8)
        ids = [f"digits-{i:05d}" for i in range(len(images))]
        return _from_arrays("digits", fmt, images, bunch.target, ids, limit)
    if fmt == "npz":
        return _load_npz(Path(location), limit)
    return _load_folder(Path(location), limit)


def _load_npz(path: Path, limit: int | None) -> Source:
    with np.load(path, allow_pickle=False) as arrays:
        if "images" not in arrays:
            raise ValueError(f"{path} has no 'images' array (found {sorted(arrays.files)})")
        images = arrays["images"]
        labels = arrays["labels"] if "labels" in arrays else None
        ids = [str(i) for i in arrays["ids"]] if "ids" in arrays else None
    if images.ndim not in (3, 4):
        raise ValueError(f"{path}: 'images' must be (N, H, W) or (N, H, W, C), got {images.shape}")
    if ids is None:
        ids = [f"{path.stem}-{i:06d}" for i in range(len(images))]
    return _from_arrays(path.stem, "npz", images, labels, ids, limit)


def _from_arrays(name, fmt, images, labels, ids, limit) -> Source:
    if len(images) == 0:
        raise ValueError(f"source {name!r} holds no images")
    if images.ndim == 3:
        images = images[..., None]
    n = len(images) if limit is None else min(limit, len(images))
    images, ids = images[:n], list(ids[:n])
    has_labels = labels is not None
    labels = np.asarray(labels[:n], dtype=np.int64) if has_labels else np.full(n, -1, np.int64)
    blocks = []
    for start in range(0, n, ROWS_PER_BLOCK):
        sl = slice(start, start + ROWS_PER_BLOCK)
        blocks.append(
            pa.table(
                {
                    "id": ids[sl],
                    "image": ArrowTensorArray.from_numpy(np.ascontiguousarray(images[sl])),
                    "label": labels[sl],
                    "group": ids[sl],
                    "path": [""] * len(ids[sl]),
                }
            )
        )
    return Source(
        ray.data.from_arrow(blocks), n, name, fmt, has_labels, decoded=True,
        image_shape=tuple(images.shape[1:]),
    )


def list_image_files(root: Path) -> list[Path]:
    """Image files below ``root`` (any depth, extensions in any case), sorted, no dotfiles."""
    files = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(files)


def _load_folder(root: Path, limit: int | None) -> Source:
    files = list_image_files(root)
    if not files:
        raise ValueError(
            f"folder {root} holds no image files (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    files = files[:limit] if limit else files
    ids = [p.relative_to(root).as_posix() for p in files]
    table = pa.table(
        {
            "id": ids,
            "label": np.full(len(files), -1, np.int64),
            "group": ids,
            "path": [str(p) for p in files],
        }
    )
    # Decoding is the expensive step: cut the path list into blocks so it runs in parallel.
    blocks = [table.slice(s, 256) for s in range(0, len(files), 256)]
    return Source(ray.data.from_arrow(blocks), len(files), root.name, "folder", False, decoded=False)
