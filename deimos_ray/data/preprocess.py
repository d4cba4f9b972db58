"""Decode, tile, resize and normalise images in Ray Data, recording every failure.

:func:`preprocess` maps source rows (``base.py``'s schema) to rows ``{id, label, group,
path, <metadata>, x, ok, reason, stage, _source_id}`` where ``x`` is float32 (C, H, W) in
[0, 1]. It streams: each Ray Data task decodes one block of a few hundred images, so
memory stays bounded however many there are. A row whose image cannot be read keeps
``ok=False`` and the reason, and never takes the other images of its block down;
:func:`split_rejected` separates them, so every input ends up assigned or in
``rejected.parquet``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
from PIL import Image, ImageOps
from ray.data.expressions import col, lit

from deimos_ray.data.crop import AUTO, Box, crop_box
from deimos_ray.data.sources.archive import open_zip
from deimos_ray.data.sources.base import PIXEL_COLUMNS

DEFAULT_FILE_IMAGE_SIZE = 28
FLAG_COLUMNS = ("ok", "reason", "stage")
REJECTED_COLUMNS = ["id", "path", "reason", "stage"]  # what rejected.parquet keeps of a row
EXIF_ORIENTATION = 0x0112  # the EXIF tag of how the stored pixels are turned
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
PREPROCESS_BATCH = 256  # images a decode task: a fraction of a second each, so tasks spread
CROP_COLUMNS = ("crop_top", "crop_left", "crop_bottom", "crop_right")  # fractions of the side
CROP_NOTE = "crop_note"


@dataclass(frozen=True)
class ImageSpec:
    """Target geometry of the model inputs, and how images are cut and checked."""

    size: tuple[int, int]
    channels: int
    tile: int | None = None
    stride: int | None = None
    max_pixels: int = 50_000_000
    max_tiles: int = 10_000
    crop: float | str | None = None  # deimos_ray.data.crop: a central fraction, "auto" or None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of ``x``."""
        return (self.channels, *self.size)


