"""Sources that are already arrays: the built-in digits and NumPy ``.npz`` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
from ray.data.extensions import ArrowTensorArray

from deimos_ray.data.sources.base import Source

ROWS_PER_BLOCK = 2048  # decoded arrays are cheap per row: fewer, larger blocks


def load_digits_source(location: str, cfg) -> Source:
    """scikit-learn's 8x8 digits (1,797 images, labels 0-9), scaled 0..16 -> 0..255."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.round(bunch.images * 255.0 / 16.0), 0, 255).astype(np.uint8)
    ids = [f"digits-{i:05d}" for i in range(len(images))]
    return from_arrays("digits", "digits", images, bunch.target, ids, cfg.limit)


def load_npz_source(location: str, cfg) -> Source:
    """An ``images`` array (N,H,W[,C]) with optional ``labels`` and ``ids`` arrays."""
    path = Path(location)
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
    return from_arrays(path.stem, "npz", images, labels, ids, cfg.limit)


def from_arrays(name, fmt, images, labels, ids, limit) -> Source:
    """A Source of decoded images (N,H,W[,C]) with optional labels."""
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
        blocks.append(pa.table({
            "id": ids[sl],
            "image": ArrowTensorArray.from_numpy(np.ascontiguousarray(images[sl])),
            "label": labels[sl],
            "group": ids[sl],
            "path": [""] * len(ids[sl]),
        }))
    return Source(ray.data.from_arrow(blocks), n, name, fmt, has_labels,
                  image_shape=tuple(images.shape[1:]))
