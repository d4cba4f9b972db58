"""Clustering quality of DAC, DEC / IDEC and DESOM beside k-means, median over seeds.

    python bench/quality.py                         # DAC, DEC, IDEC on the digits, and USPS when present
    python bench/quality.py --datasets digits --seeds 0 1 2 --methods dec idec
    python bench/quality.py --datasets digits usps hirise --methods dac-reference
    python bench/quality.py --datasets digits usps --methods desom-8x8 desom-8x8-restarts8
    python bench/quality.py --datasets usps --methods dac-reference --num-workers 1 --use-gpu
    python bench/quality.py --datasets hirise --methods dac-reference --set data.image_size=64
    python bench/quality.py --datasets hirise --methods dac-reference --set model.labeled_fraction=0.1
    python bench/quality.py --datasets hirise gz2-spirals --methods dac dec idec desom-8x8 \
        --backbones none efficientnet_lite0 --workdir runs/bench

Each (dataset, method, seed) is one full run of the job spine (Ray Data in, Ray Train
training, Parquet out) in its own run directory; the k-means baseline is fitted on the
same preprocessed pixels in the same run, and so are Ward's agglomerative clustering and
UMAP then Ward (``UMAP-Ward``; not on an input already UMAP's, ``--set
features.reduce=umap``, where Ward's row is UMAP then Ward). With
``--backbones``, every method also runs on the features of each backbone named
(``none`` is the pixels), the baselines beside it on the same features; the features
are computed once per data set and read from the cache in the workdir by every other
run. Prints a Markdown table of median accuracy /
NMI / ARI / purity (and for DESOM the quantisation and topographic errors, QE and TE)
over the seeds, with the range, and the median run time (the whole job: data, training,
assignment, scores). With ``--workdir``, runs finished earlier with the same config are
read back instead of rerun. ``--set KEY=VALUE`` changes any config field of every run,
after the dataset's and the method's settings (the job scripts' ``--set``), except
those a method is named for (``dec-kmeans-start``'s ``model.epochs=0``). With DAC's
labelled pairs (``--set model.labeled_fraction=0.1``) the external scores of the model
and of k-means are over the labelled rows whose label training did not see.

Methods: ``dac`` is the paper's algorithm (the job's default), ``dac-reference`` the
reference code's training (``--recipe reference``), ``dac-reference-restarts4`` four
trainings of it combined by consensus, ``dac-finetune`` the paper's algorithm training the
backbone under its head (``--fine-tune-backbone``; with ``--backbones`` only); ``dec``
and ``idec``, ``dec-start`` and ``idec-start`` with the target's size prior taken from
the k-means start (``model.size_prior=start``), ``dec-kmeans-start`` DEC's own start
(``model.epochs=0``: k-means on the pretrained embedding); ``desom-8x8`` the paper's 8x8
map grouped into as many clusters as the data set has classes, and
``desom-8x8-restarts8`` eight of them voting. ``imbalanced`` is a constructed uneven set
(:func:`write_imbalanced`: groups of 600, 60, 50, 40 and 30 rows in 64 dimensions). ``hirise`` is the 1,096 original HiRISE
landmarks (augmented copies dropped, 8 classes, of which "other" is most) at 32x32; DAC
there adds rotations and flips to its views, since orbital images have no preferred
orientation. ``gz2-spirals`` is the 2,000 Galaxy Zoo 2 colour cutouts, spiral or not, at
32x32 RGB on pixels.

Published figures on USPS (ACC / NMI): k-means .67 / .63 (IDEC paper), DEC .764 / .787
(DEC-DA paper's rerun of DEC), IDEC .761 / .785 (IDEC paper). DAC on MNIST (paper):
ACC .9775, NMI .9351.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deimos_ray.algorithms import get_algorithm  # noqa: E402
from deimos_ray.config_io import load_yaml, override_all, parse_override, stored_settings, to_dict  # noqa: E402
from deimos_ray.job import run_training_job  # noqa: E402
from deimos_ray.metrics import HELDOUT_PREFIX  # noqa: E402
from deimos_ray.models.dac import REFERENCE_RECIPE  # noqa: E402
from deimos_ray.runtime import init_ray, local_cpus_needed  # noqa: E402

USPS = ROOT.parent / "shared" / "data" / "usps.npz"
HIRISE = ROOT.parent / "shared" / "data" / "hirise-map-proj-v3"
GZ2 = ROOT.parent / "shared" / "data" / "gz2-spirals"
IMBALANCED = Path(tempfile.gettempdir()) / "deimos_ray_imbalanced.npz"
IMBALANCED_SIZES = (600, 60, 50, 40, 30)  # one large group and four small ones


def write_imbalanced(path: Path = IMBALANCED, seed: int = 0, dims: int = 64) -> Path:
    """The constructed uneven set: Gaussian groups of ``IMBALANCED_SIZES`` rows in
    ``dims`` dimensions (centres N(0, 1.2^2), unit spread), scaled to [0, 1] as a whole
    and stored as 8x8 images with their labels (seeded: the same file every time)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (len(IMBALANCED_SIZES), dims)) * 1.2
    x = np.concatenate([c + rng.normal(0, 1.0, (n, dims)) for c, n in zip(centres, IMBALANCED_SIZES, strict=True)])
    labels = np.concatenate([[i] * n for i, n in enumerate(IMBALANCED_SIZES)])
    x = (x - x.min()) / (x.max() - x.min())
    side = int(np.sqrt(dims))
    np.savez(path, images=x.reshape(-1, side, side).astype(np.float32), labels=labels)
    return path


