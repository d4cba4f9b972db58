"""Join a CSV of per-image metadata onto the rows, and turn numeric columns into
features (seed 003: image clustering with metadata).

The CSV's ``metadata_key`` column is matched against the row ``id``; when nothing matches
that way, against the id's file name and then its stem, since catalogues often list
``ESP_011623_2100_RED-0069.jpg`` or ``ESP_011623_2100_RED-0069`` while ids carry folders.
Chosen numeric columns are standardised (z-scores over the CSV rows that matched) and
multiplied by a weight into ``_meta_features``, which dense models and the k-means
baseline append to the pixels; a row without metadata gets zeros (the mean).
"""

from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import ray

from deimos_ray.data.sources.base import reserved_clash

KEY_FORMS = {
    "id": lambda s: s,
    "file name": lambda s: PurePosixPath(s).name,
    "stem": lambda s: PurePosixPath(s).stem,
}


def read_metadata(path: str, key: str) -> pd.DataFrame:
    """The CSV indexed by its key column (as strings), with a clear error if absent.

    Raises:
        ValueError: no key column, duplicate keys, or a column named like one of
            deimos_ray's own (:func:`~deimos_ray.data.sources.base.reserved_clash`).
    """
    df = pd.read_csv(path)
    if key not in df.columns:
        raise ValueError(f"metadata file {path} has no column {key!r} (columns: {list(df.columns)})")
    clash = reserved_clash(df.columns, allowed=(key,))
    if clash:
        raise ValueError(f"metadata file {path}: columns {clash} are deimos_ray's own; rename them in the CSV")
    df[key] = df[key].astype(str)
    if df[key].duplicated().any():
        raise ValueError(f"metadata file {path}: key column {key!r} has duplicate values")
    return df.set_index(key)


def choose_key_form(ids: list[str], keys: pd.Index) -> str:
    """Which form of the id (id, file name, stem) the CSV keys are written in."""
    keyset = set(keys)
    for name, form in KEY_FORMS.items():
        if any(form(i) in keyset for i in ids):
            return name
    raise ValueError(
        f"no metadata key matches any image id (ids look like {ids[:3]}, keys like {list(keys[:3])})"
    )


def feature_table(meta: pd.DataFrame, columns: tuple[str, ...], weight: float) -> pd.DataFrame:
    """Standardised, weighted numeric columns (missing values -> 0, the mean)."""
    missing = [c for c in columns if c not in meta.columns]
    if missing:
        raise ValueError(f"metadata_features {missing} are not columns of the metadata file")
    values = meta[list(columns)].apply(pd.to_numeric, errors="coerce")
    std = values.std(ddof=0).replace(0, 1.0)
    return ((values - values.mean()) / std).fillna(0.0) * weight


class _Join:
    def __init__(self, meta: pd.DataFrame, features: pd.DataFrame | None, form: str):
        self.meta, self.features, self.form = meta, features, KEY_FORMS[form]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        keys = batch["id"].astype(str).map(self.form)
        joined = self.meta.reindex(keys.to_numpy())
        for col in joined.columns:
            if col not in batch.columns:
                batch[col] = joined[col].to_numpy()
        if self.features is not None:
            f = self.features.reindex(keys.to_numpy()).fillna(0.0).to_numpy(np.float32)
            batch["_meta_features"] = list(f)
        return batch


def join_metadata(ds: ray.data.Dataset, sample_ids: list[str], cfg) -> tuple[ray.data.Dataset, str]:
    """Rows of ``ds`` with the CSV's columns added; returns the key form used.

    Args:
        ds: Source rows.
        sample_ids: Some ids of ``ds`` (to tell how the CSV writes its keys).
        cfg: The :class:`DataConfig` (``metadata``, ``metadata_key``, features, weight).
    """
    meta = read_metadata(cfg.metadata, cfg.metadata_key)
    form = choose_key_form(sample_ids, meta.index)
    features = feature_table(meta, cfg.metadata_features, cfg.metadata_weight) if cfg.metadata_features else None
    return ds.map_batches(_Join(meta, features, form), batch_format="pandas", batch_size=1024), form
