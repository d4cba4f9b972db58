"""Decode, resize and normalise images in Ray Data, recording every failure with its reason.

:func:`preprocess` maps a source dataset to rows ``{id, label, group, path, x, ok, reason,
stage}`` where ``x`` is float32 (C, H, W) in [0, 1]. Rows whose image could not be read
keep ``ok=False`` and a ``reason``; :func:`split_rejected` separates them, so every input
ends up either assigned or in ``rejected.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray
import torch
import torch.nn.functional as F
from PIL import Image

DEFAULT_FILE_IMAGE_SIZE = 28
MAX_PIXELS = 50_000_000  # larger images are rejected as probable decompression bombs


@dataclass(frozen=True)
class ImageSpec:
    """Target geometry of the model inputs."""

    size: tuple[int, int]
    channels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (self.channels, *self.size)


def resolve_image_spec(source_shape: tuple[int, ...] | None, image_size: int | None, channels: int) -> ImageSpec:
    """The input geometry: ``image_size`` if given, else the array source's own size."""
    if image_size is not None:
        return ImageSpec((image_size, image_size), channels)
    if source_shape is not None:
        return ImageSpec((int(source_shape[0]), int(source_shape[1])), channels)
    return ImageSpec((DEFAULT_FILE_IMAGE_SIZE, DEFAULT_FILE_IMAGE_SIZE), channels)


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """Scale an image batch to float32 in [0, 1] by its dtype's range (uint8, uint16, float)."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if images.dtype == np.uint16:
        return images.astype(np.float32) / 65535.0
    out = images.astype(np.float32)
    lo, hi = float(out.min()), float(out.max())
    if lo < 0.0 or hi > 1.0:
        # Float images in an arbitrary range: min-max scale the batch to [0, 1].
        out = (out - lo) / max(hi - lo, 1e-12)
    return out


def convert_arrays(images: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """(B, H, W, C) array batch -> (B, C', H', W') float32 in [0, 1] per ``spec``."""
    x = torch.from_numpy(to_unit_float(images)).permute(0, 3, 1, 2)  # (B, C, H, W)
    if x.shape[1] != spec.channels:
        if spec.channels == 1:  # RGB -> luminance, ITU-R 601 weights as Pillow's "L"
            w = torch.tensor([0.299, 0.587, 0.114])[: x.shape[1]]
            x = (x * w.view(1, -1, 1, 1)).sum(1, keepdim=True) / w.sum()
        else:
            x = x[:, :1].expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != spec.size:
        x = F.interpolate(x, size=spec.size, mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0).contiguous().numpy()


def decode_file(path: str, spec: ImageSpec) -> np.ndarray:
    """Read one image file into (C, H, W) float32 in [0, 1]. Raises on any bad input."""
    with Image.open(path) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"too large: {img.width}x{img.height} pixels exceeds {MAX_PIXELS}")
        mode = "L" if spec.channels == 1 else "RGB"
        if img.format == "JPEG":
            img.draft(mode, spec.size)  # decode at reduced scale: the cheap win for big JPEGs
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(img, dtype=np.float32)
            hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
            img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8))
        img = img.convert(mode).resize(spec.size[::-1], Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _preprocess_batch(batch: dict[str, np.ndarray], spec: ImageSpec) -> dict[str, np.ndarray]:
    """Ray Data batch function: arrays are converted, files decoded; failures recorded."""
    n = len(batch["id"])
    ok = np.ones(n, dtype=bool)
    reason = np.array([""] * n, dtype=object)
    if "image" in batch:
        x = convert_arrays(np.asarray(batch["image"]), spec)
    else:
        x = np.zeros((n, *spec.shape), dtype=np.float32)
        for i, path in enumerate(batch["path"]):
            try:
                x[i] = decode_file(path, spec)
            except Exception as exc:  # any unreadable file is recorded, never fatal here
                ok[i], reason[i] = False, f"{type(exc).__name__}: {exc}"
    return {
        "id": batch["id"],
        "label": batch["label"],
        "group": batch["group"],
        "path": batch["path"],
        "x": x,
        "ok": ok,
        "reason": reason.astype(str),
        "stage": np.array(["decode"] * n),
    }


def preprocess(ds: ray.data.Dataset, spec: ImageSpec) -> ray.data.Dataset:
    """Map a source dataset to model inputs ``x`` (C, H, W) with ``ok``/``reason`` flags."""
    return ds.map_batches(
        _preprocess_batch, fn_kwargs={"spec": spec}, batch_size=256, batch_format="numpy"
    )


def split_rejected(ds: ray.data.Dataset) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(good rows, rejected rows with ``id, path, reason, stage``) of a preprocessed dataset."""
    good = ds.filter(lambda r: r["ok"])
    bad = ds.filter(lambda r: not r["ok"]).select_columns(["id", "path", "reason", "stage"])
    return good.drop_columns(["ok", "reason", "stage"]), bad

