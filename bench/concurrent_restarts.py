"""DAC's restarts one after another against several at a time, same seeds, side by side.

    python bench/concurrent_restarts.py                      # digits, 4 restarts, 2 at once
    python bench/concurrent_restarts.py --datasets usps --restarts 8 --concurrent 8 --use-gpu

For each seed the DAC job (``bench/quality.py``'s method, ``dac-reference`` by default)
runs twice with ``restarts.count`` R: with ``restarts.concurrent`` 1 and then C,
each Ray Train run with ``--num-workers`` workers (default 1). Prints per seed the
training time (the restarts' Ray Train runs) and the whole job's time of both, the
speed-up of training, whether every restart ended with the same final pair loss, and the
share of rows the two runs put in the same cluster; then the medians. Concurrency should
change the wall time only: the same restarts train from the same seeds.

One Ray instance serves every run, with CPUs for C trainings' workers plus one for Ray
Data. Runs are never read back: each is trained again (timings are the point).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import DATASETS, METHODS, build_config  # noqa: E402

from deimos_ray.algorithms import get_algorithm  # noqa: E402
from deimos_ray.config_io import override_all  # noqa: E402
from deimos_ray.job import run_training_job  # noqa: E402
from deimos_ray.runtime import init_ray, local_cpus_needed  # noqa: E402


def run(dataset: str, method: str, seed: int, concurrent: int, args: argparse.Namespace, out: Path) -> dict:
    """One whole DAC job with ``concurrent`` restarts at a time, trained from scratch."""
    cfg = build_config(dataset, method, seed, args)
    cfg = override_all(cfg, {"restarts.count": args.restarts, "restarts.concurrent": concurrent})
    shutil.rmtree(out, ignore_errors=True)
    metrics = run_training_job(get_algorithm("dac"), cfg, out)
    clusters = pq.read_table(out / "assignments", columns=["id", "cluster"]).to_pandas()
    return {"train_s": metrics["timings_s"]["train_s"], "total_s": metrics["timings_s"]["total_s"],
            "losses": [r["objective"] for r in metrics["restarts"]], "clusters": clusters}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["digits"], choices=list(DATASETS))
    p.add_argument("--method", default="dac-reference", choices=[m for m, (a, _) in METHODS.items() if a == "dac"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--concurrent", type=int, default=2, help="restarts at a time in the second run")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers per restart (>= 1)")
    p.add_argument("--torch-threads", type=int, default=None, help="PyTorch threads per worker (default 1)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker")
    p.add_argument("--workdir", help="keep the run directories here (default: a temporary folder)")
    args = p.parse_args()
    if args.num_workers < 1 or args.concurrent < 2 or args.restarts < args.concurrent:
        p.error("needs --num-workers >= 1 and 2 <= --concurrent <= --restarts")
    # What bench/quality.py's build_config reads beside the DAC settings.
    args.pretrain_epochs, args.desom_iterations, args.overrides = 100, 2000, {}

    init_ray(num_cpus=local_cpus_needed(args.num_workers * args.concurrent, 1.0), quiet=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-concurrent-"))
    rows = []
    for dataset in args.datasets:
        for seed in args.seeds:
            one_by_one = run(dataset, args.method, seed, 1, args, workdir / f"{dataset}-{seed}-one-by-one")
            at_once = run(dataset, args.method, seed, args.concurrent, args, workdir / f"{dataset}-{seed}-at-once")
            a, b = one_by_one["clusters"], at_once["clusters"]
            if not (a["id"].to_numpy() == b["id"].to_numpy()).all():
                raise RuntimeError(f"{dataset} seed {seed}: the two runs wrote their rows in different orders")
            rows.append({
                "dataset": dataset, "seed": seed,
                "train": (one_by_one["train_s"], at_once["train_s"]),
                "total": (one_by_one["total_s"], at_once["total_s"]),
                "speedup": one_by_one["train_s"] / at_once["train_s"],
                "same_losses": one_by_one["losses"] == at_once["losses"],
                "same_cluster": float((a["cluster"].to_numpy() == b["cluster"].to_numpy()).mean()),
            })
            r = rows[-1]
            print(f"{dataset} seed {seed}: training {r['train'][0]:.0f} s one by one, {r['train'][1]:.0f} s "
                  f"{args.concurrent} at once ({r['speedup']:.2f}x)", flush=True)

    print(f"\nDAC {args.method}, {args.restarts} restarts, {args.num_workers} worker(s) each"
          + (", GPU" if args.use_gpu else ", CPU") + f"; one by one against {args.concurrent} at once\n")
    print("| dataset | seed | training, one by one | training, at once | speed-up | whole job, one by one "
          "| whole job, at once | same final pair losses | rows in the same cluster |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['seed']} | {r['train'][0]:.0f} s | {r['train'][1]:.0f} s | {r['speedup']:.2f}x "
              f"| {r['total'][0]:.0f} s | {r['total'][1]:.0f} s | {'yes' if r['same_losses'] else 'no'} "
              f"| {r['same_cluster']:.3f} |")
    for dataset in args.datasets:
        mine = [r for r in rows if r["dataset"] == dataset]
        med = {key: [statistics.median(r[key][i] for r in mine) for i in (0, 1)] for key in ("train", "total")}
        print(f"| {dataset} | median | {med['train'][0]:.0f} s | {med['train'][1]:.0f} s "
              f"| {statistics.median(r['speedup'] for r in mine):.2f}x | {med['total'][0]:.0f} s "
              f"| {med['total'][1]:.0f} s | {sum(r['same_losses'] for r in mine)} of {len(mine)} "
              f"| {statistics.median(r['same_cluster'] for r in mine):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