# Per-dataset settings; DEC's update interval of 30 on USPS is its reference code's.
DATASETS = {
    "digits": {"data.spec": "digits"},
    "usps": {"data.spec": str(USPS)},
    "hirise": {"data.spec": str(HIRISE), "data.originals_only": True, "data.image_size": 32},
    "gz2-spirals": {"data.spec": str(GZ2), "data.labels_from_folders": True, "data.channels": 3,
                    "data.image_size": 32},
    "imbalanced": {"data.spec": str(IMBALANCED)},
}
CLASSES = {"digits": 10, "usps": 10, "hirise": 8, "gz2-spirals": 2, "imbalanced": len(IMBALANCED_SIZES)}
PER_ALGORITHM = {
    ("dec", "usps"): {"model.update_interval": 30},
    ("dac", "hirise"): {"model.augmentation.rotate90": True, "model.augmentation.hflip": True,
                        "model.augmentation.vflip": True},
    ("dac", "gz2-spirals"): {"model.augmentation.rotate90": True, "model.augmentation.hflip": True,
                             "model.augmentation.vflip": True},
}
# method -> (algorithm, settings); "{k}" is the dataset's number of classes.
METHODS = {
    "dac": ("dac", {}),
    "dac-reference": ("dac", REFERENCE_RECIPE),
    "dac-reference-restarts4": ("dac", {**REFERENCE_RECIPE, "restarts.count": 4}),
    "dac-finetune": ("dac", {"model.fine_tune_backbone": True}),
    "dec": ("dec", {"model.variant": "dec"}),
    "idec": ("dec", {"model.variant": "idec"}),
    "dec-start": ("dec", {"model.variant": "dec", "model.size_prior": "start"}),
    "idec-start": ("dec", {"model.variant": "idec", "model.size_prior": "start"}),
    "dec-kmeans-start": ("dec", {"model.variant": "dec", "model.epochs": 0}),  # DEC's own start (AE+k-means)
    "desom-8x8": ("desom", {"model.map_size": (8, 8), "model.n_clusters": "{k}"}),
    "desom-8x8-restarts8": ("desom", {"model.map_size": (8, 8), "model.n_clusters": "{k}", "restarts.count": 8}),
}
# The settings a method is named for, which --set leaves alone (a --set model.epochs=100
# for the DEC rows must not turn dec-kmeans-start into DEC); --set may change the rest
# of a method's settings (a recipe's thresholds).
NAMED_BY = {
    "dac-reference-restarts4": ("restarts.count",),
    "dac-finetune": ("model.fine_tune_backbone",),
    "dec": ("model.variant",),
    "idec": ("model.variant",),
    "dec-start": ("model.variant", "model.size_prior"),
    "idec-start": ("model.variant", "model.size_prior"),
    "dec-kmeans-start": ("model.variant", "model.epochs"),
    "desom-8x8-restarts8": ("restarts.count",),
}
KEYS = ("accuracy", "nmi", "ari", "purity")
BASELINES = {"kmeans": "k-means", "ward": "Ward", "umap_ward": "UMAP-Ward"}
SOM_KEYS = ("quantization_error", "topographic_error")  # DESOM only


