"""What a run folder's training was made from, checked before a rerun reuses the folder.

A rerun with the same ``--out`` resumes the training there (Ray Train finds its latest
checkpoint), which is right only for the same training on the same rows. So every run
writes ``DIR/identity.json`` before it trains:

- ``job``: the job that trained;
- ``data``: the number of rows, a SHA-256 of their sorted ids, and the data settings
  (all but ``on_error``, which changes no row);
- ``features``: the representation's settings (not those that only change how the
  features are computed: cache folder, batch size, actors);
- ``seed``, ``model`` (the full model config) and ``input_shape``.

A rerun compares its own identity with the stored one before anything in the folder
changes (:func:`check_identity`): the settings as soon as the config is known, before
Ray starts; the rows once the data is prepared. When anything differs it stops with
what differs and the fix: a new ``--out``, or ``--overwrite``, which removes the earlier
run's outputs (:func:`clear_run`) and starts afresh. The feature cache in ``DIR/features``
stays: its entries are keyed by their inputs, so no run reads another's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from deimos_ray.config import DataConfig, FeatureConfig, JobConfig
from deimos_ray.config_io import stored_settings, to_dict
from deimos_ray.errors import UsageError
from deimos_ray.files import remove_partials, write_json

IDENTITY_FILE = "identity.json"
NOT_IN_DATA_IDENTITY = ("on_error",)
# Feature settings that change only how the features are computed, not what they are.
HOW_FEATURES_RUN = ("cache", "batch_size", "actors")
# Everything a run writes in its folder, which --overwrite removes (not DIR/features).
RUN_OUTPUTS = ("ray", "checkpoint", "restarts", "assignments", "level2", "report", "trials", "tune",
               "metrics.json", "config.yaml", "rejected.parquet", "feature_stats.npz", "reducer.pkl", "groups.parquet",
               "trials.parquet", "best_config.yaml", "score_vs_k.png", IDENTITY_FILE)


def settings_identity(job: str, cfg: JobConfig, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """The identity's settings part (module docstring), known before any data is read."""
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in NOT_IN_DATA_IDENTITY}
    features = {k: v for k, v in to_dict(cfg.features).items() if k not in HOW_FEATURES_RUN}
    if cfg.features.reduce == "umap":  # UMAP's settings make the input then
        features["umap"] = to_dict(cfg.umap)
    identity = {"job": job, "data": {"settings": data}, "features": features, "seed": cfg.seed,
                "model": to_dict(cfg.model)}
    if input_shape is not None:
        identity["input_shape"] = [int(n) for n in input_shape]
    return identity


def rows_fingerprint(ids: np.ndarray) -> dict[str, Any]:
    """The number of rows and a SHA-256 of their sorted ids (order-free: Ray Data may
    deliver the same rows in another order)."""
    digest = hashlib.sha256("\0".join(sorted(map(str, ids))).encode()).hexdigest()
    return {"rows": int(len(ids)), "ids_sha256": digest}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def _with_defaults(stored: dict[str, Any], cfg: JobConfig) -> dict[str, Any]:
    """The stored identity with fields added to the package since counted as defaults."""
    stored = json.loads(json.dumps(stored))
    if "model" in stored:
        stored["model"] = stored_settings(type(cfg.model), stored["model"])
    if "features" in stored:
        fields = stored_settings(FeatureConfig, stored["features"])
        stored["features"] = {k: v for k, v in fields.items() if k not in HOW_FEATURES_RUN}
    if "settings" in stored.get("data", {}):
        fields = stored_settings(DataConfig, stored["data"]["settings"])
        stored["data"]["settings"] = {k: v for k, v in fields.items() if k not in NOT_IN_DATA_IDENTITY}
    return stored


def differences(stored: dict[str, Any], identity: dict[str, Any]) -> list[str]:
    """``key (then -> now)`` for every field of ``identity`` that ``stored`` has otherwise."""
    old, new = _flatten(stored), _flatten(json.loads(json.dumps(identity)))
    return [f"{key} ({old.get(key, 'absent')!r} then, {value!r} now)"
            for key, value in new.items() if old.get(key, "absent") != value]


def check_identity(out: Path, identity: dict[str, Any], cfg: JobConfig, overwrite: bool = False) -> None:
    """Refuse to reuse ``out`` for another training, before anything in it changes.

    ``out`` is free when it holds no training (no ``identity.json``, ``ray/`` or
    ``tune/``), or
    when its identity matches ``identity`` on every field ``identity`` has (a partial
    identity checks only the settings). With ``overwrite``, nothing is refused (the
    caller clears the folder with :func:`clear_run` once every other check has passed).

    Raises:
        UsageError: ``out`` holds another training (names what differs and the fix), or a
            training from a version that wrote no identity.
    """
    if overwrite:
        return
    path = out / IDENTITY_FILE
    if not path.is_file():
        if (out / "ray").exists() or (out / "tune").exists():
            raise UsageError(f"{out} holds a training whose inputs this version cannot check (no "
                             f"{IDENTITY_FILE}); use a new --out, or --overwrite to replace it")
        return
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} cannot be read ({exc}); use a new --out, or --overwrite") from exc
    changed = differences(_with_defaults(stored, cfg), identity)
    if changed:
        raise UsageError(f"{out} holds another training, so it cannot resume there: "
                         + "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
                         + ". Use a new --out, or --overwrite to replace that run")


def clear_run(out: Path) -> None:
    """Remove an earlier run's outputs from ``out`` (``--overwrite``); the feature cache
    and any file the tool did not write stay."""
    for name in RUN_OUTPUTS:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    remove_partials(out)


def write_identity(out: Path, identity: dict[str, Any]) -> None:
    """Record ``identity`` in ``out`` (atomically)."""
    write_json(out / IDENTITY_FILE, identity)
