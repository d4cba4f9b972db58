"""Choosing k without labels: which k each label-free score picks in a sweep, and how well
each score ranks the trials by their NMI.

    python bench/tune_k.py                                   # DEC on the digits, k 4..16
    python bench/tune_k.py --datasets digits usps hirise --algorithms dec dac --k 4 6 8 10 12 14 16
    python bench/tune_k.py --datasets hirise --algorithms dec --backbone efficientnet_lite0
    python bench/tune_k.py --datasets hirise --backbone efficientnet_lite0 --set features.views=rot4
    python bench/tune_k.py --datasets gz2-spirals --algorithms dac --backbone efficientnet_lite0 --k 2 3 4 6 8 --set features.views=dihedral

Each (dataset, algorithm) is one sweep (:func:`deimos_ray.sweep.driver.run_sweep`, the code
``jobs/tune_sweep.py`` runs) over ``--k``, one trial per k. For three ways of choosing,
the table gives the k chosen, the Spearman rank correlation between the score and the
trials' NMI (sign turned so that higher is better for every score), and the chosen
trial's NMI against the best trial's:

- ``objective``: the sweep's stated objective (silhouette in one reference space shared
  by every trial, less the share of collapsed clusters);
- ``own silhouette``: each model's silhouette in its own embedding (not comparable
  across trials);
- ``Davies-Bouldin``: alone, in the reference space (lower is better).

The sweep's wall time is printed beside the sum of its trials' own training times (each
a full job run: Ray Train start-up, training, assignment, scores), their ratio being
what the sweep adds over running the same trainings one after another.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from quality import DATASETS as QUALITY_DATASETS  # noqa: E402

from deimos_ray.algorithms import get_algorithm  # noqa: E402
from deimos_ray.config_io import override_all, parse_override  # noqa: E402
from deimos_ray.sweep.driver import run_sweep  # noqa: E402

# The quality benchmark's labelled sets with its settings (its constructed uneven set is
# written only by that benchmark).
DATASETS = {name: settings for name, settings in QUALITY_DATASETS.items() if name != "imbalanced"}
# Shorter trainings than the jobs' defaults, so a sweep of seven trials fits a CPU session.
PER_ALGORITHM = {
    "dec": {"model.pretrain_epochs": 50},
    "dac": {"model.epochs": 30},
    "desom": {"model.iterations": 2000, "model.map_size": [8, 8]},
}
CHOOSERS = {"objective": ("objective", 1), "own silhouette": ("silhouette_embedding", 1),
            "Davies-Bouldin": ("davies_bouldin", -1)}


def sweep_config(dataset: str, algorithm: str, args):
    """The job config every trial of one sweep starts from."""
    settings = {**DATASETS[dataset], **PER_ALGORITHM[algorithm], "seed": args.seed,
                "scaling.num_workers": 1}
    if args.backbone != "none":
        settings.pop("data.image_size", None)
        settings.update({"features.backbone": args.backbone, "features.cache": str(args.workdir / "features")})
    settings.update(dict(parse_override(text) for text in args.set))
    return override_all(get_algorithm(algorithm).config_class(), settings)


def summarise(trials) -> list[tuple[str, int, float, float]]:
    """Per chooser: (name, chosen k, Spearman with NMI, chosen NMI)."""
    out = []
    for name, (column, sign) in CHOOSERS.items():
        scores = sign * trials[column].astype(float).to_numpy()
        chosen = trials.iloc[int(np.nanargmax(scores))]
        rho = spearmanr(scores, trials["label_nmi"].to_numpy(), nan_policy="omit").statistic
        out.append((name, int(chosen["k"]), float(rho), float(chosen["label_nmi"])))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=["digits"])
    p.add_argument("--algorithms", nargs="+", choices=list(PER_ALGORITHM), default=["dec"])
    p.add_argument("--k", type=int, nargs="+", default=[4, 6, 8, 10, 12, 14, 16])
    p.add_argument("--backbone", default="none", help="none (the pixels) or a backbone name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of every trial, after the benchmark's own (e.g. features.views=rot4)")
    p.add_argument("--workdir", type=Path, help="keep the sweeps here (default: a temporary folder); "
                   "a finished sweep found there is restored, not rerun")
    args = p.parse_args()
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="tune_k-"))).resolve()

    rows, timings = [], []
    for dataset in args.datasets:
        for algorithm in args.algorithms:
            cfg = sweep_config(dataset, algorithm, args)
            tag = f"{dataset}-{algorithm}" + ("" if args.backbone == "none" else f"-{args.backbone}")
            tag += "".join(f"-{text.replace('=', '_').replace('/', '_')}" for text in args.set)
            trials = run_sweep(get_algorithm(algorithm), cfg, {"model.n_clusters": args.k}, args.workdir / tag)
            best_nmi = float(trials["label_nmi"].max())
            for name, k, rho, nmi in summarise(trials):
                rows.append((tag, name, k, rho, nmi, best_nmi))
            timings.append((tag, len(trials), trials.attrs["sweep_s"], float(trials["train_s"].sum())))

    print(f"\nk chosen by each label-free score, k in {args.k}, seed {args.seed}\n")
    print("| sweep | chosen by | k | Spearman with NMI | NMI of the chosen | best trial's NMI |")
    print("|---|---|---|---|---|---|")
    for tag, name, k, rho, nmi, best in rows:
        print(f"| {tag} | {name} | {k} | {rho:.2f} | {nmi:.3f} | {best:.3f} |")
    print("\n| sweep | trials | sweep wall time (s) | sum of the trials' trainings (s) | ratio |")
    print("|---|---|---|---|---|")
    for tag, n, sweep_s, train_s in timings:
        print(f"| {tag} | {n} | {sweep_s:.0f} | {train_s:.0f} | {sweep_s / train_s:.2f} |")


if __name__ == "__main__":
    main()