def resolve_image_spec(source_shape: tuple[int, ...] | None, cfg) -> ImageSpec:
    """The input geometry from a :class:`DataConfig`: ``image_size`` if given, else the
    tile size, else an array source's own size, else 28."""
    if cfg.image_size is not None:
        size = (cfg.image_size, cfg.image_size)
    elif cfg.tile is not None:
        size = (cfg.tile, cfg.tile)
    elif source_shape is not None:
        size = (int(source_shape[0]), int(source_shape[1]))
    else:
        size = (DEFAULT_FILE_IMAGE_SIZE, DEFAULT_FILE_IMAGE_SIZE)
    stride = cfg.stride or cfg.tile
    return ImageSpec(size, cfg.channels, cfg.tile, stride, cfg.max_pixels, cfg.max_tiles, cfg.crop)


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """Scale pixel values to float32 in [0, 1] by the dtype's range (uint8, uint16, float)."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if images.dtype == np.uint16:
        return images.astype(np.float32) / 65535.0
    out = images.astype(np.float32)
    lo, hi = float(np.nanmin(out)), float(np.nanmax(out))
    if lo < 0.0 or hi > 1.0:  # floats in an arbitrary range: min-max to [0, 1]
        out = (out - lo) / max(hi - lo, 1e-12)
    return np.nan_to_num(out)


def convert_arrays(images: np.ndarray, spec: ImageSpec) -> tuple[np.ndarray, list[tuple[Box, str]]]:
    """(B, H, W, C) array batch -> (B, C', H', W') float32 in [0, 1] per ``spec``, and
    each image's crop box and note (none without ``spec.crop``)."""
    x = np.ascontiguousarray(to_unit_float(images).transpose(0, 3, 1, 2))
    if spec.crop is None:
        return _fit(x, spec), []
    out, boxes = np.zeros((len(x), *spec.shape), dtype=np.float32), []
    for i, image in enumerate(x):
        out[i], box, note = _crop_array(image, spec)
        boxes.append((box, note))
    return out, boxes


def _crop_array(image: np.ndarray, spec: ImageSpec) -> tuple[np.ndarray, Box, str]:
    """One (C, H, W) image in [0, 1] cropped as ``spec.crop`` says and fitted to ``spec``."""
    height, width = image.shape[1:]
    gray = image.mean(axis=0) if spec.crop == AUTO else None
    (top, left, bottom, right), note = crop_box(gray, height, width, spec.crop)
    return _fit(np.ascontiguousarray(image[None, :, top:bottom, left:right]), spec)[0], \
        (top, left, bottom, right), note


def _fit(x: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """Channels and size of a (B, C, H, W) float batch made to match ``spec``.

    torch is imported here, not at module level: decode tasks that only read files then
    start without it (a second or more, and hundreds of MB, per Ray worker).
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(x)
    if x.shape[1] != spec.channels:
        if spec.channels == 1:  # luminance with ITU-R 601 weights, as Pillow's "L"
            w = torch.tensor([0.299, 0.587, 0.114])[: x.shape[1]]
            x = (x * w.view(1, -1, 1, 1)).sum(1, keepdim=True) / w.sum()
        else:
            x = x[:, :1].expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != spec.size:
        x = F.interpolate(x, size=spec.size, mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0).contiguous().numpy()


def open_image(file: str = "", member: str = "", data: bytes | None = None) -> Image.Image:
    """A Pillow image from encoded bytes, a zip member, or a file."""
    if data is not None:
        return Image.open(io.BytesIO(data))
    if member:
        return Image.open(io.BytesIO(open_zip(file).read(member)))
    return Image.open(file)


def image_to_array(img: Image.Image, spec: ImageSpec, full_size: bool = False) -> np.ndarray:
    """:func:`decode_image`'s array alone."""
    return decode_image(img, spec, full_size)[0]


def decode_image(img: Image.Image, spec: ImageSpec, full_size: bool = False) -> tuple[np.ndarray, Box | None, str]:
    """Decode a Pillow image to (C, H, W) float32 in [0, 1], with the crop box it kept
    (fractions of the height and width: top, left, bottom, right; None without
    ``spec.crop``) and the crop's note.

    8-bit images scale by 255, 16-bit by 65535, 32-bit integer and float images by their
    range. Alpha is dropped, palettes expanded, CMYK converted; an EXIF orientation
    (a camera held sideways) is applied, so the image is seen as it is meant to be; an
    animated file gives its first frame. Cropped as ``spec.crop`` says
    (:mod:`deimos_ray.data.crop`), then resized to ``spec.size``, unless ``full_size``
    (tiling cuts the full image first).

    Raises:
        ValueError: more pixels than ``spec.max_pixels`` (a probable decompression bomb).
        OSError: a corrupt or truncated file.
    """
    if img.width * img.height > spec.max_pixels:
        raise ValueError(f"too large: {img.width}x{img.height} pixels exceeds max_pixels={spec.max_pixels}")
    mode = "L" if spec.channels == 1 else "RGB"
    crop = None if full_size else spec.crop
    if img.format == "JPEG" and not full_size and crop != AUTO:
        # Decode at a reduced scale (the cheap win for big JPEGs), still at least the
        # input's size in the part the crop keeps; auto crops need the full detail.
        fraction = 1.0 if crop is None else float(crop)
        img.draft(mode, spec.size if crop is None else tuple(int(np.ceil(s / fraction)) for s in spec.size))
    img.load()
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in HIGH_DEPTH_MODES:
        raw = np.asarray(img)
        arr = raw.astype(np.float32) / 65535.0 if raw.dtype == np.uint16 or img.mode.startswith("I;16") else to_unit_float(raw)
        arr = np.repeat(arr[None], spec.channels, axis=0)
        if crop is not None:
            arr, box, note = _crop_array(arr, spec)
            return arr, _fractions(box, *raw.shape[:2]), note
        if not full_size and arr.shape[1:] != spec.size:
            arr = _fit(arr[None], spec)[0]
        return arr, None, ""
    img = img.convert(mode)
    box, note = None, ""
    if crop is not None:
        gray = np.asarray(img.convert("L") if img.mode != "L" else img, dtype=np.float32) / 255.0 if crop == AUTO else None
        (top, left, bottom, right), note = crop_box(gray, img.height, img.width, crop)
        box = _fractions((top, left, bottom, right), img.height, img.width)
        img = img.crop((left, top, right, bottom))
    if not full_size and img.size != spec.size[::-1]:
        img = img.resize(spec.size[::-1], Image.BILINEAR, reducing_gap=None)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return (arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)), box, note


def _fractions(box: Box, height: int, width: int) -> tuple[float, float, float, float]:
    """A pixel box as fractions of the image's height and width (the same whatever
    scale the image was decoded at)."""
    top, left, bottom, right = box
    return top / height, left / width, bottom / height, right / width


def decode_file(path: str, spec: ImageSpec) -> np.ndarray:
    """Read one image file into (C, H, W) float32 in [0, 1]. Raises on any bad input."""
    with open_image(path) as img:
        return image_to_array(img, spec)


def tile_positions(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """Top-left (y, x) of every full tile; tiles past the edge are not cut."""
    return [(y, x) for y in range(0, height - tile + 1, stride) for x in range(0, width - tile + 1, stride)]


def cut_tiles(full: np.ndarray, spec: ImageSpec) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Tiles (N, C, H, W) of a full (C, H, W) image, resized to ``spec.size``."""
    positions = tile_positions(full.shape[1], full.shape[2], spec.tile, spec.stride)
    if not positions:
        raise ValueError(f"smaller than one tile: {full.shape[2]}x{full.shape[1]} < {spec.tile}")
    if len(positions) > spec.max_tiles:
        raise ValueError(f"{full.shape[2]}x{full.shape[1]} would cut {len(positions)} tiles of {spec.tile} px at "
                         f"stride {spec.stride}, more than data.max_tiles={spec.max_tiles}; raise --stride "
                         "or --set data.max_tiles=N")
    tiles = np.stack([full[:, y : y + spec.tile, x : x + spec.tile] for y, x in positions])
    return _fit(tiles, spec), positions


def _decode_one(batch: dict[str, np.ndarray], i: int, spec: ImageSpec, full_size: bool
                ) -> tuple[np.ndarray, Box | None, str]:
    if "image" in batch:
        x = np.ascontiguousarray(to_unit_float(np.asarray(batch["image"][i]))[None].transpose(0, 3, 1, 2))
        if full_size:
            return _fit(x, ImageSpec(tuple(x.shape[-2:]), spec.channels))[0], None, ""
        return _fit(x, spec)[0], None, ""
    data = batch["bytes"][i] if "bytes" in batch else None
    file = batch["file"][i] if "file" in batch else ""
    member = batch["member"][i] if "member" in batch else ""
    try:
        img = open_image(file, member, data)
    except Image.DecompressionBombError as exc:  # Pillow's check, at twice data.max_pixels
        raise ValueError(f"too large: exceeds max_pixels={spec.max_pixels} ({exc})") from exc
    with img:
        return decode_image(img, spec, full_size)


def _preprocess_batch(batch: dict[str, np.ndarray], spec: ImageSpec) -> dict[str, np.ndarray]:
    """Ray Data batch function: one output row per image (or per tile); failures kept."""
    # Pillow's own bomb check follows data.max_pixels: it refuses at open anything over
    # twice the limit, and image_to_array refuses over the limit before decoding; its
    # warning for images between the two adds nothing to that rejection.
    Image.MAX_IMAGE_PIXELS = spec.max_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    if spec.tile is not None:
        return _tile_batch(batch, spec)
    n = len(batch["id"])
    ok = np.ones(n, dtype=bool)
    reason = [""] * n
    boxes = np.full((n, 4), np.nan, dtype=np.float32)
    notes = [""] * n
    if "image" in batch:  # decoded arrays of one shape: convert the whole batch at once
        images = np.asarray(batch["image"])
        x, kept = convert_arrays(images, spec)
        for i, (box, note) in enumerate(kept):
            boxes[i], notes[i] = _fractions(box, *images.shape[1:3]), note
    else:
        x = np.zeros((n, *spec.shape), dtype=np.float32)
        for i in range(n):
            try:
                x[i], box, notes[i] = _decode_one(batch, i, spec, False)
                if box is not None:
                    boxes[i] = box
            except Exception as exc:  # any unreadable input is recorded, never fatal here
                ok[i], reason[i] = False, f"{type(exc).__name__}: {exc}"
    out = {k: v for k, v in batch.items() if k not in PIXEL_COLUMNS}
    out.update(x=x, ok=ok, reason=np.array(reason), stage=np.full(n, "decode"), _source_id=batch["id"])
    if spec.crop is not None:
        out.update({name: boxes[:, j] for j, name in enumerate(CROP_COLUMNS)}, **{CROP_NOTE: np.array(notes)})
    return out


def _tile_batch(batch: dict[str, np.ndarray], spec: ImageSpec) -> dict[str, np.ndarray]:
    """Like :func:`_preprocess_batch`, one row per tile; a failed image is one row."""
    passthrough = [k for k in batch if k not in PIXEL_COLUMNS]
    rows: dict[str, list] = {k: [] for k in (*passthrough, "x", *FLAG_COLUMNS, "_source_id", "tile_y", "tile_x")}
    blank = np.zeros(spec.shape, dtype=np.float32)
    for i in range(len(batch["id"])):
        source_id = batch["id"][i]
        try:
            tiles, positions = cut_tiles(_decode_one(batch, i, spec, True)[0], spec)
            outputs = [(f"{source_id}@y{y}x{x}", source_id, t, y, x) for t, (y, x) in zip(tiles, positions, strict=True)]
            ok, reason = True, ""
        except Exception as exc:  # any unreadable input is recorded, never fatal here
            outputs = [(source_id, batch["group"][i], blank, -1, -1)]
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        for row_id, group, x, y, x0 in outputs:
            for k in passthrough:
                rows[k].append(batch[k][i])
            rows["id"][-1], rows["group"][-1] = row_id, group
            rows["x"].append(x)
            rows["ok"].append(ok)
            rows["reason"].append(reason)
            rows["stage"].append("decode")
            rows["_source_id"].append(source_id)
            rows["tile_y"].append(y)
            rows["tile_x"].append(x0)
    out = {k: np.asarray(v) for k, v in rows.items() if k != "x"}
    out["x"] = np.stack(rows["x"]).astype(np.float32) if rows["x"] else np.zeros((0, *spec.shape), np.float32)
    return out


def preprocess(ds: ray.data.Dataset, spec: ImageSpec, batch_size: int = PREPROCESS_BATCH) -> ray.data.Dataset:
    """Map a source dataset to model inputs ``x`` (C, H, W) with ``ok``/``reason`` flags,
    ``batch_size`` images a task."""
    return ds.map_batches(_preprocess_batch, fn_kwargs={"spec": spec}, batch_size=batch_size, batch_format="numpy")


def split_rejected(ds: ray.data.Dataset) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    """(good rows, rejected rows with ``id, path, reason, stage``) of a preprocessed dataset."""
    # Predicate expressions run as Arrow filters, with no Python call per row.
    good = ds.filter(expr=col("ok") == lit(True))
    bad = ds.filter(expr=col("ok") == lit(False)).select_columns(REJECTED_COLUMNS)
    return good.drop_columns(list(FLAG_COLUMNS)), bad


def split_table(table: pa.Table) -> tuple[pa.Table, pd.DataFrame]:
    """:func:`split_rejected` of preprocessed rows already in the driver: (good rows,
    rejected rows with ``id, path, reason, stage``)."""
    ok = table.column("ok")
    bad = table.filter(pc.invert(ok)).select(REJECTED_COLUMNS).to_pandas()
    return table.filter(ok).drop_columns(list(FLAG_COLUMNS)), bad


def output_columns(ds_columns: list[str]) -> list[str]:
    """Columns of preprocessed rows that belong in the outputs (no x, no internals)."""
    return [c for c in ds_columns if c != "x" and not c.startswith("_")]
