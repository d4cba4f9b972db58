"""A seeded generator of broken and odd image files, built from the committed fixtures.

:func:`write_fuzzed_images` writes a few hundred files into a folder and returns what
each one is: ``valid`` (odd but well-formed: CMYK, 16-bit, palette with transparency,
EXIF-rotated, animated; every one must be read), or ``damaged`` (truncated at a random
offset, bits flipped in the first kilobytes, dimensions forged in the header, zero
bytes: each must be assigned or rejected with a reason, never crash a job, and never
be decoded at its forged size).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SOURCES = [*sorted((FIXTURES / "hirise" / "map-proj-v3").glob("*.jpg")),
           *sorted((FIXTURES / "galaxy_zoo" / "images_training_rev1").glob("*.jpg")),
           *(FIXTURES / "bad" / name for name in ("good.png", "gray16.png", "rgba.png", "palette.gif"))]
EXIF_ORIENTATION = 0x0112


def _png_with_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (CRC fixed, so only the data lie)."""
    ihdr = data[16:29]
    forged = struct.pack(">II", width, height) + ihdr[8:]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + forged) & 0xFFFFFFFF)
    return data[:16] + forged + crc + data[33:]


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """A JPEG whose first SOF segment claims ``width`` x ``height``."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            return data[:at + 5] + struct.pack(">HH", height, width) + data[at + 9:]
    return data


def _odd_but_valid(rng: np.random.Generator) -> dict[str, bytes]:
    """Well-formed files in the modes and containers a decoder must handle."""
    pixels = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    files = {}
    out = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(out, format="JPEG")
    files["cmyk.jpg"] = out.getvalue()
    out = io.BytesIO()
    Image.fromarray((rng.integers(0, 65535, (24, 32))).astype(np.uint16)).save(out, format="PNG")
    files["gray16.png"] = out.getvalue()
    out = io.BytesIO()
    palette = Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(out, format="PNG", transparency=0)
    files["palette-transparent.png"] = out.getvalue()
    out = io.BytesIO()
    frames = [Image.fromarray(rng.integers(0, 255, (24, 32), dtype=np.uint8)).convert("P") for _ in range(3)]
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["animated.gif"] = out.getvalue()
    files["exif-rotated.jpg"] = exif_rotated_jpeg()[0]
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="TIFF")
    files["rgb.tiff"] = out.getvalue()
    return files


def exif_rotated_jpeg() -> tuple[bytes, np.ndarray]:
    """A JPEG stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to
    show), and the grayscale image as it is meant to be seen: white on top, black below."""
    upright = np.zeros((32, 48), np.uint8)
    upright[:16] = 255
    stored = np.rot90(upright, k=1)  # what a camera held sideways writes
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    out = io.BytesIO()
    Image.fromarray(stored).save(out, format="JPEG", exif=exif.tobytes(), quality=95)
    return out.getvalue(), upright


def write_fuzzed_images(folder: Path, seed: int = 0, per_source: int = 12) -> dict[str, str]:
    """Write the fuzzed files into ``folder``; return {file name: "valid" or "damaged"}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, str] = {}

    def write(name: str, data: bytes, kind: str) -> None:
        (folder / name).write_bytes(data)
        kinds[name] = kind

    for name, data in _odd_but_valid(rng).items():
        write(name, data, "valid")
    write("empty.png", b"", "damaged")
    for s, source in enumerate(SOURCES):
        data = source.read_bytes()
        stem, suffix = f"s{s:02d}", source.suffix
        for i in range(per_source):  # truncated at random offsets
            write(f"{stem}-cut{i:02d}{suffix}", data[: int(rng.integers(0, len(data)))], "damaged")
        for i in range(per_source):  # a few bits flipped in the first kilobytes
            flipped = bytearray(data)
            for at in rng.integers(0, min(len(data), 4096), size=int(rng.integers(1, 6))):
                flipped[at] ^= 1 << int(rng.integers(0, 8))
            write(f"{stem}-flip{i:02d}{suffix}", bytes(flipped), "damaged")
        forge = _png_with_size if suffix == ".png" else _jpeg_with_size if suffix == ".jpg" else None
        if forge is not None:  # declared sizes far larger than the data
            for i, (w, h) in enumerate([(60_000, 60_000), (1, 65_000), (20_000, 3)]):
                write(f"{stem}-forged{i}{suffix}", forge(data, w, h), "damaged")
    return kinds
