"""The overview's pictures of all rows: the 2-D map of the embedding (its coordinates
written into the assignments as ``x2d``, ``y2d``) and the cluster sizes.

PCA rather than UMAP or t-SNE: it needs no new dependency, is deterministic and linear
in the rows (a 73,031-tile run projects in a second), and the embeddings it projects are
already low-dimensional (DEC's z, DESOM's z, DAC's label features).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from deimos_ray.files import write_atomic, write_staged_dir  # noqa: E402

MAP_POINTS = 20_000  # points drawn on the 2-D map (a seeded sample beyond that)


def clusters_text(n: int) -> str:
    """``1 cluster`` or ``N clusters``."""
    return f"{n} cluster" + ("" if n == 1 else "s")


def add_map_coordinates(assignments_dir: Path, seed: int) -> pd.DataFrame:
    """Project the ``embedding`` column on its first two principal components (fitted on
    a seeded sample of at most :data:`MAP_POINTS` rows), write them into every
    assignments file as ``x2d``, ``y2d`` (a staged copy renamed into place), and return
    the rows without their embeddings."""
    files = sorted(assignments_dir.glob("*.parquet"))
    tables = [pq.read_table(f) for f in files]
    embedding = np.concatenate([np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
                                for t in tables]).astype(np.float64)
    if embedding.shape[1] < 2:  # a one-dimensional embedding is its own map
        embedding = np.pad(embedding, ((0, 0), (0, 2 - embedding.shape[1])))
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(embedding), size=min(len(embedding), MAP_POINTS), replace=False)
    pca = PCA(n_components=2, random_state=seed).fit(embedding[sample])
    xy = pca.transform(embedding).astype(np.float32)

    def write(staging: Path) -> None:
        staging.mkdir(parents=True)
        start = 0
        for path, t in zip(files, tables, strict=True):
            part = xy[start : start + t.num_rows]
            start += t.num_rows
            for name, values in (("x2d", part[:, 0]), ("y2d", part[:, 1])):
                column = pa.array(values, pa.float32())
                if name in t.column_names:
                    t = t.set_column(t.schema.get_field_index(name), name, column)
                else:
                    t = t.append_column(name, column)
            pq.write_table(t, staging / path.name)

    write_staged_dir(assignments_dir, write)
    keep = [c for c in tables[0].column_names if c not in ("embedding", "topk_clusters", "topk_probs")]
    frame = pd.concat([t.select(keep).to_pandas() for t in tables], ignore_index=True)
    return frame.assign(x2d=xy[:, 0], y2d=xy[:, 1])


def _colours(n: int) -> np.ndarray:
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return np.array([cmap(i % cmap.N) for i in range(n)])


def draw_sizes(clusters: pd.DataFrame, path: Path) -> Path:
    """A bar per cluster (largest first): its number of rows."""
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(clusters) + 2), 3.2))
    ax.bar(range(len(clusters)), clusters["size"], color="#4472c4")
    ax.set_xticks(range(len(clusters)), [str(c) for c in clusters.index], fontsize=7,
                  rotation=90 if len(clusters) > 30 else 0)
    ax.set_xlabel("cluster")
    ax.set_ylabel("rows")
    ax.set_title(f"{int(clusters['size'].sum())} rows in {clusters_text(len(clusters))}")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def draw_map(table: pd.DataFrame, path: Path, seed: int) -> Path:
    """``x2d``, ``y2d`` of at most :data:`MAP_POINTS` rows, coloured by cluster."""
    rows = table.sample(n=min(len(table), MAP_POINTS), random_state=seed) if len(table) > MAP_POINTS else table
    clusters = sorted(table["cluster"].unique())
    colour = dict(zip(clusters, _colours(len(clusters)), strict=True))
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(rows["x2d"], rows["y2d"], c=[colour[c] for c in rows["cluster"]],
               s=max(2, 40 / np.sqrt(max(len(rows), 1) / 100)), alpha=0.7, linewidths=0)
    for c in clusters[:20]:  # the centre of each cluster, labelled
        members = table[table["cluster"] == c]
        ax.annotate(str(c), (members["x2d"].median(), members["y2d"].median()), fontsize=9, weight="bold",
                    ha="center", va="center", bbox={"boxstyle": "round", "fc": "white", "alpha": 0.7})
    ax.set_xlabel("first principal component of the embedding")
    ax.set_ylabel("second")
    ax.set_title(f"{len(table)} rows" + (f" ({len(rows)} drawn)" if len(rows) < len(table) else ""))
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path
