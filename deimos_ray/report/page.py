"""``DIR/report/index.html``: what is in each cluster, at a glance, for any finished run.

:func:`write_report` reads only what a run left in its folder (``metrics.json``,
``config.yaml`` or a sweep's ``best_config.yaml``, ``assignments/``, ``checkpoint/``,
``trials.parquet``, ``report/images.npz``), so an old run can be redrawn without
training (``deimos-ray report DIR``); the source the config names is read only for
montage images that no earlier drawing saved. It writes into ``DIR/report/``:

- ``images.npz``: the montages' images as the page shows them (8-bit), so a redraw
  needs no source (:mod:`deimos_ray.report.montages`);
- ``cluster_<c>_confident.png`` and ``cluster_<c>_uncertain.png``: per cluster, up to 16
  of its most confident and 16 of its least confident images (DESOM: nearest to and
  farthest from their map node), as the model saw them, in a 4-wide
  :func:`torchvision.utils.make_grid`; small images are enlarged to at least 48 px;
- ``map2d.png``: the rows' embeddings projected on their first two principal components,
  coloured by cluster; the coordinates are added to the assignments as ``x2d``, ``y2d``;
  ``sizes.png``: the rows per cluster (:mod:`deimos_ray.report.map`);
- a sweep's ``score_vs_k.png``, and the algorithm's own pictures
  (``Algorithm.report_pictures``: DESOM's maps);
- ``index.html``, tying them together with the score table (the model beside its
  baselines) and, for a sweep, the trials table (:mod:`deimos_ray.report.html`).
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deimos_ray.files import write_atomic, write_text
from deimos_ray.progress import stage_line
from deimos_ray.report.html import render_page
from deimos_ray.report.input_map import read_input_map, svg_map
from deimos_ray.report.map import add_map_coordinates, draw_map, draw_sizes
from deimos_ray.report.members import draw_member_pages
from deimos_ray.report.montages import IMAGES_FILE, montage_images, pick_members, save_montage
from deimos_ray.run_folder import read_run

MAX_CLUSTERS = 60  # montages for the largest clusters only


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
    algorithm, cfg = read_run(run)
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
    picks = {c: pick_members(table[table["cluster"] == c], score) for c in shown.index} if images else {}
    wanted = sorted({i for pair in picks.values() for part in pair for i in part})
    # The member pages read every member they draw; the montages take theirs from that pass.
    thumbs, preread = draw_member_pages(out, cfg, table, score, clusters, images, keep=frozenset(wanted))
    if images:
        pixels = montage_images(out / IMAGES_FILE, cfg, wanted, preread)
        for c, (confident, uncertain) in picks.items():
            montages[c] = {}
            for kind, ids in (("confident", confident), ("uncertain", uncertain)):
                found = [pixels[i] for i in ids if i in pixels]
                if found:
                    name = f"cluster_{c}_{kind}.png"
                    save_montage(found, out / name)
                    montages[c][kind] = (name, len(found))

    def images_of(ids: list[str]) -> dict[str, np.ndarray]:
        return montage_images(out / IMAGES_FILE, cfg, ids) if images else {}

    extras = algorithm.report_pictures(run, out, images_of)
    sweep = _sweep_parts(run, out, metrics)
    map_html = None
    if (found := read_input_map(run)) is not None:
        points, method = found
        map_html = svg_map(points.merge(table[["id", "cluster"]], on="id"), method, thumbs)
    page = render_page(run, metrics, clusters, shown, montages, extras, sweep, labelled,
                       algorithm.confidence_words, map_html)
    return write_text(out / "index.html", page)


def _score_column(table: pd.DataFrame) -> pd.Series:
    """Higher is surer: the model's confidence, or DESOM's distance to the node, negated."""
    if "confidence" in table:
        return table["confidence"].astype(float)
    if "bmu_distance" in table:
        return -table["bmu_distance"].astype(float)
    return pd.Series(np.zeros(len(table)), index=table.index)


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


def draw_report(out: Path, job: str) -> None:
    """Draw ``out/report/`` (:func:`write_report`) at the end of a job, sweep or
    assignment, and say where to open it. The run has finished whatever happens here: a
    failure is a warning that names the command to redraw."""
    t = time.perf_counter()
    try:
        path = write_report(out)
    except Exception as exc:  # the clustering is written; the pictures can be drawn later
        warnings.warn(f"[{job}] the report could not be drawn ({type(exc).__name__}: {exc}); "
                      f"redraw it with: deimos-ray report {out}", stacklevel=2)
        return
    stage_line(job, f"report: open {path}", time.perf_counter() - t)
