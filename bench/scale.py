"""Cost against collection size: the real jobs on N distinct images, N = 7,500, 25,000
and 75,000 by default, built from the shared HiRISE files.

Each HiRISE file contributes N / 7,495 variants (a random crop of 70 to 100 % of the
side, a right-angle rotation, a flip, a brightness change, seeded by the row), written as
JPEG with unique names under ``--cache`` (built once, reused), so no two rows are equal
and decoding is real work. Jobs (epochs or iterations capped, the same at every N, shown
in the table):

- ``dec``: DEC on ``--backbone efficientnet_lite0 --feature-size 128`` features;
- ``dac``: DAC on the pixels at 32 px;
- ``desom``: DESOM on the pixels at 32 px.

Per N and job: each stage's seconds (read and decode with the features, training,
assignment, scores, report), rows per second, the peak resident memory of the driver and
of the largest Ray Train worker (resident, and unique to it: USS leaves out the object
store's pages it maps), the peak use of the object store (``/dev/shm``), and each
stage's time ratio to the smallest N's scaled by the rows (1.00 = linear). The line
before the last gives the worst ratio of the largest worker's peak USS between the
largest and the smallest N; the last line is ``linear T M``: the worst job's end-to-end
ratio to linear and the worst ratio of the largest worker's peak resident memory.

    .venv/bin/python bench/scale.py                                  # 7,500 / 25,000 / 75,000 (hours on 2 cores)
    .venv/bin/python bench/scale.py --sizes 2500 7500 --jobs dac desom
    .venv/bin/python bench/scale.py --sizes 7500 75000 --results runs/scale.json   # resumable

With ``--results FILE`` each finished run is saved (under its job, size and settings) and
a later call with the same settings reuses it, so a long measurement can stop and go on.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
HIRISE = ROOT.parent / "shared" / "data" / "hirise-map-proj-v3" / "map-proj-v3"
JOBS = {
    "dec": ["jobs/train_dec.py", "--backbone", "efficientnet_lite0", "--feature-size", "128", "--k", "8",
            "--set", "model.pretrain_epochs=2", "--epochs", "2"],
    "dac": ["jobs/train_dac.py", "--image-size", "32", "--k", "8", "--epochs", "2"],
    "desom": ["jobs/train_desom.py", "--image-size", "32", "--k", "8", "--iterations", "300"],
}
CAPS = {"dec": "2 + 2 epochs", "dac": "2 epochs", "desom": "300 iterations"}
STAGES = ("data_s", "train_s", "assign_s", "score_s", "report_s")


def variant(args: tuple[Path, int, Path]) -> None:
    """Write row ``i``'s variant of ``source`` to ``target`` (seeded by ``i``)."""
    source, i, target = args
    rng = np.random.default_rng(i)
    with Image.open(source) as img:
        img = img.convert("L")
        side = min(img.size)
        crop = int(side * rng.uniform(0.7, 1.0))
        x, y = rng.integers(0, img.size[0] - crop + 1), rng.integers(0, img.size[1] - crop + 1)
        img = img.crop((x, y, x + crop, y + crop)).rotate(90 * int(rng.integers(4)))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
        img.save(target, quality=90)


