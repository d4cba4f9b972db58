"""The job contract shared by every training job: data in, model trained on Ray Train,
one Parquet row per image out, scores beside the k-means baseline.

Steps of :func:`run_training_job`, which every job follows:

1. write ``DIR/config.yaml`` (and remove an earlier run's ``DIR/metrics.json``);
2. load the source as a Ray Dataset and preprocess it in Ray Data; unreadable images go
   to ``DIR/rejected.parquet`` with the reason (or stop the job with ``on_error: fail``);
3. train with a TorchTrainer (``DIR/ray/`` holds Ray's run; rerunning with the same
   ``DIR`` resumes from its latest checkpoint) and copy the final checkpoint to
   ``DIR/checkpoint/``;
4. assign every readable image with Ray Data model actors and write ``DIR/assignments/``
   (with restarts and a ``combine``: every restart's model assigns into
   ``DIR/restarts/R/``, and ``DIR/assignments/`` combines them);
5. score the model and k-means on the same input, check inputs = assigned + rejected,
   and write ``DIR/metrics.json``.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from deimos_ray.assign import (
    combine_dac_assignments,
    combine_desom_assignments,
    load_desom,
    remap_clusters,
    write_assignments,
)
from deimos_ray.baselines import kmeans_baseline
from deimos_ray.config import DataConfig, ScalingConfig, save_yaml, to_dict
from deimos_ray.data.metadata import join_metadata
from deimos_ray.data.preprocess import (
    ImageSpec,
    output_columns,
    preprocess,
    resolve_image_spec,
    split_rejected,
)
from deimos_ray.data.sources import load_source
from deimos_ray.metrics import all_scores, format_table, heldout_scores, internal_scores
from deimos_ray.models.dac import DACConfig, reassign_small_clusters
from deimos_ray.models.dec import DECConfig
from deimos_ray.models.desom import (
    DESOM,
    DESOMConfig,
    histo_vectors,
    quantization_error,
    topographic_error,
)
from deimos_ray.report import draw_desom_pictures, draw_members
from deimos_ray.runtime import init_ray, local_cpus_needed, training_cpus
from deimos_ray.train import dac_loop, dec_loop, desom_loop
from deimos_ray.train.driver import export_checkpoint, fit

REJECTED_SCHEMA = pa.schema(
    [("id", pa.string()), ("path", pa.string()), ("reason", pa.string()), ("stage", pa.string())]
)


@dataclass(frozen=True)
class JobConfig:
    """The settings every job shares; each job's config adds its ``model``.

    Attributes:
        data: Source and preprocessing.
        scaling: Ray Train workers.
        seed: Seeds weights, batching, k-means and the metric samples.
        checkpoint_interval_s: An epoch ends with a report and a checkpoint when this
            many seconds have passed since the last one, and always at the end of each
            training stage; 0 reports every epoch. Epochs on small data take
            milliseconds, while each report waits up to 2 s for Train's controller and
            each checkpoint writes the model; on large data, where an epoch outlasts the
            interval, every epoch is checkpointed.
        max_failures: Worker failures to retry from the latest checkpoint.
        metrics_sample: Points in the seeded sample for silhouette and Dunn.
        baseline_n_init: Restarts of the k-means baseline.
    """

    data: DataConfig = field(default_factory=DataConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    seed: int = 0
    checkpoint_interval_s: float = 30.0
    max_failures: int = 0
    metrics_sample: int = 2000
    baseline_n_init: int = 10

    def __post_init__(self) -> None:
        if self.checkpoint_interval_s < 0:
            raise ValueError(f"checkpoint_interval_s must be >= 0, got {self.checkpoint_interval_s}")


@dataclass(frozen=True)
class DECJobConfig(JobConfig):
    """Everything ``jobs/train_dec.py`` needs: :class:`JobConfig` and the DEC / IDEC model."""

    model: DECConfig = field(default_factory=DECConfig)


@dataclass(frozen=True)
class DACJobConfig(JobConfig):
    """Everything ``jobs/train_dac.py`` needs: :class:`JobConfig` and the DAC model."""

    model: DACConfig = field(default_factory=DACConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_concurrent_restarts(self.model.concurrent_restarts, self.scaling)


def _check_concurrent_restarts(concurrent_restarts: int, scaling: ScalingConfig) -> None:
    if concurrent_restarts > 1 and scaling.num_workers == 0:
        raise ValueError("model.concurrent_restarts > 1 needs scaling.num_workers >= 1: each restart "
                         "trains in Ray Train workers of its own, not in the driver")


@dataclass(frozen=True)
class DESOMJobConfig(JobConfig):
    """Everything ``jobs/train_desom.py`` needs: :class:`JobConfig`, DESOM-1 (``model``)
    and the two-level pipeline's settings.

    Attributes:
        level2: DESOM-2 of the two-level pipeline (run with ``--levels 2``): a dense
            autoencoder and a larger map over the groups' histo-vectors.
        histo_clip_quantile: Per-node quantile at which histo-vector shares are clipped.
    """

    model: DESOMConfig = field(default_factory=DESOMConfig)
    level2: DESOMConfig = field(default_factory=lambda: DESOMConfig(
        map_size=(20, 20), hidden_dims=(450, 300), latent_dim=100, iterations=2000, batch_size=64))
    histo_clip_quantile: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.histo_clip_quantile <= 1:
            raise ValueError("histo_clip_quantile must be in (0, 1]")
        _check_concurrent_restarts(self.model.concurrent_restarts, self.scaling)
        if self.level2.restarts != 1:
            raise ValueError("level2.restarts must be 1: restarts apply to DESOM-1 (model.restarts)")


@dataclass
class PreparedData:
    """Preprocessed rows, the rejected inputs, and the counts behind the accounting.

    Attributes:
        good: Readable rows (one per image, or per tile) with ``x``.
        rejected: ``id, path, reason, stage`` of every input that could not be used.
        spec: Geometry of ``x``.
        input_shape: Shape of one model input (``spec.shape``, or a flat vector when
            metadata features are appended).
        num_inputs: Images the source holds.
        good_inputs: Images that produced rows (``num_inputs - len(rejected)``).
        has_labels: Whether any row has a known label.
        missing: Images a labels list names but the source lacks (not inputs).
        notes: What the source reported while loading.
    """

    good: ray.data.Dataset
    rejected: pd.DataFrame
    spec: ImageSpec
    input_shape: tuple[int, ...]
    num_inputs: int
    good_inputs: int
    has_labels: bool
    missing: int = 0
    notes: tuple[str, ...] = ()


def _append_meta_features(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    flat = np.asarray(batch["x"], dtype=np.float32).reshape(len(batch["x"]), -1)
    batch["x"] = np.concatenate([flat, np.stack(batch["_meta_features"]).astype(np.float32)], axis=1)
    return batch


def prepare_data(cfg: DataConfig) -> PreparedData:
    """Load, join metadata, decode, tile and normalise; split off unreadable inputs.

    Raises:
        ValueError: ``on_error: fail`` and an input could not be read (names the file),
            or no input could be read at all.
    """
    source = load_source(cfg)
    rejected_parts = [pd.DataFrame(list(source.rejected), columns=REJECTED_SCHEMA.names)]
    shape = source.image_shape[:2] if source.image_shape else None
    spec = resolve_image_spec(shape, cfg)
    good = None
    if source.dataset is not None:
        ds = source.dataset
        if cfg.metadata:
            sample = ds.select_columns(["id"]).take_batch(1000)["id"].tolist()
            ds, _ = join_metadata(ds, sample, cfg)
        processed = preprocess(ds, spec).materialize()
        good, bad = split_rejected(processed)
        good = good.materialize()
        rejected_parts.append(bad.to_pandas())
    rejected = pd.concat([p for p in rejected_parts if len(p)] or rejected_parts, ignore_index=True)
    if cfg.on_error == "fail" and len(rejected):
        first = rejected.iloc[0]
        raise ValueError(
            f"cannot read {first['path'] or first['id']}: {first['reason']} "
            f"({len(rejected)} unreadable input(s); use on_error=skip to record and go on)"
        )
    if good is None or good.count() == 0:
        raise ValueError(f"none of the {source.num_inputs} inputs of {cfg.spec!r} could be read")
    input_shape = spec.shape
    if cfg.metadata_features:
        good = good.map_batches(_append_meta_features, batch_format="numpy").materialize()
        input_shape = (int(np.prod(spec.shape)) + len(cfg.metadata_features),)
    good_inputs = len(good.unique("_source_id")) if cfg.tile else good.count()
    return PreparedData(good, rejected, spec, input_shape, source.num_inputs, good_inputs,
                        source.has_labels, source.missing, source.notes)


def write_rejected(rejected: pd.DataFrame, path: Path) -> None:
    """``rejected.parquet`` with columns id, path, reason, stage (empty when none)."""
    table = pa.Table.from_pandas(rejected[REJECTED_SCHEMA.names], schema=REJECTED_SCHEMA, preserve_index=False)
    pq.write_table(table, path)


def collect_features(good: ray.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(ids, flattened x) of every readable row, for the baseline and the pixel scores."""
    ids, xs = [], []
    for batch in good.select_columns(["id", "x"]).iter_batches(batch_size=4096, batch_format="numpy"):
        ids.append(batch["id"])
        xs.append(np.asarray(batch["x"], dtype=np.float32).reshape(len(batch["id"]), -1))
    return np.concatenate(ids), np.concatenate(xs)


