"""Feature extraction throughput, memory and cache: the Ray Data stage against a plain
single-process PyTorch loop over the same image files, side by side in one run.

    python bench/features.py                               # 1,000 HiRISE files at 224 and 128 px
    python bench/features.py --limit 0 --sizes 224         # all 7,495 files
    python bench/features.py --backbone torchvision:resnet50 --weights resnet50.pt

For each input size, median of ``--repeats`` runs of each:

- ``plain loop``: one process, PyTorch on every CPU thread, the same decode
  (:func:`deimos_ray.data.preprocess.decode_file`) and the same extractor
  (:class:`deimos_ray.data.features.FeatureExtractor`: channels-last, forward passes of
  16) over batches of 64 files, so the ratio measures what Ray Data's processes add;
- ``Ray Data``: :func:`deimos_ray.data.prepare.prepare_data` with the backbone (decode
  and features in Ray Data actors, written to a fresh feature cache);
- ``cached``: the same call again, reading the cache the previous call wrote.

Peak memory is the largest sum of resident memory over the driver and every Ray worker
process, sampled every 0.2 s, for the file list once and repeated ``--scale`` times
(ids made unique), to show memory does not grow with the collection. Needs
``../shared/data/hirise-map-proj-v3`` (or ``--files DIR``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deimos_ray.config import DataConfig, FeatureConfig  # noqa: E402
from deimos_ray.data.features import FeatureExtractor  # noqa: E402
from deimos_ray.data.prepare import prepare_data  # noqa: E402
from deimos_ray.data.preprocess import ImageSpec, decode_file  # noqa: E402
from deimos_ray.runtime import init_ray  # noqa: E402

HIRISE = ROOT.parent / "shared" / "data" / "hirise-map-proj-v3"


def plain_loop(files: list[Path], backbone: str, weights: str | None, size: int) -> int:
    """Features of every file in one process; returns the number of images."""
    extractor = FeatureExtractor(backbone, weights, size)
    spec = ImageSpec((size, size), 1)
    n = 0
    for start in range(0, len(files), 64):
        batch = np.stack([decode_file(str(f), spec) for f in files[start:start + 64]])
        n += len(extractor.features(batch))
    return n


class PeakMemory:
    """The largest resident memory of this process and its descendants (Ray's workers)
    seen while the ``with`` block runs."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def manifest(files: list[Path], copies: int, where: Path) -> Path:
    """A manifest CSV listing ``files`` ``copies`` times, each copy with its own ids."""
    rows = [{"id": f"{c}/{f.name}", "path": str(f)} for c in range(copies) for f in files]
    path = where / f"files-{len(files)}-x{copies}.csv"  # the timed list and the memory lists differ
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def ray_data_run(spec: Path, features: FeatureConfig, cache: Path) -> tuple[float, int]:
    t = time.perf_counter()
    data = prepare_data(DataConfig(spec=str(spec)), features, cache)
    data.good.count()
    return time.perf_counter() - t, data.good_inputs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", default=str(HIRISE), help="a folder of image files (default: the HiRISE set)")
    p.add_argument("--limit", type=int, default=1000, help="use the first N files (0: all)")
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 128])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scale", type=int, default=10, help="the memory run's repetition of the file list")
    p.add_argument("--memory-limit", type=int, default=200, help="files in the memory runs (x1 and x scale)")
    args = p.parse_args()
    root = Path(args.files)
    if not root.is_dir():
        print(f"skipping: {root} not found")
        return 0
    files = sorted(root.rglob("*.jpg"))
    files = files[: args.limit] if args.limit else files
    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    init_ray(num_cpus=cpus, quiet=True)
    work = Path(tempfile.mkdtemp(prefix="deimos_features_"))
    once = manifest(files, 1, work)
    print(f"{len(files)} files from {root}, backbone {args.backbone}, {cpus} CPUs, median of {args.repeats}")
    # Ray's own start-up keeps the CPUs busy for a while: let it settle before timing.
    ray_data_run(manifest(files[:64], 1, work), FeatureConfig(backbone=args.backbone, weights=args.weights,
                                                             image_size=min(args.sizes), normalize="none"),
                 work / "warm-up")
    rows = []
    for size in args.sizes:
        features = FeatureConfig(backbone=args.backbone, weights=args.weights, image_size=size, normalize="none")
        plain, ray_s, cached = [], [], []
        for r in range(args.repeats):
            t = time.perf_counter()
            plain_loop(files, args.backbone, args.weights, size)
            plain.append(time.perf_counter() - t)
            cache = work / f"cache-{size}-{r}"
            seconds, n = ray_data_run(once, features, cache)
            ray_s.append(seconds)
            cached.append(ray_data_run(once, features, cache)[0])
            shutil.rmtree(cache)
            assert n == len(files), f"{n} of {len(files)} images extracted"
        mem = {}
        for copies in (1, args.scale):
            spec = manifest(files[: args.memory_limit], copies, work)
            with PeakMemory() as peak:
                ray_data_run(spec, features, work / f"mem-{size}-{copies}")
            mem[copies] = peak.peak / 2**30
        rows.append((size, len(files) / statistics.median(plain), len(files) / statistics.median(ray_s),
                     statistics.median(ray_s) / statistics.median(cached), mem[1], mem[args.scale]))
    print(f"\n| size | plain loop img/s | Ray Data img/s | ratio | cached run speed-up | "
          f"peak memory x1 ({args.memory_limit} files) | x{args.scale} | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for size, plain_rate, ray_rate, speedup, m1, m10 in rows:
        print(f"| {size} | {plain_rate:.1f} | {ray_rate:.1f} | {ray_rate / plain_rate:.2f} | {speedup:.1f}x | "
              f"{m1:.2f} GiB | {m10:.2f} GiB | {m10 / m1:.2f} |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
