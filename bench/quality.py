"""Clustering quality of DEC / IDEC beside k-means, median over seeds.

    python bench/quality.py                         # digits, and USPS when present
    python bench/quality.py --datasets digits --seeds 0 1 2 --methods dec idec

Each (dataset, method, seed) is one full run of the DEC job pipeline (Ray Data in, Ray
Train training, Parquet out) in its own run directory; the k-means baseline is fitted on
the same preprocessed pixels in the same run. Prints a Markdown table of median
accuracy / NMI / ARI over the seeds, with the range, and the median run time (the
whole job: data, training, assignment, scores). With ``--workdir``, runs finished
earlier with the same config are read back instead of rerun.

Published figures on USPS (ACC / NMI): k-means .67 / .63 (IDEC paper), DEC .764 / .787
(DEC-DA paper's rerun of DEC), IDEC .761 / .785 (IDEC paper).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deimos_ray.config import from_dict, load_yaml, override  # noqa: E402
from deimos_ray.pipeline import DECJobConfig, run_dec_job  # noqa: E402
from deimos_ray.runtime import init_ray  # noqa: E402

USPS = ROOT.parent / "shared" / "data" / "usps.npz"

# Per-dataset settings from the reference implementations (update interval 30 on USPS).
DATASETS = {
    "digits": {"data.spec": "digits"},
    "usps": {"data.spec": str(USPS), "model.update_interval": 30},
}
METHODS = {
    "dec": {"model.variant": "dec"},
    "idec": {"model.variant": "idec"},
    "dec-layerwise": {"model.variant": "dec", "model.pretrain": "layerwise"},
}
KEYS = ("accuracy", "nmi", "ari")


def run_one(dataset: str, method: str, seed: int, args, workdir: Path) -> dict:
    """One full run, or the finished run already in ``workdir`` with the same config."""
    cfg = DECJobConfig()
    settings = {**DATASETS[dataset], **METHODS[method], "seed": seed,
                "scaling.num_workers": args.num_workers, "model.pretrain_epochs": args.pretrain_epochs}
    for key, value in settings.items():
        cfg = override(cfg, key, value)
    out = workdir / f"{dataset}-{method}-{seed}"
    done = out / "metrics.json"
    if done.exists() and from_dict(DECJobConfig, load_yaml(out / "config.yaml")) == cfg:
        metrics = json.loads(done.read_text())
        print(f"reusing the finished run in {out}")
    else:
        metrics = run_dec_job(cfg, out, job="bench_quality")
    return {"scores": metrics["scores"], "seconds": metrics["timings_s"]["total_s"]}


def median_cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["digits", "usps"], choices=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=["dec", "idec", "dec-layerwise"], choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--pretrain-epochs", type=int, default=100)
    p.add_argument("--num-workers", type=int, default=0,
                   help="Ray Train workers per run (0: in the driver, least start-up time)")
    p.add_argument("--workdir", help="keep run directories here (default: a temporary folder); "
                   "finished runs found there with the same config are reused, not rerun")
    args = p.parse_args()

    datasets = [d for d in args.datasets if d != "usps" or USPS.exists()]
    if "usps" in args.datasets and "usps" not in datasets:
        print(f"skipping usps: {USPS} not found")
    init_ray(quiet=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="deimos_bench_"))
    rows = []
    for dataset in datasets:
        kmeans: dict[str, list[float]] = {k: [] for k in KEYS}
        for method in args.methods:
            runs = [run_one(dataset, method, s, args, workdir) for s in args.seeds]
            rows.append((dataset, method, {k: [r["scores"][method.split("-")[0]][k] for r in runs] for k in KEYS},
                         statistics.median(r["seconds"] for r in runs)))
            for r in runs:
                for k in KEYS:
                    kmeans[k].append(r["scores"]["kmeans"][k])
        # k-means is refitted beside every run; its seeds repeat across methods.
        rows.append((dataset, "k-means (pixels)", kmeans, None))

    print(f"\nmedian over seeds {args.seeds} (range in brackets); pretrain epochs {args.pretrain_epochs}\n")
    print("| dataset | method | accuracy | NMI | ARI | median run time |")
    print("|---|---|---|---|---|---|")
    for dataset, method, scores, seconds in rows:
        cells = " | ".join(median_cell(scores[k]) for k in KEYS)
        print(f"| {dataset} | {method} | {cells} | {'-' if seconds is None else f'{seconds:.0f} s'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
