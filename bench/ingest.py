"""Ingest throughput and memory: the Ray Data pipeline against a plain Pillow loop.

    python bench/ingest.py                                   # the 7,495 HiRISE JPEGs
    python bench/ingest.py --folder DIR --repeats 3 --image-size 64

Same files, same run, same output (float32 64x64 grayscale in [0, 1]):

- ``plain loop``: one process, ``Image.open -> convert("L") -> resize -> /255``;
- ``plain loop, draft``: the same loop with the pipeline's own decode function (JPEG
  draft mode), to separate the decode trick from the parallelism;
- ``ray data``: the deimos_ray source + preprocessing pipeline (``load_source`` ->
  ``preprocess``), streamed with ``iter_batches`` and counted, nothing materialised,
  rows in their input order as the jobs keep them (``preserve_order``);
- ``ray data, order not kept``: the same with blocks handed on as they finish, Ray
  Data's default, to show what keeping the order costs.

Images/s are medians of ``--repeats`` runs, alternating the order. Memory: the peak
proportional set size (PSS: shared pages split between the processes that map them)
summed over the driver and every Ray process it started, sampled every 0.2 s while the
pipeline streams the file list once and ten times over.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import ray
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deimos_ray.config import DataConfig  # noqa: E402
from deimos_ray.data.preprocess import ImageSpec, decode_file, preprocess, resolve_image_spec  # noqa: E402
from deimos_ray.data.sources import list_image_files  # noqa: E402
from deimos_ray.data.sources.base import Source, file_columns, table_dataset  # noqa: E402
from deimos_ray.runtime import init_ray  # noqa: E402

HIRISE = ROOT.parent / "shared" / "data" / "hirise-map-proj-v3" / "map-proj-v3"


def plain_loop(files: list[Path], size: int) -> float:
    """Images/s of the naive single-process loop."""
    t = time.perf_counter()
    for f in files:
        with Image.open(f) as img:
            arr = np.asarray(img.convert("L").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    assert arr.shape == (size, size)
    return len(files) / (time.perf_counter() - t)


def plain_loop_draft(files: list[Path], spec: ImageSpec) -> float:
    """Images/s of one process running the pipeline's own decode function."""
    t = time.perf_counter()
    for f in files:
        arr = decode_file(str(f), spec)
    assert arr.shape == spec.shape
    return len(files) / (time.perf_counter() - t)


def ray_source(files: list[Path], times: int = 1) -> Source:
    """The folder source's rows for ``files`` repeated ``times`` (ids kept unique)."""
    ids = [f"{r}/{f.name}" for r in range(times) for f in files]
    paths = [str(f) for _ in range(times) for f in files]
    return Source(table_dataset(file_columns(ids, paths)), len(ids), "bench", "folder", False)


def ray_pipeline(files: list[Path], spec: ImageSpec, times: int = 1, keep_order: bool = True) -> tuple[float, int]:
    """(images/s, rows seen) of the streaming Ray Data pipeline."""
    t = time.perf_counter()
    # A dataset takes a copy of the context when it is made; the jobs' setting is restored after.
    options = ray.data.DataContext.get_current().execution_options
    jobs_setting, options.preserve_order = options.preserve_order, keep_order
    ds = preprocess(ray_source(files, times).dataset, spec)
    options.preserve_order = jobs_setting
    rows = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):  # blocks as they come
        rows += int(batch["ok"].sum())
    return rows / (time.perf_counter() - t), rows


class PeakMemory:
    """Samples the summed PSS of this process and all its descendants in a thread."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _total(self) -> int:
        total = 0
        procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
        for p in procs:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self._total()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default=str(HIRISE), help="folder of images (default: the HiRISE subset)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, help="use the first N files (quick checks)")
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()

    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"skipping: {folder} not found")
        return 0
    files = list_image_files(folder)[: args.limit]
    spec = resolve_image_spec(None, DataConfig(spec=str(folder), image_size=args.image_size))
    init_ray(quiet=True)
    ray_pipeline(files[:512], spec)  # warm-up: first Ray Data execution starts its machinery

    results: dict[str, list[float]] = {"plain loop": [], "plain loop, draft": [], "ray data": [],
                                       "ray data, order not kept": []}
    for r in range(args.repeats):
        order = list(results) if r % 2 == 0 else list(reversed(results))
        for name in order:
            if name == "plain loop":
                results[name].append(plain_loop(files, args.image_size))
            elif name == "plain loop, draft":
                results[name].append(plain_loop_draft(files, spec))
            else:
                rate, rows = ray_pipeline(files, spec, keep_order=name == "ray data")
                assert rows == len(files), f"{rows} rows from {len(files)} files"
                results[name].append(rate)

    base = statistics.median(results["plain loop"])
    print(f"\n{len(files)} files from {folder}, -> {spec.shape} float32, {psutil.cpu_count()} CPUs, "
          f"median of {args.repeats}\n")
    print("| pipeline | images/s (median) | runs | vs plain loop |")
    print("|---|---|---|---|")
    for name, rates in results.items():
        runs = ", ".join(f"{x:.0f}" for x in rates)
        print(f"| {name} | {statistics.median(rates):.0f} | {runs} | {statistics.median(rates) / base:.2f}x |")

    if not args.skip_memory:
        print("\n| file list | rows | images/s | peak PSS, all processes | vs 1x |")
        print("|---|---|---|---|---|")
        first = None
        for times in (1, 10):
            with PeakMemory() as mem:
                rate, rows = ray_pipeline(files, spec, times)
            first = first or mem.peak
            print(f"| {times}x | {rows} | {rate:.0f} | {mem.peak / 2**20:.0f} MiB | {mem.peak / first:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
