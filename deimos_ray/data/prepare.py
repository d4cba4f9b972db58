"""From a source spec to the rows a model trains on: load, join metadata, decode, tile,
normalise, and split off every input that could not be read (with its reason); with a
backbone, turn the images into its features (read from the feature cache when an earlier
run computed them) and normalise those.

:func:`prepare_data` runs once per job (or once per sweep); everything after it reads
:class:`PreparedData`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from deimos_ray.config import DataConfig, FeatureConfig, UmapConfig
from deimos_ray.data.feature_cache import cache_key, read_entry, write_entry
from deimos_ray.data.features import BANK_COLUMN, extract_features
from deimos_ray.data.metadata import join_metadata
from deimos_ray.data.preprocess import (
    PREPROCESS_BATCH,
    ImageSpec,
    preprocess,
    resolve_image_spec,
    split_rejected,
    split_table,
)
from deimos_ray.data.reduce import embed, fit_umap
from deimos_ray.data.sources import load_source
from deimos_ray.data.sources.base import rechunk
from deimos_ray.errors import UsageError
from deimos_ray.files import write_atomic
from deimos_ray.models.backbones import DEFAULT_SIZE

REJECTED_SCHEMA = pa.schema(
    [("id", pa.string()), ("path", pa.string()), ("reason", pa.string()), ("stage", pa.string())]
)


class NothingReadable(UsageError):
    """No input of the source could be read; ``rejected`` holds every one with its reason."""

    def __init__(self, message: str, rejected: pd.DataFrame):
        super().__init__(message)
        self.rejected = rejected


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
        representation: ``pixels`` or the backbone whose features ``x`` holds.
        feature_stats: With ``features.normalize=standardize``: the per-feature mean and
            standard deviation the features were standardised with (new images must be
            standardised the same way).
        cache_hit: Whether the features were read from the cache.
        ids: The ``id`` of every row of ``good``, in its order.
        reducer: With ``features.reduce=umap``: the fitted UMAP model ``x`` was embedded
            with (new images must be embedded by the same one).
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
    representation: str = "pixels"
    feature_stats: dict[str, np.ndarray] | None = None
    cache_hit: bool = False
    ids: np.ndarray = dataclasses.field(default_factory=lambda: np.array([], dtype=object))
    reducer: Any = None

    @property
    def num_rows(self) -> int:
        """Readable rows (images, or tiles when tiling)."""
        return len(self.ids)


def _append_meta_features(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    flat = np.asarray(batch["x"], dtype=np.float32).reshape(len(batch["x"]), -1)
    batch["x"] = np.concatenate([flat, np.stack(batch["_meta_features"]).astype(np.float32)], axis=1)
    return batch


def decode_size(cfg: DataConfig, features: FeatureConfig) -> DataConfig:
    """With a backbone, decode at the size it sees (unless tiling sets the geometry)."""
    if not features.enabled:
        return cfg
    if cfg.image_size is not None:
        raise ValueError("with --backbone, images are decoded at --feature-size (features.image_size); "
                         "leave --image-size (data.image_size) unset")
    if cfg.tile is not None:
        return cfg
    return dataclasses.replace(cfg, image_size=features.image_size or DEFAULT_SIZE)


def _normalize(good: ray.data.Dataset, how: str, stats: dict[str, np.ndarray] | None = None
               ) -> tuple[ray.data.Dataset, dict[str, np.ndarray] | None]:
    if how == "none":
        return good, None
    # A view bank (--views augment:N) is normalised as its images' own features are.
    columns = [c for c in ("x", BANK_COLUMN) if c in good.columns()]
    if how == "l2":
        def unit(batch):
            for c in columns:
                x = np.asarray(batch[c], dtype=np.float32)
                batch[c] = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
            return batch
        return good.map_batches(unit, batch_format="numpy").materialize(), None
    if stats is None:
        _, x = collect_features(good)
        stats = {"mean": x.mean(axis=0), "std": x.std(axis=0) + 1e-6}

    def standardize(batch):
        for c in columns:
            batch[c] = ((np.asarray(batch[c], dtype=np.float32) - stats["mean"]) / stats["std"]).astype(np.float32)
        return batch
    return good.map_batches(standardize, batch_format="numpy").materialize(), stats


def prepare_data(cfg: DataConfig, features: FeatureConfig | None = None, cache_dir: Path | None = None,
                 use_gpu: bool = False, extract: bool = True,
                 feature_stats: dict[str, np.ndarray] | None = None, umap: UmapConfig | None = None,
                 seed: int = 0, reducer: Any = None) -> PreparedData:
    """Load, join metadata, decode, tile and normalise; split off unreadable inputs.

    Args:
        cfg: The source and its preprocessing.
        features: The representation; with a backbone, ``x`` becomes its features
            (:mod:`deimos_ray.data.features`), cached in ``features.cache`` or ``cache_dir``.
        cache_dir: The cache folder when ``features.cache`` is unset (a job: ``DIR/features``).
        use_gpu: Run the backbone on GPUs.
        extract: With a backbone, compute its features; False only decodes the images
            at its size (for a model that fine-tunes the backbone itself).
        feature_stats: With ``features.normalize=standardize``: standardise with this
            mean and standard deviation (a trained run's, for new images) instead of
            the rows' own.
        umap, seed: With ``features.reduce=umap``: UMAP's settings and the seed of its
            fit and sample (:mod:`deimos_ray.data.reduce`).
        reducer: With ``features.reduce=umap``: embed with this fitted model (a trained
            run's, for new images) instead of fitting one on the rows.

    Raises:
        ValueError: ``on_error: fail`` and an input could not be read (names the file),
            or no input could be read at all.
    """
    features = features or FeatureConfig()
    source = load_source(cfg)
    rejected_parts = [pd.DataFrame(list(source.rejected), columns=REJECTED_SCHEMA.names)]
    shape = source.image_shape[:2] if source.image_shape else None
    spec = resolve_image_spec(shape, decode_size(cfg, features))
    if not extract:
        features = FeatureConfig()  # the pixels, at the backbone's size
    good, cached, stats, hit = None, None, None, False
    if features.enabled:
        cache = Path(features.cache or cache_dir or "features")
        key = cache_key(source, cfg, features, spec.size[0])
        cached = read_entry(cache, key)
        hit = cached is not None
    if cached is None and source.dataset is not None:
        ds = source.dataset
        # A backbone costs a hundred times the decode per image: blocks of one forward
        # batch spread the images over every backbone actor (a 2,048-row block of an
        # array source would keep all but one idle).
        batch = features.batch_size if features.enabled else PREPROCESS_BATCH
        if features.enabled:
            ds = rechunk(ds, batch)
        if cfg.metadata:
            sample = ds.select_columns(["id"]).take_batch(1000)["id"].tolist()
            ds, _ = join_metadata(ds, sample, cfg)
        processed = preprocess(ds, spec, batch_size=batch)
        if features.enabled:
            processed = extract_features(processed, features.backbone, features.weights, spec.size[0],
                                         use_gpu, features.actors, features.batch_size, features.views)
            # The cache entry is written from the driver anyway: split the rows there
            # rather than in two more Ray Data passes.
            table = pa.concat_tables(ray.get(processed.materialize().to_arrow_refs()), promote_options="default")
            write_entry(cache, key, *split_table(table), features.backbone, spec.size[0])
            cached = read_entry(cache, key)  # every run trains on the cache's order
        else:
            good, bad = split_rejected(processed.materialize())
            good = good.materialize()
            rejected_parts.append(bad.to_pandas())
    if cached is not None:
        good, bad = cached
        good = good.materialize()
        rejected_parts.append(bad)
    rejected = pd.concat([p for p in rejected_parts if len(p)] or rejected_parts, ignore_index=True)
    if cfg.on_error == "fail" and len(rejected):
        first = rejected.iloc[0]
        raise UsageError(
            f"cannot read {first['path'] or first['id']}: {first['reason']} "
            f"({len(rejected)} unreadable input(s); use on_error=skip to record and go on)"
        )
    if good is None or good.count() == 0:
        common = rejected["reason"].value_counts().head(3)
        reasons = "; ".join(f"{n} x {reason}" for reason, n in common.items()) or "the source lists no image"
        raise NothingReadable(f"none of the {source.num_inputs} inputs of {cfg.spec!r} could be read "
                              f"(most common reasons: {reasons})", rejected)
    input_shape = spec.shape
    if features.enabled:
        good, stats = _normalize(good, features.normalize, feature_stats)
        if features.reduce == "umap":
            if reducer is None:
                reducer = fit_umap(collect_features(good)[1], umap or UmapConfig(), seed)
            good = embed(good, reducer, features.actors).materialize()
        input_shape = (int(np.asarray(good.take(1)[0]["x"]).shape[0]),)
    if cfg.metadata_features:
        good = good.map_batches(_append_meta_features, batch_format="numpy").materialize()
        input_shape = (int(np.prod(input_shape)) + len(cfg.metadata_features),)
    ids = np.concatenate([b["id"] for b in good.select_columns(["id"]).iter_batches(
        batch_size=65536, batch_format="numpy")])
    good_inputs = len(good.unique("_source_id")) if cfg.tile else len(ids)
    return PreparedData(good, rejected, spec, input_shape, source.num_inputs, good_inputs,
                        source.has_labels, source.missing, source.notes,
                        features.backbone if features.enabled else "pixels", stats, hit, ids,
                        reducer if features.reduce != "none" else None)


def write_rejected(rejected: pd.DataFrame, path: Path) -> None:
    """``rejected.parquet`` with columns id, path, reason, stage (empty when none)."""
    table = pa.Table.from_pandas(rejected[REJECTED_SCHEMA.names], schema=REJECTED_SCHEMA, preserve_index=False)
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def collect_features(good: ray.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(ids, flattened x) of every readable row, for the baseline and the pixel scores."""
    ids, xs = [], []
    for batch in good.select_columns(["id", "x"]).iter_batches(batch_size=4096, batch_format="numpy"):
        ids.append(batch["id"])
        xs.append(np.asarray(batch["x"], dtype=np.float32).reshape(len(batch["id"]), -1))
    return np.concatenate(ids), np.concatenate(xs)