def build_collection(n: int, cache: Path) -> Path:
    """The folder of ``n`` variants (built once: ``complete.json`` marks it done)."""
    folder = cache / f"hirise-{n}"
    if (folder / "complete.json").is_file():
        return folder
    files = sorted(HIRISE.glob("*.jpg"))
    if not files:
        sys.exit(f"no HiRISE files in {HIRISE}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    work = [(files[i % len(files)], i, folder / f"v{i // len(files):02d}-{files[i % len(files)].stem}.jpg")
            for i in range(n)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(variant, work, chunksize=256))
    (folder / "complete.json").write_text(json.dumps({"rows": n}))
    return folder


class PeakMemory:
    """Samples, every 0.5 s while a job runs, the resident memory of its driver, of its
    largest Ray Train worker, and the use of /dev/shm (Ray's object store); with
    ``gpu``, also the GPU's utilisation (``nvidia-smi``) with the time of each sample.

    A worker's resident memory (RSS) also counts the object-store pages it has mapped
    while reading blocks zero-copy, which grow with the store's traffic, not with what
    the worker holds; its unique memory (USS: pages no other process maps) is also
    sampled, to tell the two apart."""

    def __init__(self, pid: int, gpu: bool = False):
        self.driver = psutil.Process(pid)
        self.gpu = gpu
        self.gpu_samples: list[tuple[float, float]] = []
        self.peaks = {"driver_mb": 0.0, "worker_mb": 0.0, "worker_uss_mb": 0.0, "store_mb": 0.0}
        self.base_shm = shutil.disk_usage("/dev/shm").used
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.peaks["driver_mb"] = max(self.peaks["driver_mb"], self.driver.memory_info().rss / 2**20)
                for child in self.driver.children(recursive=True):
                    if "RayTrainWorker" in " ".join(child.cmdline()):
                        memory = child.memory_full_info()  # reads smaps: a few ms for one worker
                        self.peaks["worker_mb"] = max(self.peaks["worker_mb"], memory.rss / 2**20)
                        self.peaks["worker_uss_mb"] = max(self.peaks["worker_uss_mb"], memory.uss / 2**20)
            except psutil.Error:
                pass
            used = (shutil.disk_usage("/dev/shm").used - self.base_shm) / 2**20
            self.peaks["store_mb"] = max(self.peaks["store_mb"], used)
            if self.gpu:
                query = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                       capture_output=True, text=True)
                if query.returncode == 0 and query.stdout.strip():
                    busy = np.mean([float(v) for v in query.stdout.split()])
                    self.gpu_samples.append((time.perf_counter(), float(busy)))

    def done(self) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        return self.peaks


STAGE_LINE = re.compile(r"^\[\S+\] (.+) \((\d+(?:\.\d+)?) s\)$")  # deimos_ray.progress.stage_line


def gpu_shares(lines: list[tuple[float, str]], samples: list[tuple[float, float]]) -> dict[str, float]:
    """{stage: mean GPU utilisation % over its window}: each stage line printed at time
    t after s seconds of work covers [t - s, t]."""
    shares = {}
    for t, line in lines:
        match = STAGE_LINE.match(line.strip())
        if match:
            start = t - float(match.group(2))
            inside = [busy for when, busy in samples if start <= when <= t]
            shares[match.group(1)] = float(np.mean(inside)) if inside else float("nan")
    return shares


