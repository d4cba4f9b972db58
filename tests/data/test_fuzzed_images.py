"""A job over a few hundred broken and odd files (tests/fuzz_images.py, seeded): every
file is assigned or rejected with a reason, the job never crashes, a forged size is
never decoded, and odd but valid files (CMYK, 16-bit, palette with transparency, EXIF-
rotated, animated, TIFF) are read, an EXIF-rotated one turned as it is meant to be seen."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
from PIL import Image

from deimos_ray.data.preprocess import ImageSpec, image_to_array
from tests.fuzz_images import exif_rotated_jpeg, write_fuzzed_images
from tests.helpers import load_job, smoke_may_collapse

WORKER_CEILING_MB = 1536  # a Ray worker with torch: 300 to 600 MB; a forged size decoded: gigabytes


class PeakWorkerMemory:
    """The largest resident memory of any Ray worker process (``ray::...``), sampled
    every 0.2 s while the ``with`` block runs."""

    def __init__(self):
        self.peak_mb, self.stop = 0.0, threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.stop.wait(0.2):
            for process in psutil.process_iter(["name", "memory_info"]):
                if (process.info["name"] or "").startswith("ray::") and process.info["memory_info"]:
                    self.peak_mb = max(self.peak_mb, process.info["memory_info"].rss / 2**20)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@smoke_may_collapse
def test_a_job_over_fuzzed_files_assigns_or_rejects_every_one(ray_session, tmp_path):
    images = tmp_path / "images"
    kinds = write_fuzzed_images(images, seed=0)
    job = load_job("train_dec")
    out = tmp_path / "run"
    argv = ["--data", str(images), "--image-size", "16", "--channels", "3", "--smoke-test", "--limit", "10000",
            "--k", "3", "--num-workers", "0", "--out", str(out)]
    with PeakWorkerMemory() as memory:
        assert job.main(job.get_args_parser().parse_args(argv)) == 0
    # The decoding tasks stay within a worker's ceiling: forged sizes are refused unread.
    assert 0 < memory.peak_mb < WORKER_CEILING_MB, memory.peak_mb

    assigned = {Path(p).name for p in pq.read_table(out / "assignments", columns=["path"]).column("path").to_pylist()}
    rejected = pq.read_table(out / "rejected.parquet").to_pandas()
    rejected_names = {Path(p).name for p in rejected["path"]}
    assert assigned | rejected_names == set(kinds) and not assigned & rejected_names
    assert rejected["reason"].str.len().gt(0).all()
    accounting = json.loads((out / "metrics.json").read_text())["accounting"]
    assert accounting == {"inputs": len(kinds), "assigned": len(assigned), "rejected": len(rejected_names)}
    assert {name for name, kind in kinds.items() if kind == "valid"} <= assigned
    assert {name for name in kinds if "forged0" in name} <= rejected_names  # 60,000 x 60,000: never decoded
    assert len(rejected_names) > len(kinds) / 4  # the damage was real


def test_an_exif_rotated_photo_is_turned_as_it_is_meant_to_be_seen():
    data, upright = exif_rotated_jpeg()
    x = image_to_array(Image.open(io.BytesIO(data)), ImageSpec(upright.shape, 1))
    assert x.shape == (1, *upright.shape)
    np.testing.assert_allclose(x[0], upright / 255, atol=0.05)


def test_files_that_change_between_listing_and_decoding_are_read_as_they_are_then_or_rejected(
        ray_session, tmp_path):
    # The source lists the folder first; Ray Data decodes later. A file truncated, replaced
    # by another image, replaced by text or removed in between is never a crash: each row
    # is decoded as the file is when it is read, or rejected with the reason.
    from deimos_ray.config import DataConfig
    from deimos_ray.data.preprocess import preprocess, resolve_image_spec
    from deimos_ray.data.sources import load_source

    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(np.full((20, 20), 40 * i, np.uint8)).save(images / f"img{i}.png")
    cfg = DataConfig(spec=str(images), image_size=8)
    source = load_source(cfg)
    (images / "img0.png").write_bytes((images / "img0.png").read_bytes()[:30])  # truncated
    Image.fromarray(np.full((30, 10), 255, np.uint8)).save(images / "img1.png")  # another image, other size
    (images / "img2.png").write_text("not an image any more")
    (images / "img3.png").unlink()
    rows = preprocess(source.dataset, resolve_image_spec(None, cfg)).to_pandas()
    ok = dict(zip(rows["id"], rows["ok"], strict=True))
    reason = dict(zip(rows["id"], rows["reason"], strict=True))
    assert len(rows) == source.num_inputs == 6
    assert not any(ok[f"img{i}.png"] for i in (0, 2, 3)) and all(reason[f"img{i}.png"] for i in (0, 2, 3))
    assert ok["img1.png"] and ok["img4.png"] and ok["img5.png"]
    assert np.allclose(rows.set_index("id").loc["img1.png", "x"], 1.0)  # read as it was when decoded