def score_run(
    assignments: pd.DataFrame, ids: np.ndarray, features: np.ndarray, k: int, seed: int,
    sample_size: int, n_init: int, has_labels: bool, model_name: str,
    labels_seen: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """Scores of the model and of k-means on the same input features.

    Internal scores of both are computed in the same space, the preprocessed pixels, so
    the columns are comparable; ``silhouette_embedding`` is the model's silhouette in its
    own embedding.

    ``labels_seen(ids, labels)``, when given, marks the rows whose label training saw
    (DAC's ``model.labeled_fraction``). The external scores over all rows are then no
    longer blind, so both columns also get them over the other labelled rows only, as
    ``heldout_accuracy``, ``heldout_nmi``, ``heldout_ari`` and ``heldout_purity``.
    """
    rows = assignments.set_index("id").loc[ids]  # align the Parquet rows with the features
    labels = rows["label"].to_numpy() if has_labels else None
    clusters = rows["cluster"].to_numpy()
    model_scores = all_scores(features, clusters, labels, sample_size, seed)
    embedding = np.stack(rows["embedding"].to_numpy())
    model_scores["silhouette_embedding"] = internal_scores(embedding, clusters, sample_size, seed)["silhouette"]
    km = kmeans_baseline(features, k, seed=seed, n_init=n_init)
    kmeans_scores = all_scores(features, km, labels, sample_size, seed)
    if labels is not None and labels_seen is not None:
        seen = labels_seen(ids, labels)
        model_scores.update(heldout_scores(labels, clusters, seen))
        kmeans_scores.update(heldout_scores(labels, km, seen))
    return {model_name: model_scores, "kmeans": kmeans_scores}


def _require_dense_for_metadata(cfg: DECJobConfig | DESOMJobConfig) -> None:
    """Metadata features are appended to flat feature vectors, which only the dense
    autoencoder takes."""
    if cfg.data.metadata_features and cfg.model.autoencoder != "dense":
        raise ValueError("metadata_features extend flat feature vectors: use model.autoencoder=dense")


def run_dec_job(cfg: DECJobConfig, out_dir: str | Path, job: str = "train_dec") -> dict[str, Any]:
    """Run DEC / IDEC end to end into ``out_dir`` and return the metrics dict."""
    _require_dense_for_metadata(cfg)
    return run_training_job(cfg, out_dir, job, dec_loop.train_loop_per_worker, cfg.model.variant)


def run_dac_job(cfg: DACJobConfig, out_dir: str | Path, job: str = "train_dac") -> dict[str, Any]:
    """Run DAC end to end into ``out_dir`` and return the metrics dict.

    Beyond the common steps: the rows drawn by ``model.labeled_fraction`` carry their
    label into training (column ``known``) and are left out of the ``heldout_*`` scores,
    and after assignment clusters smaller than ``model.min_cluster_size`` are merged into
    their most similar cluster. With ``model.restarts`` > 1 and ``model.restart_combine``
    ``consensus``, every restart's model assigns the rows and the assignments are their
    consensus (:func:`deimos_ray.assign.combine_dac_assignments`).
    """
    if cfg.data.metadata_features:
        raise ValueError("DAC trains on images; metadata_features apply to dense models (train_dec)")
    model = cfg.model

    def training_rows(data: PreparedData) -> ray.data.Dataset:
        if model.labeled_fraction > 0 and not data.has_labels:
            raise ValueError("model.labeled_fraction needs a source with labels (none has a label)")
        return data.good.select_columns(["id", "label", "x"]).map_batches(
            _draw_known_labels, fn_kwargs={"fraction": model.labeled_fraction, "seed": cfg.seed},
            batch_format="numpy",
        )

    def merge_small_clusters(out: Path, assignments: pd.DataFrame, _: PreparedData) -> tuple[pd.DataFrame, dict[str, Any]]:
        if model.min_cluster_size <= 0:
            return assignments, {}
        features = torch.as_tensor(np.stack(assignments["embedding"].to_numpy()))
        merged, mapping = reassign_small_clusters(assignments["cluster"].to_numpy().copy(), features,
                                                  model.min_cluster_size)
        moved = int(assignments["cluster"].isin(list(mapping)).sum())
        remap_clusters(out / "assignments", mapping)
        assignments = assignments.assign(cluster=merged.numpy().astype(np.int32))
        print(f"[{job}] min_cluster_size {model.min_cluster_size}: {len(mapping)} small cluster(s) "
              f"merged, {moved} image(s) moved " + (str(mapping) if mapping else ""))
        return assignments, {"small_clusters_merged": {str(k): v for k, v in mapping.items()},
                             "images_moved": moved}

    def labels_seen(ids: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return known_label_mask(ids, labels, model.labeled_fraction, cfg.seed)

    def consensus(sources: list[Path], destination: Path, _kept: int) -> list[float]:
        return combine_dac_assignments(sources, destination, seed=cfg.seed)

    return run_training_job(cfg, out_dir, job, dac_loop.train_loop_per_worker, "dac",
                            training_rows=training_rows, after_assign=merge_small_clusters,
                            restarts=model.restarts, objective=dac_loop.final_pair_loss,
                            combine=consensus if model.restart_combine == "consensus" else None,
                            labels_seen=labels_seen if model.labeled_fraction > 0 else None,
                            concurrent_restarts=model.concurrent_restarts)


def run_desom_job(cfg: DESOMJobConfig, out_dir: str | Path, job: str = "train_desom",
                  levels: int = 1) -> dict[str, Any]:
    """Run DESOM end to end into ``out_dir``: the common steps, then quantisation and
    topographic errors in the scores and the map pictures in ``DIR/report/``.

    With ``levels=2`` the two-level pipeline follows (:func:`run_desom_level2`): every
    group (exposure, source image) becomes a histo-vector over the DESOM-1 nodes and
    DESOM-2 maps the groups; its results go to ``DIR/groups.parquet`` and ``DIR/level2/``.

    With ``model.restarts`` > 1 the kept map is the restart with the lowest final loss
    (its checkpoint, pictures, map errors and map columns); with ``model.restart_combine``
    ``consensus`` every restart's map assigns the rows and ``cluster`` is the vote of
    their groupings (:func:`deimos_ray.assign.combine_desom_assignments`).
    """
    _require_dense_for_metadata(cfg)
    if levels not in (1, 2):
        raise ValueError(f"levels must be 1 or 2, got {levels}")
    representatives: dict[str, np.ndarray] = {}

    def map_errors_and_pictures(out: Path, assignments: pd.DataFrame,
                                data: PreparedData) -> tuple[pd.DataFrame, dict[str, Any]]:
        model, _ = load_desom(out / "checkpoint")
        errors = som_errors(model, torch.as_tensor(np.stack(assignments["embedding"].to_numpy())))
        pictures = draw_desom_pictures(model, assignments["som_row"].to_numpy(),
                                       assignments["som_col"].to_numpy(), out / "report")
        print(f"[{job}] quantisation error {errors['quantization_error']:.4f}, topographic error "
              f"{errors['topographic_error']:.4f}; pictures: {', '.join(p.name for p in pictures)}")
        if levels == 2 and len(data.input_shape) == 3:
            representatives.update(group_representatives(assignments, data.good))
        return assignments, {"som": errors, "report": [str(p.relative_to(out)) for p in pictures]}

    def training_rows(data: PreparedData) -> ray.data.Dataset:
        if levels == 2:  # fail before training, not after
            require_groups(data.good.select_columns(["group"]).to_pandas()["group"])
        return data.good.select_columns(["x"])

    def consensus(sources: list[Path], destination: Path, kept: int) -> list[float]:
        return combine_desom_assignments(sources, destination, cfg.model.clusters, kept, seed=cfg.seed)

    som = cfg.model
    metrics = run_training_job(cfg, out_dir, job, desom_loop.train_loop_per_worker, "desom",
                               training_rows=training_rows, after_assign=map_errors_and_pictures,
                               k=som.clusters, restarts=som.restarts, objective=desom_loop.final_loss,
                               combine=consensus if som.restart_combine == "consensus" else None,
                               concurrent_restarts=som.concurrent_restarts)
    if levels == 2:
        out = Path(out_dir).resolve()
        metrics["level2"] = run_desom_level2(cfg, out, representatives, job)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    return metrics


def require_groups(groups: pd.Series) -> None:
    """Refuse a two-level run whose rows are not grouped (at least 2 groups, some with
    several members); called before DESOM-1 trains."""
    sizes = groups[groups.fillna("") != ""].value_counts()
    if len(sizes) < 2 or sizes.max() < 2:
        raise ValueError("--levels 2 needs rows grouped by exposure or source image (at least 2 "
                         "groups, some with several members): tile the images (--tile) or use a "
                         "source with a group column")


def group_representatives(assignments: pd.DataFrame, good: ray.data.Dataset) -> dict[str, np.ndarray]:
    """One image per group: the member closest to its best-matching prototype."""
    rows = assignments[assignments["group"].fillna("") != ""]
    best = rows.sort_values("bmu_distance").drop_duplicates("group")
    wanted = dict(zip(best["id"], best["group"], strict=True))
    ids = np.array(list(wanted), dtype=object)
    picked = good.select_columns(["id", "x"]).map_batches(
        lambda b: {k: v[np.isin(b["id"], ids)] for k, v in b.items()}, batch_format="numpy")
    out = {}
    for batch in picked.iter_batches(batch_size=1024, batch_format="numpy"):
        for i, x in zip(batch["id"], batch["x"], strict=True):
            out[wanted[i]] = np.asarray(x, dtype=np.float32)
    return out


def run_desom_level2(cfg: DESOMJobConfig, out: Path, representatives: dict[str, np.ndarray],
                     job: str) -> dict[str, Any]:
    """DESOM-2 over the groups of a finished DESOM-1 run in ``out``.

    Writes ``out/groups.parquet`` (group, som_row, som_col, cluster, members,
    bmu_distance), ``out/level2/checkpoint`` and ``out/level2/report/`` (hits, U-matrix
    and ``members.png``: for each occupied DESOM-2 cell, up to nine of its groups, each
    shown by its most typical member image).
    """
    rows, cols = cfg.model.map_size
    table = pq.read_table(out / "assignments", columns=["group", "som_row", "som_col"]).to_pandas()
    table = table[table["group"].fillna("") != ""]  # grouping checked before DESOM-1 trained
    nodes = (table["som_row"] * cols + table["som_col"]).to_numpy()
    names, vectors, counts = histo_vectors(table["group"].tolist(), nodes, rows * cols, cfg.histo_clip_quantile)
    print(f"[{job}] level 2: {len(names)} groups -> histo-vectors of {rows * cols} nodes")

    level2 = out / "level2"
    level2.mkdir(exist_ok=True)
    loop_config = {"model": to_dict(cfg.level2), "seed": cfg.seed, "input_shape": [rows * cols],
                   "checkpoint_interval_s": cfg.checkpoint_interval_s}
    dataset = ray.data.from_items([{"x": v} for v in vectors.numpy()])
    result = fit(desom_loop.train_loop_per_worker, loop_config, dataset, cfg.scaling, level2 / "ray",
                 name="train", max_failures=cfg.max_failures)
    export_checkpoint(result, level2 / "checkpoint")

    model, node_cluster = load_desom(level2 / "checkpoint")
    with torch.no_grad():
        _, _, d = model(vectors)
    d_bmu, bmu = d.min(dim=1)
    cols2 = cfg.level2.map_size[1]
    groups = pd.DataFrame({
        "group": names,
        "som_row": (bmu // cols2).numpy().astype(np.int32),
        "som_col": (bmu % cols2).numpy().astype(np.int32),
        "cluster": np.asarray(node_cluster, dtype=np.int32)[bmu.numpy()],
        "members": counts.sum(dim=1).numpy().astype(np.int64),
        "bmu_distance": d_bmu.clamp(min=0).sqrt().numpy().astype(np.float32),
    })
    pq.write_table(pa.Table.from_pandas(groups, preserve_index=False), out / "groups.parquet")

    pictures = draw_desom_pictures(model, groups["som_row"].to_numpy(), groups["som_col"].to_numpy(),
                                   level2 / "report")
    per_cell: dict[tuple[int, int], list[np.ndarray]] = {}
    for g, r, c in zip(groups["group"], groups["som_row"], groups["som_col"], strict=True):
        if g in representatives and len(per_cell.setdefault((int(r), int(c)), [])) < 9:
            per_cell[(int(r), int(c))].append(representatives[g])
    if per_cell:  # only image inputs have representatives
        images = {cell: np.stack(v) for cell, v in per_cell.items()}
        pictures.append(draw_members(images, *cfg.level2.map_size, level2 / "report" / "members.png"))
    errors = _distance_errors(model, d)
    print(f"[{job}] level 2: {groups[['som_row', 'som_col']].drop_duplicates().shape[0]} cells used; "
          f"quantisation error {errors['quantization_error']:.4f}, topographic error "
          f"{errors['topographic_error']:.4f}; groups.parquet, level2/report/")
    return {"groups": len(names), "som": errors, "training": result.return_value,
            "report": [str(p.relative_to(out)) for p in pictures]}


def _distance_errors(model: DESOM, d: torch.Tensor) -> dict[str, float]:
    """Quantisation and topographic errors from (N, nodes) squared distances to the prototypes."""
    return {"quantization_error": quantization_error(d.min(dim=1).values.clamp(min=0).sqrt()),
            "topographic_error": topographic_error(d, model.grid) if model.cfg.nodes > 1 else 0.0}


def som_errors(model: DESOM, embeddings: torch.Tensor, chunk: int = 8192) -> dict[str, float]:
    """Quantisation error (mean distance to the BMU prototype) and topographic error
    (share whose two best units are not grid neighbours) over all embeddings."""
    totals = {"quantization_error": 0.0, "topographic_error": 0.0}
    with torch.no_grad():
        for start in range(0, len(embeddings), chunk):
            d = model.distances(embeddings[start : start + chunk])
            for name, value in _distance_errors(model, d).items():
                totals[name] += value * len(d)
    return {name: value / len(embeddings) for name, value in totals.items()}


def known_label_mask(ids: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Which rows lend their label to training: a seeded ``fraction`` of the labelled rows.

    The draw hashes each row's id with the seed, so it does not depend on how the rows
    are split across blocks or workers, and the scores can draw the same rows again.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if fraction <= 0:
        return np.zeros(len(labels), dtype=bool)
    draws = np.array([zlib.crc32(f"{seed}:{i}".encode()) / 2**32 for i in ids])
    return (labels >= 0) & (draws < fraction)


def _draw_known_labels(batch: dict[str, np.ndarray], fraction: float, seed: int) -> dict[str, np.ndarray]:
    """``known`` = the label for the rows :func:`known_label_mask` draws, else -1."""
    labels = np.asarray(batch["label"], dtype=np.int64)
    known = np.where(known_label_mask(batch["id"], labels, fraction, seed), labels, -1)
    return {"x": batch["x"], "known": known}


RESTART_SEED_STRIDE = 1000  # restart r trains from seed + 1000 r: apart from nearby user seeds


def fit_restarts(
    train_loop: Callable[[dict[str, Any]], Any],
    loop_config: dict[str, Any],
    rows: ray.data.Dataset,
    cfg: JobConfig,
    out: Path,
    restarts: int,
    objective: Callable[[dict[str, Any]], float] | None,
    job: str,
    concurrent: int = 1,
) -> tuple[list[ray.train.Result], list[dict[str, Any]] | None, int]:
    """Train once, or ``restarts`` times from seeds ``seed + 1000 r``, ``concurrent`` at a time.

    Returns every result (in restart order), a record per restart (``None`` for a single
    training) and the index of the kept result: the lowest ``objective`` of the loop's
    return value. Restart 0 is the Ray Train run ``train``, the others
    ``train-restart{r}``, so a rerun resumes each where it stopped. Concurrent restarts
    are separate Ray Train runs started from threads of this driver; each record's
    ``started_s`` and ``finished_s`` (seconds after the first start) show how they
    overlapped. If one fails, no further restart starts, the running ones finish (their
    checkpoints let a rerun resume them), and the error is raised.
    """
    if restarts == 1:
        return [fit(train_loop, loop_config, rows, cfg.scaling, out / "ray", name="train",
                    max_failures=cfg.max_failures)], None, 0
    if objective is None:
        raise ValueError("restarts need an objective to choose the kept training by")
    concurrent = min(concurrent, restarts)
    if concurrent > 1:
        _warn_if_cluster_too_small(cfg.scaling, concurrent)
    records = [{"restart": r, "seed": loop_config["seed"] + RESTART_SEED_STRIDE * r, "kept": False}
               for r in range(restarts)]
    t0 = time.perf_counter()
    failed = threading.Event()  # set by a failing restart, so no further one starts

    def train(record: dict[str, Any]) -> ray.train.Result | None:
        if failed.is_set():
            return None
        record["started_s"] = round(time.perf_counter() - t0, 3)
        r = record["restart"]
        try:
            result = fit(train_loop, {**loop_config, "seed": record["seed"]}, rows, cfg.scaling, out / "ray",
                         name="train" if r == 0 else f"train-restart{r}", max_failures=cfg.max_failures)
        except BaseException:
            failed.set()
            raise
        record["finished_s"] = round(time.perf_counter() - t0, 3)
        return result

    results: list[ray.train.Result | None] = [None] * restarts
    pool = ThreadPoolExecutor(max_workers=concurrent, thread_name_prefix="restart")
    try:
        futures = {pool.submit(train, record): record for record in records}
        for future in as_completed(futures):
            record = futures[future]
            try:
                result = future.result()
            except Exception:
                running = sum(f.running() for f in futures)
                if running:
                    print(f"[{job}] restart {record['restart'] + 1} failed; waiting for the {running} "
                          "restart(s) still training (a rerun resumes them from their checkpoints)", flush=True)
                raise
            if result is None:  # not started: another restart failed
                continue
            results[record["restart"]] = result
            record["objective"] = objective(result.return_value)
            print(f"[{job}] restart {record['restart'] + 1}/{restarts}, seed {record['seed']}: "
                  f"objective {record['objective']:.5g}", flush=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    best = min(range(restarts), key=lambda r: records[r]["objective"])
    records[best]["kept"] = True
    print(f"[{job}] lowest objective: restart {best + 1} of {restarts} (seed {records[best]['seed']}), "
          "whose model is checkpoint/")
    return results, records, best


def _warn_if_cluster_too_small(scaling: ScalingConfig, concurrent: int) -> None:
    """Concurrent trainings the cluster cannot hold at once do not fail: they wait for
    resources (or for an autoscaler). Say so, since the wall time then does not shrink."""
    have = ray.cluster_resources()
    workers = scaling.num_workers * concurrent
    need = {"CPU": training_cpus(workers, scaling.cpus_per_worker)}
    if scaling.use_gpu:
        need["GPU"] = workers
    short = {k: (have.get(k, 0), v) for k, v in need.items() if have.get(k, 0) < v}
    if short:
        warnings.warn(f"{concurrent} restarts at once need " + ", ".join(f"{v:g} {k}" for k, (_, v) in short.items())
                      + " but the cluster has " + ", ".join(f"{h:g}" for h, _ in short.values())
                      + "; the others wait for resources", stacklevel=3)


def run_training_job(
    cfg: JobConfig,
    out_dir: str | Path,
    job: str,
    train_loop: Callable[[dict[str, Any]], Any],
    model_name: str,
    training_rows: Callable[[PreparedData], ray.data.Dataset] | None = None,
    after_assign: Callable[[Path, pd.DataFrame, PreparedData], tuple[pd.DataFrame, dict[str, Any]]] | None = None,
    k: int | None = None,
    restarts: int = 1,
    objective: Callable[[dict[str, Any]], float] | None = None,
    combine: Callable[[list[Path], Path, int], list[float]] | None = None,
    labels_seen: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    concurrent_restarts: int = 1,
) -> dict[str, Any]:
    """The job contract (module docstring) for any algorithm.

    Args:
        cfg: A :class:`JobConfig` with a ``model`` (with ``n_clusters``).
        train_loop: The Ray Train loop; its checkpoint must load with
            :func:`deimos_ray.assign.load_predictor`.
        model_name: The model's name in the score table.
        training_rows: The dataset the loop trains on (default: the ``x`` column).
        after_assign: Post-processing of the written assignments (given the run
            directory, the rows and the prepared data); returns the updated rows and
            entries for ``metrics.json``.
        k: Number of clusters the model outputs (default ``cfg.model.n_clusters``); the
            k-means baseline uses the same.
        restarts, objective: Train ``restarts`` times and keep the training whose
            return value has the lowest ``objective`` (:func:`fit_restarts`): its model
            is ``checkpoint/`` and its return value the reported training.
        combine: With restarts, assign the rows with every restart's model (each into
            ``restarts/R/``, with its checkpoint) and make ``assignments/`` of them:
            ``combine(restart_assignment_dirs, destination, kept)`` writes it and
            returns each restart's agreement with it, recorded beside the restart
            (``kept``: the index of the restart whose model is ``checkpoint/``).
            Without it, the kept training's model assigns the rows.
        labels_seen: Marks the rows whose label training used, given (ids, labels);
            the scores then add held-out ones over the others (:func:`score_run`).
        concurrent_restarts: Restarts trained at the same time (:func:`fit_restarts`);
            a local Ray instance gets the CPUs for all of their workers.
    """
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # An earlier run's scores must not sit beside this run's config while it trains (or
    # after it fails): metrics.json appears again only when this run has finished.
    (out / "metrics.json").unlink(missing_ok=True)
    save_yaml(cfg, out / "config.yaml")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    at_once = min(concurrent_restarts, restarts)
    init_ray(num_cpus=local_cpus_needed(cfg.scaling.num_workers * at_once, cfg.scaling.cpus_per_worker))

    data = prepare_data(cfg.data)
    write_rejected(data.rejected, out / "rejected.parquet")
    n_rows = data.good.count()
    for note in data.notes:
        print(f"[{job}] {note}")
    tiles = f" as {n_rows} tiles" if cfg.data.tile else ""
    print(f"[{job}] {data.num_inputs} inputs: {data.good_inputs} readable{tiles}, "
          f"{len(data.rejected)} rejected; model input shape {data.input_shape}")
    timings["data_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    loop_config = {
        "model": to_dict(cfg.model),
        "seed": cfg.seed,
        "input_shape": list(data.input_shape),
        "checkpoint_interval_s": cfg.checkpoint_interval_s,
    }
    rows = training_rows(data) if training_rows else data.good.select_columns(["x"])
    results, restart_records, kept = fit_restarts(train_loop, loop_config, rows, cfg, out, restarts, objective, job,
                                                  concurrent=concurrent_restarts)
    result = results[kept]
    checkpoint = export_checkpoint(result, out / "checkpoint")
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    metadata = {"job": job, "config": to_dict(cfg)}
    to_assign = data.good.select_columns([*output_columns(data.good.columns()), "x"])
    shutil.rmtree(out / "restarts", ignore_errors=True)  # an earlier run's, made again below if needed
    if combine is not None and restart_records:
        sources = []
        for record, restart_result in zip(restart_records, results, strict=True):
            where = out / "restarts" / str(record["restart"])
            write_assignments(to_assign, export_checkpoint(restart_result, where / "checkpoint"),
                              where / "assignments", {**metadata, "restart": record},
                              use_gpu=cfg.scaling.use_gpu)
            sources.append(where / "assignments")
        agreement = combine(sources, out / "assignments", kept)
        for record, share in zip(restart_records, agreement, strict=True):
            record["agreement"] = share
        print(f"[{job}] combined {len(sources)} restarts; each one's agreement with the result: "
              + ", ".join(f"{share:.3f}" for share in agreement))
    else:
        write_assignments(to_assign, checkpoint, out / "assignments", metadata, use_gpu=cfg.scaling.use_gpu)
    assignments = pq.read_table(out / "assignments").to_pandas()
    extra: dict[str, Any] = {}
    if after_assign is not None:
        assignments, extra = after_assign(out, assignments, data)
    timings["assign_s"] = time.perf_counter() - t

    if len(assignments) != n_rows:
        raise RuntimeError(f"{n_rows} readable rows but {len(assignments)} assignment rows")
    accounting = {"inputs": data.num_inputs, "assigned": data.good_inputs, "rejected": len(data.rejected)}
    if cfg.data.tile:
        accounting["tiles"] = n_rows
    if data.missing:
        accounting["listed_but_missing"] = data.missing
    if accounting["assigned"] + accounting["rejected"] != accounting["inputs"]:
        raise RuntimeError(f"inputs != assigned + rejected: {accounting}")

    t = time.perf_counter()
    ids, features = collect_features(data.good)
    k = k or cfg.model.n_clusters
    scores = score_run(assignments, ids, features, k, cfg.seed, cfg.metrics_sample,
                       cfg.baseline_n_init, data.has_labels, model_name, labels_seen)
    timings["score_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    found = assignments["cluster"].nunique()
    if found < k:
        warnings.warn(f"{model_name.upper()} returned {found} distinct clusters, fewer than "
                      f"n_clusters={k}", stacklevel=2)
    metrics = {
        "job": job,
        "accounting": accounting,
        "scores": scores,
        "scores_space": "internal scores on preprocessed pixels for every method; "
                        "silhouette_embedding in the model's embedding",
        "training": result.return_value if hasattr(result, "return_value") else None,
        **({"restarts": restart_records} if restart_records else {}),
        **extra,
        "timings_s": timings,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))

    print(f"\n[{job}] accounting: {accounting['inputs']} inputs = {accounting['assigned']} assigned "
          f"+ {accounting['rejected']} rejected" + (f" ({n_rows} tiles)" if cfg.data.tile else ""))
    print(f"[{job}] scores (k={k}):\n{format_table(scores)}")
    print(f"\n[{job}] outputs in {out}:\n  assignments/  rejected.parquet  metrics.json  config.yaml  checkpoint/")
    return metrics
