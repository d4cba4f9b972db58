"""``--reduce umap``: the backbone's features, embedded by UMAP, as the input every
algorithm and baseline of the run works in.

Pretrained features are high-dimensional (1,280 for EfficientNet-Lite0) and their
classes lie on curved, uneven manifolds; a UMAP embedding of them to about ten
dimensions before a clusterer is the strongest simple recipe Lowe et al. (2024,
arXiv 2406.02465) measured on such features. The embedding is fitted once per run, in
the driver, on a seeded sample of at most ``UMAP_FIT_ROWS`` rows, then every row
(sampled or not) is embedded by the fitted model's ``transform`` in Ray Data actors,
so training rows and new images go through the same function. The fitted model is
kept in the run folder (``REDUCER_FILE``) for the assignment of new images.

A row's embedding depends on that row alone, not on the block it arrives in or the
rows beside it (``transform`` moves only the new points, each with a random stream
seeded by its own start): a rerun, a resume and the assignment of the same images
give the same inputs (tested).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import ray

from deimos_ray.baselines import UMAP_FIT_ROWS, fit_sample, umap_model
from deimos_ray.config import UmapConfig
from deimos_ray.files import write_atomic

REDUCER_FILE = "reducer.pkl"
EMBED_BATCH = 2048  # rows per transform call: UMAP's per-call set-up is amortised over them


def fit_umap(x: np.ndarray, settings: UmapConfig, seed: int, max_fit_samples: int = UMAP_FIT_ROWS) -> Any:
    """A UMAP model of ``settings`` fitted on a seeded sample of at most
    ``max_fit_samples`` rows of ``x`` (N, D)."""
    x = x[fit_sample(len(x), max_fit_samples, seed)]
    if len(x) < settings.components + 2:
        raise ValueError(f"--reduce umap needs more than {settings.components + 1} rows (umap.components + 1), "
                         f"got {len(x)}")
    return umap_model(len(x), settings.components, settings.neighbours, settings.min_dist, seed).fit(x)


class Embedder:
    """Ray Data actor: replaces each row's ``x`` by its embedding under a fitted UMAP
    model (read once per actor from the object store)."""

    def __init__(self, reducer_ref: Any):
        self.reducer = ray.get(reducer_ref[0])  # wrapped in a list, so Ray passes the reference itself

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.asarray(batch["x"], dtype=np.float32).reshape(len(batch["x"]), -1)
        batch["x"] = self.reducer.transform(x).astype(np.float32)
        return batch


def embed(good: ray.data.Dataset, reducer: Any, actors: int | None = None) -> ray.data.Dataset:
    """Every row of ``good`` with ``x`` replaced by its embedding under ``reducer``,
    in at most ``actors`` Ray Data actors (default: one per CPU of the cluster)."""
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return good.map_batches(Embedder, fn_constructor_args=([ray.put(reducer)],), batch_size=EMBED_BATCH,
                            batch_format="numpy", compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors))


def save_reducer(reducer: Any, path: Path) -> None:
    """Write the fitted model (pickled, whole or not at all)."""
    write_atomic(path, lambda tmp: tmp.write_bytes(pickle.dumps(reducer)))


def load_reducer(path: Path) -> Any:
    """The fitted model a run saved (a file of the run's own folder, trusted as its
    checkpoint is)."""
    return pickle.loads(Path(path).read_bytes())
