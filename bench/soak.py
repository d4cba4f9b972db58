"""A long day on one Ray: many smoke-sized jobs of the three algorithms, sweeps and
assignments in a row in one driver, watching what could leak.

Every ``--every`` runs it prints the worker processes of its own Ray, the driver's
resident memory, the object store's use, and the files and bytes left under the
temporary folder (Ray's session folder, and the deimos_ray temporary paths that appeared
since the start), then, after Ray has shut down, what is left. Its last lines give the
growth from the first row after the start (the end of the warm-up) to the last run, and
``left: P Ray processes, T temporary paths``: this Ray's processes still alive after its
shutdown, and the soak's temporary paths still there. Target: flat after the warm-up,
nothing left after the last run.

    .venv/bin/python bench/soak.py                          # 30 jobs, 2 sweeps, 10 assignments (~40 min on 2 cores)
    .venv/bin/python bench/soak.py --jobs 9 --sweeps 1 --assignments 3 --every 3   # a short day
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import shutil
import tempfile
import time
from pathlib import Path

import psutil
import ray

from deimos_ray.algorithms import ALGORITHMS
from deimos_ray.config_io import override_all
from deimos_ray.job import run_training_job
from deimos_ray.new_images import assign_new
from deimos_ray.runtime import init_ray
from deimos_ray.sweep.driver import run_sweep

ALGORITHM_ORDER = ("dac", "dec", "desom")


def ray_workers() -> int:
    """Processes of this driver's own Ray that run tasks or actors (``ray::`` in their
    title): the local Ray it started is a child of the driver, so another Ray on the
    machine (a test suite's, a second job's) is not counted."""
    count = 0
    for proc in psutil.Process().children(recursive=True):
        try:
            if any(part.startswith("ray::") for part in proc.cmdline()):
                count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return count


def folder_size(root: Path) -> tuple[int, int]:
    """(files, bytes) under ``root`` (0, 0 when it does not exist)."""
    files = size = 0
    for path in root.rglob("*") if root.exists() else []:
        try:
            if path.is_file() and not path.is_symlink():
                files, size = files + 1, size + path.stat().st_size
        except OSError:
            continue
    return files, size


def own_temporary() -> list[Path]:
    """deimos_ray's own temporary folders and files (checkpoint staging, façade runs)."""
    return [p for p in Path(tempfile.gettempdir()).glob("deimos_ray*")]


def row(label: str, runs: int, t0: float, session: Path | None, before: set[Path]) -> dict[str, float]:
    """Print one row of the table and return its numbers."""
    used = float("nan")
    if ray.is_initialized():
        total = ray.cluster_resources().get("object_store_memory", 0.0)
        free = ray.available_resources().get("object_store_memory", total)
        used = (total - free) / 2**20
    files, size = folder_size(session) if session else (0, 0)
    own = sum(folder_size(p)[0] if p.is_dir() else 1 for p in set(own_temporary()) - before)
    numbers = {"workers": ray_workers(), "rss": psutil.Process().memory_info().rss / 2**20, "store": used}
    print(f"{label:<26}{runs:>5}{time.perf_counter() - t0:>8.0f}{numbers['workers']:>9}{numbers['rss']:>10.0f}"
          f"{'-' if used != used else f'{used:.0f}':>10}{files:>9}{size / 2**20:>9.1f}{own:>6}", flush=True)
    return numbers


def smoke_config(name: str, data: str, seed: int):
    algorithm = ALGORITHMS[name]
    settings = {**algorithm.smoke_settings(), "data.spec": data, "seed": seed, "scaling.num_workers": 1}
    if name == "desom":
        settings["model.n_clusters"] = 4
    return algorithm, override_all(algorithm.config_class(), settings)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=30)
    p.add_argument("--sweeps", type=int, default=2)
    p.add_argument("--assignments", type=int, default=10)
    p.add_argument("--every", type=int, default=10, help="print a row every N runs")
    p.add_argument("--data", default="digits")
    args = p.parse_args()

    before = set(own_temporary())  # a test suite's or an earlier run's are not the soak's
    work = Path(tempfile.mkdtemp(prefix="soak_"))
    t0 = time.perf_counter()
    init_ray(num_cpus=4, quiet=True)  # room for a sweep's trial beside its worker and Ray Data
    # Ray names no public accessor for its session folder; this is where its logs and spill go.
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    print(f"{'after':<26}{'runs':>5}{'s':>8}{'workers':>9}{'rss MiB':>10}{'store MiB':>10}"
          f"{'files':>9}{'MiB':>9}{'own':>6}")
    rows = [row("start", 0, t0, session, before)]
    runs, last = 0, {}
    for i in range(args.jobs):
        name = ALGORITHM_ORDER[i % len(ALGORITHM_ORDER)]
        algorithm, cfg = smoke_config(name, args.data, seed=i)
        out = work / f"job{i}"
        with contextlib.redirect_stdout(io.StringIO()):  # the table is what this prints
            run_training_job(algorithm, cfg, out, report=True)
        if name in last:  # keep one finished run per algorithm for the assignments
            shutil.rmtree(last[name])
        last[name] = out
        runs += 1
        gc.collect()
        if runs % args.every == 0:
            rows.append(row(f"{runs} jobs", runs, t0, session, before))
    for i in range(args.sweeps):
        algorithm, cfg = smoke_config("dec", args.data, seed=100 + i)
        out = work / f"sweep{i}"
        with contextlib.redirect_stdout(io.StringIO()):
            run_sweep(algorithm, cfg, {"model.n_clusters": [3, 4]}, out)
        shutil.rmtree(out)
        runs += 1
    if args.sweeps:
        rows.append(row(f"{args.sweeps} sweeps", runs, t0, session, before))
    for i in range(args.assignments):
        out = work / f"assign{i}"
        with contextlib.redirect_stdout(io.StringIO()):
            assign_new(last[ALGORITHM_ORDER[i % len(ALGORITHM_ORDER)]], args.data, out)
        shutil.rmtree(out)
        runs += 1
        if (i + 1) % args.every == 0:
            rows.append(row(f"{i + 1} assignments", runs, t0, session, before))
    rows.append(row("last run", runs, t0, session, before))
    ours = psutil.Process().children(recursive=True)  # this Ray: raylet, store, workers
    ray.shutdown()
    time.sleep(5)  # workers exit after the driver's shutdown
    shutil.rmtree(work)
    row("after ray.shutdown()", runs, t0, session, before)
    if len(rows) > 2:  # the first row after the start is the end of the warm-up
        warm, end = rows[1], rows[-1]
        print(f"\nafter warm-up: driver {end['rss'] - warm['rss']:+.0f} MiB, Ray workers "
              f"{end['workers'] - warm['workers']:+d}, object store {end['store'] - warm['store']:+.0f} MiB")
    alive = [p.pid for p in ours if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    left = [str(p) for p in set(own_temporary()) - before]
    print(f"Ray session folder {session}: {folder_size(session)[0]} files (Ray's logs, kept by design)")
    print(f"left: {len(alive)} Ray processes, {len(left)} temporary paths {left or ''}".rstrip())


if __name__ == "__main__":
    main()
