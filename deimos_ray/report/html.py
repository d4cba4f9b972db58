"""The HTML of ``report/index.html``: the score table, a sweep's trials, the overview
pictures and a block per cluster. The page names only files in ``report/`` and loads
nothing from the network."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deimos_ray.metrics import EXTERNAL, HELDOUT, INTERNAL
from deimos_ray.report.map import clusters_text
from deimos_ray.report.members import page_name


def _score_table(scores: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per metric (label scores first, as the job prints them), one column per
    method; counts as whole numbers."""
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
.map { display: inline-block; margin: 0 1em 1em 0; } .map svg { border: 1px solid #ddd; }
.map figcaption { font-size: 0.75em; color: #555; max-width: 480px; }
#tip { position: fixed; display: none; background: #fff; border: 1px solid #999; padding: 4px;
       font-size: 12px; pointer-events: none; }
#tip-image { width: 48px; height: 48px; background-repeat: no-repeat; }
"""


def render_page(run: Path, metrics: dict[str, Any], clusters: pd.DataFrame, shown: pd.DataFrame,
                montages: dict[int, dict[str, tuple[str, int]]], extras: list[str],
                sweep: dict[str, Any] | None, labelled: bool,
                confidence_words: tuple[str, str] = ("most confident", "least confident"),
                map_html: str | None = None) -> str:
    """The HTML of ``index.html``; ``confidence_words`` name a cluster's surest and
    least sure members (the algorithm's); ``map_html`` is the map of the input
    representation (:func:`deimos_ray.report.input_map.svg_map`), when the run has one."""
    accounting = metrics.get("accounting", {})
    scores = _score_table(metrics.get("scores", {}))
    parts = [f"<h1>{html.escape(run.name)}: {clusters_text(len(clusters))}</h1>",
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
    parts.append("<h2>Map of the input, cluster sizes, the model's embedding</h2>")
    if map_html:
        parts.append(map_html)
    parts.append("<p class='pictures'><img src='sizes.png' alt='rows per cluster'> "
                 "<img src='map2d.png' alt='the model embedding on its first two principal components'></p>")
    if extras:
        parts += ["<h2>The self-organising map</h2>", "<p class='pictures'>"
                  + " ".join(f"<img src='{name}' alt='{name[:-4]}'>" for name in extras) + "</p>"]
    parts.append("<h2>Clusters, largest first</h2><p class='note'>Each cluster's title opens a page "
                 "with every member.</p>")
    if not montages:
        parts.append("<p class='note'>No images drawn (the source could not be read again).</p>")
    if len(clusters) > len(shown):
        parts.append(f"<p class='note'>Montages of the {len(shown)} largest of {len(clusters)} clusters.</p>")
    surest, least = confidence_words
    for c, row in shown.iterrows():
        title = f"cluster {c}: {int(row['size'])} rows ({100 * row['share']:.1f} %)"
        if labelled and not pd.isna(row.get("majority_label")):
            title += f", majority label {row['majority_label']} ({100 * row['majority_share']:.0f} %)"
        figures = "".join(
            f"<figure><img class='montage' src='{name}' alt='cluster {c}, {kind}'>"
            f"<figcaption>{n} {surest if kind == 'confident' else least}</figcaption></figure>"
            for kind, (name, n) in montages.get(c, {}).items())
        link = f"clusters/{page_name(c, 1, 'html')}"
        parts.append(f"<div class='cluster'><h3><a href='{link}'>{html.escape(title)}</a></h3>{figures}</div>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(run.name)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
