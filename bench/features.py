"""Feature extraction throughput, memory and cache: the Ray Data stage against a plain
single-process PyTorch loop over the same image files, side by side in one run.

    python bench/features.py                               # 1,000 HiRISE files at 224 and 128 px
    python bench/features.py --limit 0 --sizes 224         # all 7,495 files
    python bench/features.py --backbone torchvision:resnet50 --weights resnet50.pt
    python bench/features.py --use-gpu --limit 0 --batch-size 256   # one GPU

For each input size, median of ``--repeats`` runs of each:

- ``plain loop``: one process, PyTorch on every CPU thread, the same decode
  (:func:`deimos_ray.data.preprocess.decode_file`) and the same extractor
  (:class:`deimos_ray.data.features.FeatureExtractor`: channels-last, forward passes of
  16 on a CPU) over batches of ``--batch-size`` files, so the ratio measures what Ray
  Data's processes add (the model is loaded once, outside its timing; Ray Data's runs
  include their actors' start);
- ``Ray Data``: :func:`deimos_ray.data.prepare.prepare_data` with the backbone (decode
  and features in Ray Data actors, written to a fresh feature cache);
- ``cached``: the same call again, reading the cache the previous call wrote;
- ``forward ceiling``: the extractor's forward passes alone, on random tensors already on
  its device (no decode, no copy): the most any pipeline could reach with this model.

Where the plain loop's time goes is printed too: decoding, the copy to the device (and
conversion to its dtype and memory format) and the forward pass, in milliseconds an
image. ``--use-gpu`` runs both on the GPU (bf16, as the jobs do; one actor per GPU).

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


def _sync(extractor: FeatureExtractor) -> None:
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()


def plain_loop(files: list[Path], extractor: FeatureExtractor, size: int, batch_size: int) -> dict[str, float]:
    """Features of every file in one process, as :meth:`FeatureExtractor.features`
    computes them; returns the seconds spent decoding, copying and in forward passes."""
    spec = ImageSpec((size, size), 1)
    seconds = {"decode": 0.0, "copy": 0.0, "forward": 0.0}
    n = 0
    for start in range(0, len(files), batch_size):
        t = time.perf_counter()
        batch = np.stack([decode_file(str(f), spec) for f in files[start:start + batch_size]])
        seconds["decode"] += time.perf_counter() - t
        step = extractor.step or len(batch)
        for first in range(0, len(batch), step):
            t = time.perf_counter()
            images = extractor.to_device(batch[first:first + step])
            _sync(extractor)
            seconds["copy"] += time.perf_counter() - t
            t = time.perf_counter()
            n += len(extractor.forward(images))  # back on the host, so the GPU has finished
            seconds["forward"] += time.perf_counter() - t
    assert n == len(files), f"{n} of {len(files)} images"
    return seconds


def forward_ceiling(extractor: FeatureExtractor, size: int, batch_size: int, seconds: float = 10.0) -> float:
    """Images per second of the extractor's forward passes alone, on one random batch
    already on its device, repeated for about ``seconds`` after a warm-up."""
    step = extractor.step or batch_size
    images = extractor.to_device(np.random.default_rng(0).random((step, 1, size, size), dtype=np.float32))
    for _ in range(3):
        extractor.forward(images)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        n += len(extractor.forward(images))
    return n / (time.perf_counter() - t)


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


def ray_data_run(spec: Path, features: FeatureConfig, cache: Path, use_gpu: bool) -> tuple[float, int]:
    t = time.perf_counter()
    data = prepare_data(DataConfig(spec=str(spec)), features, cache, use_gpu=use_gpu)
    data.good.count()
    return time.perf_counter() - t, data.good_inputs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", default=str(HIRISE), help="a folder of image files (default: the HiRISE set)")
    p.add_argument("--limit", type=int, default=1000, help="use the first N files (0: all)")
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 128])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights")
    p.add_argument("--use-gpu", action="store_true", help="the backbone on the GPU (bf16), in both pipelines")
    p.add_argument("--batch-size", type=int, default=64,
                   help="images per block (Ray Data) and per decoded batch (plain loop); per "
                        "forward pass on a GPU")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scale", type=int, default=10, help="the memory run's repetition of the file list")
    p.add_argument("--memory-limit", type=int, default=200, help="files in the memory runs (x1 and x scale)")
    args = p.parse_args()
    root = Path(args.files)
    if not root.is_dir():
        print(f"skipping: {root} not found")
        return 0
    if args.use_gpu and not torch.cuda.is_available():
        p.error("--use-gpu: PyTorch sees no GPU")
    files = sorted(root.rglob("*.jpg"))
    files = files[: args.limit] if args.limit else files
    cpus = os.cpu_count() or 1
    torch.set_num_threads(cpus)
    init_ray(num_cpus=cpus, quiet=True)
    work = Path(tempfile.mkdtemp(prefix="deimos_features_"))
    once = manifest(files, 1, work)
    device = torch.cuda.get_device_name() if args.use_gpu else f"{cpus} CPUs"
    print(f"{len(files)} files from {root}, backbone {args.backbone}, {device}, median of {args.repeats}")

    def config(size: int) -> FeatureConfig:
        return FeatureConfig(backbone=args.backbone, weights=args.weights, image_size=size, normalize="none",
                             batch_size=args.batch_size)

    # Ray's own start-up keeps the CPUs busy for a while: let it settle before timing.
    ray_data_run(manifest(files[:64], 1, work), config(min(args.sizes)), work / "warm-up", args.use_gpu)
    rows, parts = [], []
    for size in args.sizes:
        extractor = FeatureExtractor(args.backbone, args.weights, size, use_gpu=args.use_gpu)
        plain, ray_s, cached, phases = [], [], [], []
        for r in range(args.repeats):
            t = time.perf_counter()
            phases.append(plain_loop(files, extractor, size, args.batch_size))
            plain.append(time.perf_counter() - t)
            cache = work / f"cache-{size}-{r}"
            seconds, n = ray_data_run(once, config(size), cache, args.use_gpu)
            ray_s.append(seconds)
            cached.append(ray_data_run(once, config(size), cache, args.use_gpu)[0])
            shutil.rmtree(cache)
            assert n == len(files), f"{n} of {len(files)} images extracted"
        ceiling = forward_ceiling(extractor, size, args.batch_size)
        del extractor
        mem = {}
        for copies in (1, args.scale):
            spec = manifest(files[: args.memory_limit], copies, work)
            with PeakMemory() as peak:
                ray_data_run(spec, config(size), work / f"mem-{size}-{copies}", args.use_gpu)
            mem[copies] = peak.peak / 2**30
        plain_rate, ray_rate = len(files) / statistics.median(plain), len(files) / statistics.median(ray_s)
        rows.append((size, plain_rate, ray_rate, ceiling, statistics.median(ray_s) / statistics.median(cached),
                     mem[1], mem[args.scale]))
        parts.append((size, {k: 1000 * statistics.median(ph[k] for ph in phases) / len(files) for k in phases[0]},
                      1000 / plain_rate))
    print(f"\n| size | plain loop img/s | Ray Data img/s | ratio | forward ceiling img/s | Ray Data / ceiling | "
          f"cached run speed-up | peak memory x1 ({args.memory_limit} files) | x{args.scale} | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size, plain_rate, ray_rate, ceiling, speedup, m1, m10 in rows:
        print(f"| {size} | {plain_rate:.1f} | {ray_rate:.1f} | {ray_rate / plain_rate:.2f} | {ceiling:.1f} | "
              f"{ray_rate / ceiling:.2f} | {speedup:.1f}x | {m1:.2f} GiB | {m10:.2f} GiB | {m10 / m1:.2f} |")
    print("\nWhere the plain loop's time goes, milliseconds an image (median of the runs):\n")
    print("| size | decode | copy to the device | forward | whole loop |")
    print("|---|---|---|---|---|")
    for size, ms, whole in parts:
        print(f"| {size} | {ms['decode']:.2f} | {ms['copy']:.2f} | {ms['forward']:.2f} | {whole:.2f} |")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
