"""``DIR/report/index.html``: what is in each cluster, at a glance, for any finished run.

:func:`write_report` reads only what a run left in its folder (``metrics.json``,
``config.yaml`` or a sweep's ``best_config.yaml``, ``assignments/``, ``checkpoint/``,
``trials.parquet``, ``report/images.npz``), so an old run can be redrawn without
training (``python jobs/report.py DIR``); the source the config names is read only for
montage images that no earlier drawing saved. It writes into ``DIR/report/``:

- ``images.npz``: the montages' images as the page shows them (8-bit), so a redraw
  needs no source;

- ``cluster_<c>_confident.png`` and ``cluster_<c>_uncertain.png``: per cluster, up to 16
  of its most confident and 16 of its least confident images (DESOM: nearest to and
  farthest from their map node), as the model saw them, in a 4-wide
  :func:`torchvision.utils.make_grid`; small images are enlarged to at least 48 px;
- ``map2d.png``: the rows' embeddings projected on their first two principal components,
  coloured by cluster; the coordinates are added to the assignments as ``x2d``, ``y2d``;
- ``sizes.png``: the rows per cluster;
- a sweep's ``score_vs_k.png``, and DESOM's map pictures when the run has them;
- ``index.html``, tying them together with the score table (the model beside its
  baselines) and, for a sweep, the trials table. The page names only files in
  ``report/`` and loads nothing from the network.

PCA rather than UMAP or t-SNE: it needs no new dependency, is deterministic and linear
in the rows (a 73,031-tile run projects in a second), and the embeddings it projects are
already low-dimensional (DEC's z, DESOM's z, DAC's label features).
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from deimos_ray.files import save_npz, write_atomic, write_staged_dir, write_text  # noqa: E402

PER_GRID = 16  # images per montage
GRID_COLUMNS = 4
MIN_SIDE = 48  # smaller images are enlarged (an integer factor) to at least this
MAX_SIDE = 96  # images are decoded at most this large for the page
MAX_CLUSTERS = 60  # montages for the largest clusters only
IMAGES_FILE = "images.npz"  # the montages' pixels, kept for the next drawing
MAP_POINTS = 20_000  # points drawn on the 2-D map (a seeded sample beyond that)
DESOM_PICTURES = ("prototypes.png", "hits.png", "umatrix.png", "members.png")


class NotAFinishedRun(ValueError):
    """The folder holds no finished run (no ``metrics.json`` or no ``assignments/``)."""


def run_config(run_dir: Path) -> tuple[Any, Any]:
    """(algorithm, job config) of a finished run folder: a sweep's ``best_config.yaml``
    when there is one (the config of the clustering it adopted), else ``config.yaml``.

    Raises:
        NotAFinishedRun: ``metrics.json``, ``assignments/`` or the config is missing.
    """
    from deimos_ray.algorithms import ALGORITHMS
    from deimos_ray.config import from_dict, load_yaml

    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file() or not (run_dir / "assignments").is_dir():
        raise NotAFinishedRun(f"{run_dir} is not a finished run (it has no metrics.json and assignments/)")
    job = json.loads(metrics_path.read_text()).get("job")
    by_job = {a.job: a for a in ALGORITHMS.values()}
    if job not in by_job:
        raise NotAFinishedRun(f"{metrics_path} names no known job ({job!r})")
    algorithm = by_job[job]
    path = run_dir / "best_config.yaml"
    if not path.is_file():
        path = run_dir / "config.yaml"
    if not path.is_file():
        raise NotAFinishedRun(f"{run_dir} has no config.yaml")
    return algorithm, from_dict(algorithm.config_class, load_yaml(path))


def write_report(run_dir: str | Path, images: bool = True) -> Path:
    """Draw ``run_dir/report/`` (module docstring) and return the page's path.

    Args:
        run_dir: A finished job's, sweep's or assignment's folder.
        images: Re-read the montage images from the source (False: the page without
            montages, when the source is no longer reachable).

    Raises:
        NotAFinishedRun: The folder holds no finished run.
    """
    run = Path(run_dir).resolve()
    algorithm, cfg = run_config(run)
    metrics = json.loads((run / "metrics.json").read_text())
    out = run / "report"
    out.mkdir(exist_ok=True)
    for stale in out.glob("cluster_*.png"):  # an earlier drawing's clusters
        stale.unlink()

    table = add_map_coordinates(run / "assignments", cfg.seed)
    score = _score_column(table)
    labelled = bool((table["label"] >= 0).any())
    clusters = cluster_summary(table, labelled)
    draw_sizes(clusters, out / "sizes.png")
    draw_map(table, out / "map2d.png", cfg.seed)

    montages: dict[int, dict[str, tuple[str, int]]] = {}
    shown = clusters.head(MAX_CLUSTERS)
    if images:
        picks = {c: pick_members(table[table["cluster"] == c], score) for c in shown.index}
        wanted = sorted({i for pair in picks.values() for part in pair for i in part})
        pixels = montage_images(out / IMAGES_FILE, cfg, wanted)
        for c, (confident, uncertain) in picks.items():
            montages[c] = {}
            for kind, ids in (("confident", confident), ("uncertain", uncertain)):
                found = [pixels[i] for i in ids if i in pixels]
                if found:
                    name = f"cluster_{c}_{kind}.png"
                    save_montage(found, out / name)
                    montages[c][kind] = (name, len(found))

    extras = []
    if algorithm.name == "desom":
        extras = _desom_pictures(run, out)
    sweep = _sweep_parts(run, out, metrics)
    page = render_page(run, metrics, clusters, shown, montages, extras, sweep, labelled,
                       "DESOM's map" if algorithm.name == "desom" else "the model")
    path = write_text(out / "index.html", page)
    print(f"[report] {path}: {_clusters(len(clusters))}, montages for {len(montages)}")
    return path


def _clusters(n: int) -> str:
    return f"{n} cluster" + ("" if n == 1 else "s")


def _score_column(table: pd.DataFrame) -> pd.Series:
    """Higher is surer: the model's confidence, or DESOM's distance to the node, negated."""
    if "confidence" in table:
        return table["confidence"].astype(float)
    if "bmu_distance" in table:
        return -table["bmu_distance"].astype(float)
    return pd.Series(np.zeros(len(table)), index=table.index)


def add_map_coordinates(assignments_dir: Path, seed: int) -> pd.DataFrame:
    """Project the ``embedding`` column on its first two principal components (fitted on
    a seeded sample of at most :data:`MAP_POINTS` rows), write them into every
    assignments file as ``x2d``, ``y2d`` (a staged copy renamed into place), and return
    the rows without their embeddings."""
    from sklearn.decomposition import PCA

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


def cluster_summary(table: pd.DataFrame, labelled: bool) -> pd.DataFrame:
    """Per cluster, largest first: ``size``, ``share`` and, with labels, the majority
    label and its share of the cluster's labelled rows."""
    sizes = table["cluster"].value_counts()
    summary = pd.DataFrame({"size": sizes, "share": sizes / len(table)})
    if labelled:
        known = table[table["label"] >= 0]
        counts = known.groupby(["cluster", "label"]).size()
        majority = counts.groupby(level=0).idxmax().map(lambda pair: pair[1])
        purity = counts.groupby(level=0).max() / counts.groupby(level=0).sum()
        summary["majority_label"] = majority.reindex(summary.index).astype("Int64")
        summary["majority_share"] = purity.reindex(summary.index)
    summary.index.name = "cluster"
    return summary.sort_values("size", ascending=False, kind="stable")


