"""A scikit-learn face for the three algorithms: :class:`DeepClusterer`.

``DeepClusterer(algorithm="dec", n_clusters=8).fit(X)`` runs the same code as
``jobs/train_dec.py``: :func:`deimos_ray.job.run_training_job` into a run folder (Ray
Data preprocessing, Ray Train, Ray Data assignment, scores). ``predict`` and
``transform`` assign new rows with that run through :func:`deimos_ray.new_images.assign_new`,
the code behind ``deimos-ray assign``. So a model fitted here is an ordinary run folder
(``run_dir_``): ``deimos-ray report`` draws it, ``deimos-ray assign`` reuses it.

``X`` is either a data spec (what ``--data`` takes: a folder, an ``.npz``, ``digits``)
or an array:

- ``(n, H, W)`` or ``(n, H, W, C)`` with ``C`` 1 or 3: images;
- ``(n, d)``: feature vectors, each read as a 1 x d grayscale image. The dense models
  (DEC/IDEC, DESOM) take them; DAC's convolutions need images.

Array values are scaled to [0, 1] the way the fitted data was: uint8 by 255, uint16
by 65535, any other dtype by the minimum and maximum seen in ``fit`` (values outside
them are clipped in ``predict``). Rows keep their order: ``labels_[i]`` is row ``i``.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from deimos_ray.algorithms import get_algorithm
from deimos_ray.config_io import override_all
from deimos_ray.job import run_training_job
from deimos_ray.new_images import assign_new

ROW_ID = "row-{:09d}"


class DeepClusterer(ClusterMixin, TransformerMixin, BaseEstimator):
    """Deep clustering of images (or vectors) with DAC, DEC/IDEC or DESOM on Ray.

    Parameters:
        algorithm: ``dec`` (DEC, or IDEC with ``settings={"model.variant": "idec"}``),
            ``dac`` or ``desom``.
        n_clusters: Clusters asked for (DESOM: its map's nodes are grouped into this many
            by k-means over the prototypes). A warning says when fewer come back.
        random_state: The run's seed (``--seed``): weights, batching, k-means. ``None``
            is seed 0, so that every fit is reproducible.
        backbone: ``none`` (pixels) or a pretrained backbone (``--backbone``), whose
            features the model then clusters.
        num_workers: Ray Train workers; 0 trains inside this process (fastest on small
            data).
        use_gpu: One GPU per worker and per assignment actor.
        settings: Any other config field, as ``--set`` takes it
            (``{"model.pretrain_epochs": 50}``). The UMAP-then-Ward baseline is off
            unless ``{"baseline_umap": True}`` asks for it.
        out_dir: The run folder. ``None``: a new temporary folder per fit, kept so that
            ``predict`` works after pickling; a named folder holds one run (a second fit
            on other data is refused, as a job refuses it).
        report: Draw ``run_dir_/report/index.html`` after fitting.
        verbose: Print the job's progress lines.

    Attributes:
        labels_: The cluster of every training row, in the order of ``X``.
        embedding_: The model's embedding of every training row (DAC: its normalised
            label features).
        run_dir_: The run folder.
        metrics_: ``metrics.json`` of the run: accounting, scores beside k-means, timings.
        n_features_in_: Columns of an array ``X`` (its second dimension).
    """

    def __init__(self, algorithm: str = "dec", n_clusters: int = 10, random_state: int | None = None,
                 backbone: str = "none", num_workers: int = 0, use_gpu: bool = False,
                 settings: dict[str, Any] | None = None, out_dir: str | None = None,
                 report: bool = False, verbose: bool = False) -> None:
        self.algorithm = algorithm
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.backbone = backbone
        self.num_workers = num_workers
        self.use_gpu = use_gpu
        self.settings = settings
        self.out_dir = out_dir
        self.report = report
        self.verbose = verbose

    def fit(self, X: Any, y: Any = None) -> DeepClusterer:
        """Train on ``X`` (an array or a data spec) and assign every row; returns self.

        Raises:
            ValueError: Bad input (fewer rows than ``n_clusters``, NaN, wrong shape) or
                settings, before Ray starts.
        """
        algorithm = get_algorithm(self.algorithm)
        with tempfile.TemporaryDirectory(prefix="deimos_ray_input_") as staging:
            spec, ids, channels = self._stage(X, Path(staging), fitting=True)
            overrides = {
                "data.spec": spec, "data.channels": channels, "model.n_clusters": int(self.n_clusters),
                "seed": 0 if self.random_state is None else int(self.random_state),
                "features.backbone": self.backbone, "scaling.num_workers": int(self.num_workers),
                "scaling.use_gpu": bool(self.use_gpu),
                # A fit is often one of many (scikit-learn's checks, a grid search): UMAP's
                # baseline would add its 30 s start to each, so it is asked for by name.
                "baseline_umap": False, **(self.settings or {}),
            }
            cfg = override_all(algorithm.config_class(), overrides)
            if ids is not None and len(ids) < self.n_clusters:
                raise ValueError(f"n_samples={len(ids)} should be >= n_clusters={self.n_clusters}")
            algorithm.check(cfg)
            # Made only once the input and settings have passed: a refused fit leaves nothing.
            run = Path(self.out_dir) if self.out_dir else Path(tempfile.mkdtemp(prefix="deimos_ray_fit_"))
            with self._quiet():
                metrics = run_training_job(algorithm, cfg, run, report=self.report)
        rows = pd.read_parquet(run / "assignments", columns=["id", "cluster", "embedding"])
        rows = _in_order(rows, ids)
        self.run_dir_ = str(run)
        self.metrics_ = metrics
        self.labels_ = rows["cluster"].to_numpy(dtype=np.int64)
        self.embedding_ = np.stack(rows["embedding"].to_numpy()).astype(np.float32)
        return self

    def fit_predict(self, X: Any, y: Any = None, **kwargs: Any) -> np.ndarray:
        """Fit and return ``labels_``."""
        return self.fit(X).labels_

    def fit_transform(self, X: Any, y: Any = None, **kwargs: Any) -> np.ndarray:
        """Fit and return ``embedding_`` (no second pass over ``X``)."""
        return self.fit(X).embedding_

    def predict(self, X: Any) -> np.ndarray:
        """The cluster of every row of ``X``, assigned with the fitted run."""
        return self._assign(X)["cluster"].to_numpy(dtype=np.int64)

    def transform(self, X: Any) -> np.ndarray:
        """The model's embedding of every row of ``X`` (n, d), float32."""
        return np.stack(self._assign(X)["embedding"].to_numpy()).astype(np.float32)

    def _assign(self, X: Any) -> pd.DataFrame:
        check_is_fitted(self, "run_dir_")
        with tempfile.TemporaryDirectory(prefix="deimos_ray_input_") as staging:
            spec, ids, _ = self._stage(X, Path(staging), fitting=False)
            out = Path(staging) / "assigned"
            with self._quiet():
                metrics = assign_new(self.run_dir_, spec, out, use_gpu=self.use_gpu, report=False)
            if ids is not None and metrics["accounting"]["rejected"]:
                reasons = pd.read_parquet(out / "rejected.parquet")["reason"].value_counts().head(3)
                raise ValueError(f"{metrics['accounting']['rejected']} rows could not be assigned: "
                                 + "; ".join(reasons.index))
            rows = pd.read_parquet(out / "assignments", columns=["id", "cluster", "embedding"])
        return _in_order(rows, ids)

    def _stage(self, X: Any, staging: Path, fitting: bool) -> tuple[str, list[str] | None, int]:
        """``X`` as a data spec: a spec is itself; an array is validated, scaled to
        [0, 1] and written to ``staging/x.npz``. Returns the spec, the row ids (arrays
        only) and the channels."""
        if isinstance(X, (str, Path)):
            channels = int((self.settings or {}).get("data.channels", 1))
            return str(X), None, channels
        X = validate_data(self, X, reset=fitting, allow_nd=True, dtype="numeric")
        if fitting:
            self._scale, self._input_shape = _scale_of(X), X.shape[1:]
        elif X.shape[1:] != self._input_shape:
            raise ValueError(f"X has rows of shape {X.shape[1:]}, the model was fitted on {self._input_shape}")
        images = _as_images(X)
        lo, hi = self._scale
        scaled = np.clip((images.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
        ids = [ROW_ID.format(i) for i in range(len(X))]
        np.savez(staging / "x.npz", images=scaled, ids=np.array(ids))
        return f"npz:{staging / 'x.npz'}", ids, images.shape[-1] if images.ndim == 4 else 1

    def _quiet(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.input_tags.allow_nan = False
        # The embedding is the model's float32, whatever the input's dtype.
        tags.transformer_tags.preserves_dtype = []
        return tags


def _scale_of(X: np.ndarray) -> tuple[float, float]:
    """The (lo, hi) that map ``X``'s values to [0, 1]: the dtype's range for 8- and
    16-bit integers, else the data's own (a constant ``X`` maps to 0)."""
    if X.dtype == np.uint8:
        return 0.0, 255.0
    if X.dtype == np.uint16:
        return 0.0, 65535.0
    lo, hi = float(X.min()), float(X.max())
    return lo, hi if hi > lo else lo + 1.0


def _as_images(X: np.ndarray) -> np.ndarray:
    """(n, d) vectors -> (n, 1, d) images; (n, H, W[, C]) unchanged."""
    if X.ndim == 2:
        return X[:, None, :]
    if X.ndim == 4 and X.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (n, H, W) or (n, H, W, C) with C 1 or 3, got {X.shape}")
    if X.ndim > 4:
        raise ValueError(f"X must be 2-D (vectors) or 3-/4-D (images), got {X.ndim} dimensions")
    return X


def _in_order(rows: pd.DataFrame, ids: list[str] | None) -> pd.DataFrame:
    """``rows`` in the order of ``ids`` (an array's rows); a spec's rows sorted by id."""
    if ids is None:
        return rows.sort_values("id", ignore_index=True)
    rows = rows.set_index("id")
    missing = len(set(ids) - set(rows.index))
    if missing:
        raise RuntimeError(f"{missing} rows came back without a cluster")
    return rows.loc[ids].reset_index()


__all__ = ["DeepClusterer"]
