"""Per-cluster montages: which members a cluster shows, their pixels (kept in
``report/images.npz`` so a redraw needs no source) and the image grids."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from deimos_ray.data.prepare import decode_size
from deimos_ray.data.preprocess import preprocess, resolve_image_spec
from deimos_ray.data.sources import load_source
from deimos_ray.files import save_npz, write_atomic

PER_GRID = 16  # images per montage
GRID_COLUMNS = 4
MIN_SIDE = 48  # smaller images are enlarged (an integer factor) to at least this
MAX_SIDE = 96  # images are decoded at most this large for the page
IMAGES_FILE = "images.npz"  # the montages' pixels, kept for the next drawing


def pick_members(rows: pd.DataFrame, score: pd.Series) -> tuple[list[str], list[str]]:
    """The ids of up to :data:`PER_GRID` most confident rows of a cluster (surest first)
    and of up to as many least confident ones (least sure first), never the same row
    twice: a cluster of 20 shows 10 and 10."""
    order = score.loc[rows.index].sort_values(ascending=False, kind="stable").index
    ids = rows.loc[order, "id"].tolist()
    top = min(PER_GRID, (len(ids) + 1) // 2)
    bottom = min(PER_GRID, len(ids) - top)
    return ids[:top], ids[len(ids) - bottom:][::-1]


def montage_images(saved_file: Path, cfg: Any, ids: list[str],
                   preread: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """(C, H, W) pixels in [0, 1] of the rows ``ids``: those an earlier drawing saved in
    ``saved_file``, those this drawing has already read (``preread``, from
    :func:`iter_images`), the others re-read from the source (:func:`load_images`); when any
    was read, the file is written again with the saved images and the new ones (the
    montages' and an algorithm's pictures' alike). Rows neither saved nor readable are
    left out, with a note when the source cannot be read at all (moved, or removed)."""
    saved: dict[str, np.ndarray] = {}
    if saved_file.is_file():
        with np.load(saved_file, allow_pickle=False) as stored:
            saved = {str(i): x.astype(np.float32) / 255 for i, x in zip(stored["ids"], stored["x"], strict=True)}
    read = {i: preread[i] for i in ids if i not in saved and i in (preread or {})}
    missing = [i for i in ids if i not in saved and i not in read]
    if missing:
        try:
            read.update(load_images(cfg, missing))
        except (FileNotFoundError, ValueError) as exc:
            print(f"[report] {len(missing)} montage image(s) not saved by an earlier drawing, and the "
                  f"source cannot be read: {exc}")
    saved.update(read)
    found = {i: saved[i] for i in ids if i in saved}
    if read:  # a redraw that read nothing new leaves the file as it is
        # 8-bit, as the montage PNGs hold them: the same pictures when drawn again.
        x = np.stack([np.round(np.clip(v, 0, 1) * 255).astype(np.uint8) for v in saved.values()])
        save_npz(saved_file, ids=np.array(list(saved), dtype=str), x=x)
    return found


def load_images(cfg: Any, ids: list[str]) -> dict[str, np.ndarray]:
    """(C, H, W) pixels in [0, 1] of the rows ``ids``, re-read from the run's source
    through its own preprocessing (tiles cut the same way), at most :data:`MAX_SIDE`
    pixels on a side. Rows that cannot be read again are left out."""
    return dict(iter_images(cfg, ids))


def iter_images(cfg: Any, ids: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(id, (C, H, W) pixels in [0, 1]) of the rows ``ids`` as one streaming pass over
    the source reads them (:func:`load_images`), for callers that keep less than the
    pixels (thumbnails)."""
    if not ids:
        return
    data_cfg = decode_size(cfg.data, cfg.features)
    source = load_source(data_cfg)
    if source.dataset is None:
        return
    shape = source.image_shape[:2] if source.image_shape else None
    spec = resolve_image_spec(shape, data_cfg)
    if spec.size[0] > MAX_SIDE or spec.size[1] > MAX_SIDE:
        side = MAX_SIDE / max(spec.size)
        spec = dataclasses.replace(spec, size=(max(4, round(spec.size[0] * side)), max(4, round(spec.size[1] * side))))
    wanted = np.asarray(ids, dtype=object)
    sources = np.asarray(sorted({i.split("@y")[0] for i in ids}) if cfg.data.tile else ids, dtype=object)
    ds = source.dataset.map_batches(keep_ids, fn_kwargs={"ids": sources}, batch_format="numpy")
    ds = preprocess(ds, spec).map_batches(keep_ids, fn_kwargs={"ids": wanted}, batch_format="numpy")
    for batch in ds.select_columns(["id", "x", "ok"]).iter_batches(batch_size=256, batch_format="numpy"):
        for i, x, ok in zip(batch["id"], batch["x"], batch["ok"], strict=True):
            if ok:
                yield str(i), np.asarray(x, dtype=np.float32)


def keep_ids(batch: dict[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of a numpy batch whose ``id`` is one of ``ids`` (a Ray Data map)."""
    mask = np.isin(batch["id"], ids)
    return {name: values[mask] for name, values in batch.items()}


def montage_size(n: int, side: tuple[int, int]) -> tuple[int, int]:
    """(width, height) in pixels of the montage of ``n`` images of (H, W) ``side`` after
    enlarging (2 px padding, :data:`GRID_COLUMNS` wide, as :func:`save_montage` draws)."""
    factor = max(1, -(-MIN_SIDE // min(side)))
    h, w = side[0] * factor, side[1] * factor
    cols = min(n, GRID_COLUMNS)
    rows = -(-n // cols)
    return cols * (w + 2) + 2, rows * (h + 2) + 2


def save_montage(images: list[np.ndarray], path: Path) -> Path:
    """The (C, H, W) images in a :data:`GRID_COLUMNS`-wide grid, each enlarged by an
    integer factor (nearest neighbour: no invented detail) to at least :data:`MIN_SIDE`
    pixels, written as a PNG at one screen pixel per grid pixel."""
    batch = torch.from_numpy(np.stack(images)).clamp(0, 1)
    factor = max(1, -(-MIN_SIDE // min(batch.shape[-2:])))
    if factor > 1:
        batch = F.interpolate(batch, scale_factor=factor, mode="nearest")
    grid = make_grid(batch, nrow=GRID_COLUMNS, padding=2, pad_value=1.0)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    write_atomic(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
    return path