def run_job(job: str, data: Path, out: Path, settings: list[str], gpu: bool = False) -> dict:
    """Run ``job`` on ``data`` into ``out`` with the extra ``--set`` ``settings``: wall
    time, stage times, peaks, accounting (and with ``gpu`` each stage's GPU use)."""
    t0 = time.perf_counter()
    extra = [a for s in settings for a in ("--set", s)]
    process = subprocess.Popen([sys.executable, *JOBS[job], *extra, "--data", str(data), "--out", str(out)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = PeakMemory(process.pid, gpu)
    lines = [(time.perf_counter(), line) for line in process.stdout]  # timed, for the GPU's shares
    process.wait()
    output = "".join(line for _, line in lines)
    wall = time.perf_counter() - t0
    peaks = memory.done()
    if process.returncode != 0:
        sys.exit(f"{job} on {data} failed:\n{output[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    timings = metrics["timings_s"]
    stages = {name: timings.get(name, 0.0) for name in STAGES[:-1]}
    stages["report_s"] = max(0.0, wall - sum(stages.values()))  # start-up, report and the rest
    return {"wall_s": wall, **stages, **peaks, "gpu": gpu_shares(lines, memory.gpu_samples) if gpu else {},
            "accounted": metrics["accounting"]["inputs"]
            == metrics["accounting"]["assigned"] + metrics["accounting"]["rejected"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[7500, 25000, 75000])
    p.add_argument("--jobs", nargs="+", choices=sorted(JOBS), default=sorted(JOBS))
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "deimos_ray_scale")
    p.add_argument("--gpu", action="store_true", help="also sample the GPU's utilisation and print "
                   "each stage's mean (give --set scaling.use_gpu=true for the jobs to use it)")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for every job, e.g. scaling.in_memory_mb=0 (stream the rows at every N)")
    p.add_argument("--results", type=Path, help="save each finished run here and reuse the runs saved "
                   "with the same job, size and settings")
    args = p.parse_args()
    sizes = sorted(args.sizes)
    saved = json.loads(args.results.read_text()) if args.results and args.results.is_file() else {}
    results: dict[tuple[str, int], dict] = {}
    for n in sizes:
        for job in args.jobs:
            key = f"{job} {n} {' '.join(args.settings)}{' gpu' if args.gpu else ''}"
            if key not in saved:
                data = build_collection(n, args.cache)
                with tempfile.TemporaryDirectory() as tmp:
                    saved[key] = run_job(job, data, Path(tmp) / "run", args.settings, args.gpu)
                if args.results:
                    args.results.parent.mkdir(parents=True, exist_ok=True)
                    args.results.write_text(json.dumps(saved, indent=1))
            results[job, n] = saved[key]
            print(f"[scale] {job} at {n}: {results[job, n]['wall_s']:.0f} s", flush=True)

    head = (f"{'job':<7}{'rows':>7}{'cap':>16}{'read+feat':>10}{'train':>8}{'assign':>8}{'scores':>8}{'rest':>7}"
            f"{'total':>8}{'rows/s':>8}{'driver MB':>10}{'worker MB':>10}{'USS MB':>8}{'store MB':>9}  ratios to linear")
    print("\n" + head if not args.settings else f"\nsettings: {' '.join(args.settings)}\n{head}")
    worst_time, worst_memory, worst_uss = 0.0, 0.0, 0.0
    for job in args.jobs:
        base_n, base = sizes[0], results[job, sizes[0]]
        for n in sizes:
            r = results[job, n]
            scale = n / base_n
            ratios = {s: r[s] / (base[s] * scale) if base[s] > 0 else float("nan") for s in (*STAGES, "wall_s")}
            print(f"{job:<7}{n:>7}{CAPS[job]:>16}{r['data_s']:>10.0f}{r['train_s']:>8.0f}{r['assign_s']:>8.0f}"
                  f"{r['score_s']:>8.0f}{r['report_s']:>7.0f}{r['wall_s']:>8.0f}{n / r['wall_s']:>8.0f}"
                  f"{r['driver_mb']:>10.0f}{r['worker_mb']:>10.0f}{r.get('worker_uss_mb', float('nan')):>8.0f}"
                  f"{r['store_mb']:>9.0f}  "
                  + " ".join(f"{s[:-2]} {v:.2f}" for s, v in ratios.items())
                  + ("" if r["accounted"] else "  ROWS NOT ACCOUNTED"))
        worst_time = max(worst_time, results[job, sizes[-1]]["wall_s"] / (base["wall_s"] * sizes[-1] / base_n))
        if base["worker_mb"] > 0:
            worst_memory = max(worst_memory, results[job, sizes[-1]]["worker_mb"] / base["worker_mb"])
        if base.get("worker_uss_mb", 0) > 0:
            worst_uss = max(worst_uss, results[job, sizes[-1]]["worker_uss_mb"] / base["worker_uss_mb"])
    if args.gpu:
        print("\nGPU utilisation, mean % over each stage (nvidia-smi every 0.5 s):")
        for (job, n), r in results.items():
            print(f"{job:<7}{n:>7}  " + "  ".join(f"{stage}: {busy:.0f}" for stage, busy in r["gpu"].items()))
    if worst_uss:
        print(f"worst worker USS ratio {worst_uss:.2f} (its own pages, without the mapped object store)")
    print(f"linear {worst_time:.2f} {worst_memory:.2f}")


if __name__ == "__main__":
    main()