def build_config(dataset: str, method: str, seed: int, args, backbone: str = "none"):
    """The job config of one run: the dataset's, the method's and the command line's
    settings, ``--set`` after them except for the settings the method is named for
    (``NAMED_BY``; said in one line); a bad key or value raises ``ValueError``. With a
    ``backbone`` the images are decoded at its size and its features, cached in
    ``--workdir``, are the input."""
    algorithm, method_settings = METHODS[method]
    cfg = get_algorithm(algorithm).config_class()
    k = CLASSES[dataset]
    settings = {**DATASETS[dataset], "model.n_clusters": k, **PER_ALGORITHM.get((algorithm, dataset), {}),
                "seed": seed, "scaling.num_workers": args.num_workers, "scaling.use_gpu": args.use_gpu,
                "scaling.torch_threads": args.torch_threads}
    if algorithm == "desom":
        settings.pop("model.n_clusters")
    for key, value in method_settings.items():
        settings[key] = _fill(value, k)
    if algorithm == "dec":
        settings["model.pretrain_epochs"] = args.pretrain_epochs
    if algorithm == "desom":
        settings["model.iterations"] = args.desom_iterations
    if backbone != "none":
        settings.pop("data.image_size", None)
        settings.update({"features.backbone": backbone, "features.cache": str(args.feature_cache)})
    settings.update(args.overrides)
    for key in NAMED_BY.get(method, ()):
        value = method_settings[key]
        if key in args.overrides and args.overrides[key] != _fill(value, k):
            print(f"[quality] {method} keeps its own {key}={_fill(value, k)} (--set {key}={args.overrides[key]} "
                  "applies to the other methods)")
        settings[key] = _fill(value, k)
    return override_all(cfg, settings)


def run_one(dataset: str, method: str, seed: int, args, workdir: Path, backbone: str = "none") -> dict:
    """One full run, or the finished run already in ``workdir`` with the same config."""
    algorithm = get_algorithm(METHODS[method][0])
    cfg = build_config(dataset, method, seed, args, backbone)
    out = workdir / (f"{dataset}-{method}-{seed}" + ("" if backbone == "none" else f"-{backbone}"))
    done = out / "metrics.json"
    if done.exists() and same_config(out / "config.yaml", cfg):
        metrics = json.loads(done.read_text())
        print(f"reusing the finished run in {out}")
    else:
        metrics = run_training_job(algorithm, cfg, out)
    model_name = next(name for name in metrics["scores"] if name not in BASELINES)
    return {"scores": metrics["scores"], "model": model_name, "som": metrics.get("som"),
            "seconds": metrics["timings_s"]["total_s"], "seed": seed,
            "input": metrics.get("representation", "pixels")}


def same_config(path: Path, cfg) -> bool:
    """Whether the run whose config is at ``path`` was made with ``cfg``; a setting added
    since the run counts as its default, as on resume (``stored_settings``)."""
    try:
        return stored_settings(type(cfg), load_yaml(path)) == to_dict(cfg)
    except (OSError, ValueError):  # no config, or a setting that no longer exists
        return False


def _fill(value, k: int):
    """Replace "{k}" (also inside tuples) with the number of classes."""
    if isinstance(value, tuple):
        return tuple(_fill(v, k) for v in value)
    return k if value == "{k}" else value


def median_cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


# --per-run: each run's label-free scores beside its accuracy, to see which of them
# (if any) could choose among seeds or restarts without labels.
LABEL_FREE = ("silhouette", "davies_bouldin", "silhouette_embedding")


def saw_labels(scores: dict[str, float]) -> bool:
    """Whether the run's training saw some labels (DAC's ``model.labeled_fraction``): its
    scores then include held-out ones."""
    return HELDOUT_PREFIX + "accuracy" in scores


def scored(r: dict, which: str) -> dict[str, float]:
    """The external scores of one run's model (``which="model"``) or a baseline
    (``kmeans``, ``ward``), over the held-out rows when training saw some labels (so the
    tables stay blind), else over every row; the label-free ones as they are."""
    scores = r["scores"][r["model"] if which == "model" else which]
    prefix = HELDOUT_PREFIX if saw_labels(scores) else ""
    return {**scores, **{k: scores[prefix + k] for k in KEYS}}