def pick_members(rows: pd.DataFrame, score: pd.Series) -> tuple[list[str], list[str]]:
    """The ids of up to :data:`PER_GRID` most confident rows of a cluster (surest first)
    and of up to as many least confident ones (least sure first), never the same row
    twice: a cluster of 20 shows 10 and 10."""
    order = score.loc[rows.index].sort_values(ascending=False, kind="stable").index
    ids = rows.loc[order, "id"].tolist()
    top = min(PER_GRID, (len(ids) + 1) // 2)
    bottom = min(PER_GRID, len(ids) - top)
    return ids[:top], ids[len(ids) - bottom:][::-1]


def montage_images(saved_file: Path, cfg: Any, ids: list[str]) -> dict[str, np.ndarray]:
    """(C, H, W) pixels in [0, 1] of the rows ``ids``: those an earlier drawing saved in
    ``saved_file``, the others re-read from the source (:func:`load_images`); when any
    was read, every one found is saved there again. Rows neither saved nor readable are
    left out, with a note when the source cannot be read at all (moved, or removed)."""
    saved: dict[str, np.ndarray] = {}
    if saved_file.is_file():
        with np.load(saved_file, allow_pickle=False) as stored:
            saved = {str(i): x.astype(np.float32) / 255 for i, x in zip(stored["ids"], stored["x"], strict=True)}
    missing = [i for i in ids if i not in saved]
    read: dict[str, np.ndarray] = {}
    if missing:
        try:
            read = load_images(cfg, missing)
        except (FileNotFoundError, ValueError) as exc:
            print(f"[report] {len(missing)} montage image(s) not saved by an earlier drawing, and the "
                  f"source cannot be read: {exc}")
    saved.update(read)
    found = {i: saved[i] for i in ids if i in saved}
    if read:  # a redraw that read nothing new leaves the file as it is
        # 8-bit, as the montage PNGs hold them: the same pictures when drawn again.
        x = np.stack([np.round(np.clip(v, 0, 1) * 255).astype(np.uint8) for v in found.values()])
        save_npz(saved_file, ids=np.array(list(found), dtype=str), x=x)
    return found


def load_images(cfg: Any, ids: list[str]) -> dict[str, np.ndarray]:
    """(C, H, W) pixels in [0, 1] of the rows ``ids``, re-read from the run's source
    through its own preprocessing (tiles cut the same way), at most :data:`MAX_SIDE`
    pixels on a side. Rows that cannot be read again are left out."""
    import dataclasses

    from deimos_ray.data.prepare import _decode_size
    from deimos_ray.data.preprocess import preprocess, resolve_image_spec
    from deimos_ray.data.sources import load_source

    if not ids:
        return {}
    data_cfg = _decode_size(cfg.data, cfg.features)
    source = load_source(data_cfg)
    if source.dataset is None:
        return {}
    shape = source.image_shape[:2] if source.image_shape else None
    spec = resolve_image_spec(shape, data_cfg)
    if spec.size[0] > MAX_SIDE or spec.size[1] > MAX_SIDE:
        side = MAX_SIDE / max(spec.size)
        spec = dataclasses.replace(spec, size=(max(4, round(spec.size[0] * side)), max(4, round(spec.size[1] * side))))
    wanted = np.asarray(ids, dtype=object)
    sources = np.asarray(sorted({i.split("@y")[0] for i in ids}) if cfg.data.tile else ids, dtype=object)
    ds = source.dataset.map_batches(_keep_ids, fn_kwargs={"ids": sources}, batch_format="numpy")
    ds = preprocess(ds, spec).map_batches(_keep_ids, fn_kwargs={"ids": wanted}, batch_format="numpy")
    found = {}
    for batch in ds.select_columns(["id", "x", "ok"]).iter_batches(batch_size=256, batch_format="numpy"):
        for i, x, ok in zip(batch["id"], batch["x"], batch["ok"], strict=True):
            if ok:
                found[str(i)] = np.asarray(x, dtype=np.float32)
    return found


def _keep_ids(batch: dict[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
    mask = np.isin(batch["id"], ids)
    return {name: values[mask] for name, values in batch.items()}


def montage_size(n: int, side: tuple[int, int]) -> tuple[int, int]:
    """(width, height) in pixels of the montage of ``n`` images of (H, W) ``side`` after
    enlarging (2 px padding, :data:`GRID_COLUMNS` wide, as :func:`save_montage` draws)."""
    factor = max(1, -(-MIN_SIDE // min(side)))
    h, w = side[0] * factor, side[1] * factor
    cols = min(n, GRID_COLUMNS)
    rows = -(-n // cols)
    return cols * (w + 2) + 2, rows * (h + 2) + 2


def save_montage(images: list[np.ndarray], path: Path) -> Path:
    """The (C, H, W) images in a :data:`GRID_COLUMNS`-wide grid, each enlarged by an
    integer factor (nearest neighbour: no invented detail) to at least :data:`MIN_SIDE`
    pixels, written as a PNG at one screen pixel per grid pixel."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torchvision.utils import make_grid

    batch = torch.from_numpy(np.stack(images)).clamp(0, 1)
    factor = max(1, -(-MIN_SIDE // min(batch.shape[-2:])))
    if factor > 1:
        batch = F.interpolate(batch, scale_factor=factor, mode="nearest")
    grid = make_grid(batch, nrow=GRID_COLUMNS, padding=2, pad_value=1.0)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    write_atomic(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))
    return path


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
    ax.set_title(f"{int(clusters['size'].sum())} rows in {_clusters(len(clusters))}")
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


def _desom_pictures(run: Path, out: Path) -> list[str]:
    """DESOM's map pictures in ``report/``, drawn from the checkpoint if missing."""
    if not all((out / name).is_file() for name in ("hits.png", "umatrix.png")) and (run / "checkpoint").is_dir():
        from deimos_ray.report.pictures import draw_desom_report

        draw_desom_report(run)
    return [name for name in DESOM_PICTURES if (out / name).is_file()]


def _sweep_parts(run: Path, out: Path, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """A sweep's plot (copied into ``report/``) and trials table, or None."""
    if "sweep" not in metrics or not (run / "trials.parquet").is_file():
        return None
    plot = None
    if (run / "score_vs_k.png").is_file():
        write_atomic(out / "score_vs_k.png", lambda tmp: shutil.copyfile(run / "score_vs_k.png", tmp))
        plot = "score_vs_k.png"
    trials = pd.read_parquet(run / "trials.parquet")
    columns = [c for c in trials.columns if c not in ("trial_dir", "trial_id", "config") and
               pd.api.types.is_numeric_dtype(trials[c])]
    return {"plot": plot, "trials": trials[columns], "summary": metrics["sweep"]}


def _score_table(scores: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per metric (label scores first, as the job prints them), one column per
    method; counts as whole numbers."""
    from deimos_ray.metrics import EXTERNAL, HELDOUT, INTERNAL

    frame = pd.DataFrame(scores)
    order = [k for k in (*EXTERNAL, *HELDOUT, *INTERNAL) if k in frame.index]
    frame = frame.loc[order + sorted(set(frame.index) - set(order))].astype(object)
    if "n_clusters" in frame.index:
        frame.loc["n_clusters"] = [v if pd.isna(v) else int(v) for v in frame.loc["n_clusters"]]
    return frame


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if isinstance(value, int | np.integer):
        return str(value)
    if isinstance(value, float | np.floating):
        return "-" if np.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def _table(frame: pd.DataFrame, index_name: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [index_name, *frame.columns])
    body = "".join("<tr><th>" + html.escape(str(i)) + "</th>" + "".join(f"<td>{_cell(v)}</td>" for v in row)
                   + "</tr>" for i, row in zip(frame.index, frame.itertuples(index=False), strict=True))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
thead th { background: #f0f0f0; }
.pictures img { max-width: 48%; margin-right: 1%; vertical-align: top; }
.cluster { display: inline-block; vertical-align: top; margin: 0 1.5em 1.5em 0; }
.cluster h3 { font-size: 0.95em; margin: 0.2em 0; }
.cluster figure { display: inline-block; margin: 0 0.6em 0 0; }
.cluster figcaption { font-size: 0.75em; color: #555; }
.montage { image-rendering: pixelated; }
.note { color: #555; font-size: 0.85em; }
"""


def render_page(run: Path, metrics: dict[str, Any], clusters: pd.DataFrame, shown: pd.DataFrame,
                montages: dict[int, dict[str, tuple[str, int]]], extras: list[str],
                sweep: dict[str, Any] | None, labelled: bool, model: str) -> str:
    """The HTML of ``index.html``."""
    accounting = metrics.get("accounting", {})
    scores = _score_table(metrics.get("scores", {}))
    parts = [f"<h1>{html.escape(run.name)}: {_clusters(len(clusters))}</h1>",
             f"<p>{html.escape(str(metrics.get('job')))} on "
             f"{html.escape(str(metrics.get('representation', 'pixels')))}; "
             f"{accounting.get('inputs', '?')} inputs = {accounting.get('assigned', '?')} assigned + "
             f"{accounting.get('rejected', '?')} rejected (rejected.parquet says why)</p>"]
    if not scores.empty:
        parts += ["<h2>Scores</h2>",
                  "<p class='note'>The model beside the baselines on the same rows; label scores only "
                  "where the data has labels (never used to train or choose).</p>",
                  _table(scores, "metric")]
    if sweep is not None:
        summary = sweep["summary"]
        parts += ["<h2>Sweep</h2>",
                  f"<p>{summary.get('trials')} trials, chosen by {html.escape(str(summary.get('objective')))} "
                  f"(scored on {html.escape(str(summary.get('reference_space')))}): "
                  f"{html.escape(json.dumps(summary.get('best', {})))}</p>"]
        if sweep["plot"]:
            parts.append(f"<p class='pictures'><img src='{sweep['plot']}' alt='scores against k'></p>")
        parts.append(_table(sweep["trials"], "trial"))
    parts += ["<h2>Cluster sizes and map</h2>", "<p class='pictures'>"
              "<img src='sizes.png' alt='rows per cluster'> <img src='map2d.png' alt='2-D map of the embedding'></p>"]
    if extras:
        parts += ["<h2>The self-organising map</h2>", "<p class='pictures'>"
                  + " ".join(f"<img src='{name}' alt='{name[:-4]}'>" for name in extras) + "</p>"]
    parts.append("<h2>Clusters, largest first</h2>")
    if not montages:
        parts.append("<p class='note'>No images drawn (the source could not be read again).</p>")
    if len(clusters) > len(shown):
        parts.append(f"<p class='note'>Montages of the {len(shown)} largest of {len(clusters)} clusters.</p>")
    surest = "nearest their map node" if model == "DESOM's map" else "most confident"
    least = "farthest from it" if model == "DESOM's map" else "least confident"
    for c, row in shown.iterrows():
        title = f"cluster {c}: {int(row['size'])} rows ({100 * row['share']:.1f} %)"
        if labelled and not pd.isna(row.get("majority_label")):
            title += f", majority label {row['majority_label']} ({100 * row['majority_share']:.0f} %)"
        figures = "".join(
            f"<figure><img class='montage' src='{name}' alt='cluster {c}, {kind}'>"
            f"<figcaption>{n} {surest if kind == 'confident' else least}</figcaption></figure>"
            for kind, (name, n) in montages.get(c, {}).items())
        parts.append(f"<div class='cluster'><h3>{html.escape(title)}</h3>{figures}</div>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(run.name)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