def print_per_run(per_run: list[tuple[str, str, dict]]) -> None:
    # DESOM's map errors, to see whether either could choose among seeds.
    with_som = any(r["som"] for _, _, r in per_run)
    extra = ["QE", "TE"] if with_som else []
    heading = ["dataset", "method", "seed", "accuracy", "NMI", "ARI", *extra, *LABEL_FREE]
    print("\n| " + " | ".join(heading) + " |")
    print("|" + "---|" * len(heading))
    for dataset, method, r in per_run:
        scores = scored(r, "model")
        cells = [f"{scores[k]:.3f}" for k in ("accuracy", "nmi", "ari")]
        if with_som:
            cells += [f"{r['som'][k]:.3f}" if r["som"] else "-" for k in SOM_KEYS]
        cells += [f"{scores[k]:.3f}" if k in scores else "-" for k in LABEL_FREE]
        print(f"| {dataset} | {method} | {r['seed']} | " + " | ".join(cells) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["digits", "usps"], choices=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=["dac", "dec", "idec"], choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--backbones", nargs="+", default=["none"], metavar="NAME",
                   help="representations every method runs on: none (the pixels) and/or a "
                        "backbone such as efficientnet_lite0 (features cached in the workdir)")
    p.add_argument("--pretrain-epochs", type=int, default=100, help="DEC / IDEC pretraining")
    p.add_argument("--desom-iterations", type=int, default=2000,
                   help="DESOM training steps (the paper's: 10,000)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="Ray Train workers per run (0: in the driver, least start-up time)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="PyTorch CPU threads per training process (default: 1, as in a worker)")
    p.add_argument("--use-gpu", action="store_true",
                   help="one GPU per worker (needs --num-workers 1 or more)")
    p.add_argument("--per-run", action="store_true",
                   help="also print every run's scores, label-free ones and DESOM's map errors included")
    p.add_argument("--workdir", help="keep run directories here (default: a temporary folder); "
                   "finished runs found there with the same config are reused, not rerun")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field of every run by dotted path, applied last, e.g. "
                        "--set data.image_size=64 (repeatable)")
    args = p.parse_args()
    if args.use_gpu and args.num_workers < 1:
        p.error("--use-gpu needs --num-workers 1 or more")
    try:
        args.overrides = dict(parse_override(text) for text in args.set)
    except ValueError as e:
        p.error(str(e))

    if "imbalanced" in args.datasets:
        write_imbalanced()
    paths = {"usps": USPS, "hirise": HIRISE, "gz2-spirals": GZ2}
    datasets = [d for d in args.datasets if d not in paths or paths[d].exists()]
    for d in sorted(set(args.datasets) - set(datasets)):
        print(f"skipping {d}: {paths[d]} not found")
    args.feature_cache = Path(args.workdir or ".") / "feature-cache"
    # Every run's config is built once here, so a mistyped --set fails before Ray starts.
    try:
        for dataset in datasets:
            for method in args.methods:
                for backbone in args.backbones:
                    build_config(dataset, method, args.seeds[0], args, backbone)
    except (ValueError, FileNotFoundError) as e:
        p.error(f"{dataset} {method}: {e}")
    init_ray(num_cpus=local_cpus_needed(args.num_workers, 1.0), quiet=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="deimos_bench_"))
    args.feature_cache = workdir / "feature-cache"
    rows = []
    per_run = []
    heldout: set[bool] = set()  # whether the runs' training saw labels
    for dataset in datasets:
        for backbone in args.backbones:
            space = "pixels" if backbone == "none" else backbone
            # Per input the baselines were fitted on: a run that fine-tunes the backbone
            # fits them on the pixels at the backbone's size, not on its features.
            baselines: dict[tuple[str, str], dict[str, list[float]]] = {}
            for method in args.methods:
                runs = [run_one(dataset, method, s, args, workdir, backbone) for s in args.seeds]
                per_run += [(dataset, f"{method} ({space})", r) for r in runs]
                heldout |= {saw_labels(r["scores"][r["model"]]) for r in runs}
                scores = {k: [scored(r, "model")[k] for r in runs] for k in KEYS}
                if runs[0]["som"]:
                    scores.update({k: [r["som"][k] for r in runs] for k in SOM_KEYS})
                rows.append((dataset, f"{method} ({space})", scores,
                             statistics.median(r["seconds"] for r in runs)))
                for r in runs:
                    for b in BASELINES:
                        if b in r["scores"]:
                            lists = baselines.setdefault((r["input"], b), {k: [] for k in KEYS})
                            for k in KEYS:
                                lists[k].append(scored(r, b)[k])
            # The baselines are refitted beside every run; their seeds repeat across methods.
            for (fitted_on, b), lists in baselines.items():
                rows.append((dataset, f"{BASELINES[b]} ({fitted_on})", lists, None))

    print(f"\nmedian over seeds {args.seeds} (range in brackets); DEC pretrain epochs "
          f"{args.pretrain_epochs}; DESOM iterations {args.desom_iterations}"
          + "".join(f"; {text}" for text in args.set)
          + ("; accuracy, NMI, ARI and purity over the labelled rows whose label training did "
             "not see, for the model and k-means alike" if heldout == {True} else "")
          + ("; WARNING: only some runs have held-out scores (the others finished before "
             "they existed: rerun them), so the rows mix two kinds of score" if len(heldout) == 2 else "")
          + "\n")
    # DESOM's map errors get columns when a DESOM run is listed.
    with_som = any(SOM_KEYS[0] in scores for _, _, scores, _ in rows)
    columns = KEYS + (SOM_KEYS if with_som else ())
    heading = ["dataset", "method", "accuracy", "NMI", "ARI", "purity",
               *(["QE", "TE"] if with_som else []), "median run time"]
    print("| " + " | ".join(heading) + " |")
    print("|" + "---|" * len(heading))
    for dataset, method, scores, seconds in rows:
        cells = " | ".join(median_cell(scores[k]) if k in scores else "-" for k in columns)
        print(f"| {dataset} | {method} | {cells} | {'-' if seconds is None else f'{seconds:.0f} s'} |")
    if args.per_run:
        print_per_run(per_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
