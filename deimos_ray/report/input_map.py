"""The overview's map of the input representation: where the rows lie before any model
saw them (the backbone's features, or the pixels), each point coloured by its cluster.

t-SNE (scikit-learn, PCA to 50 dimensions first) on a seeded sample of at most
:data:`SAMPLE` rows: t-SNE keeps neighbourhoods, which is what a reader checks a
clustering against, and on a sample its cost does not grow with the collection; PCA of
the model's embedding (:mod:`deimos_ray.report.map`) piles DAC's near one-hot label
features onto a few points. The job computes it while the rows are at hand and keeps
it in ``DIR/input_map.parquet`` (``id``, ``map_x``, ``map_y``), so the report redraws it
from the run's files; the page draws it as SVG whose points show their image and id on
hover (:func:`svg_map`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib.colors import to_hex
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE

from deimos_ray.files import write_atomic
from deimos_ray.report.montages import keep_ids

FILE = "input_map.parquet"
SAMPLE = 2000  # rows on the map
MIN_ROWS = 10  # fewer rows: no map (t-SNE needs a neighbourhood)
PCA_DIMS = 50
SIDE = 480  # the SVG's side in pixels


def write_input_map(out: Path, data: Any, seed: int) -> None:
    """Compute the map of ``data``'s rows (a :class:`~deimos_ray.data.prepare.PreparedData`,
    its ``x`` column) and write ``out/input_map.parquet``; nothing with fewer than
    :data:`MIN_ROWS` rows."""
    (out / FILE).unlink(missing_ok=True)  # never an earlier run's map
    if data.num_rows < MIN_ROWS:
        return
    rng = np.random.default_rng(seed)
    picked = np.asarray(sorted(rng.choice(data.ids, size=min(SAMPLE, data.num_rows), replace=False)), dtype=object)
    rows = data.good.select_columns(["id", "x"]).map_batches(keep_ids, fn_kwargs={"ids": picked}, batch_format="numpy")
    ids, xs = [], []
    for batch in rows.iter_batches(batch_size=1024, batch_format="numpy"):
        ids.append(batch["id"])
        xs.append(np.asarray(batch["x"], dtype=np.float32).reshape(len(batch["id"]), -1))
    x = np.concatenate(xs).astype(np.float64)
    if x.shape[1] > PCA_DIMS:
        x = PCA(n_components=min(PCA_DIMS, len(x)), random_state=seed).fit_transform(x)
    xy = TSNE(n_components=2, init="pca", perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed).fit_transform(x)
    table = pa.table({"id": np.concatenate(ids).astype(str), "map_x": xy[:, 0].astype(np.float32),
                      "map_y": xy[:, 1].astype(np.float32)})
    method = {"method": "t-SNE", "of": data.representation, "rows": len(x), "of_rows": data.num_rows}
    table = table.replace_schema_metadata({"deimos_ray_map": json.dumps(method)})
    write_atomic(out / FILE, lambda tmp: pq.write_table(table, tmp))


def read_input_map(run: Path) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """(points, how they were computed) of the run's input map, or None."""
    if not (run / FILE).is_file():
        return None
    table = pq.read_table(run / FILE)
    return table.to_pandas(), json.loads(table.schema.metadata[b"deimos_ray_map"])


def cluster_colours(clusters: list[Any]) -> dict[Any, str]:
    """A hex colour per cluster (the tab10 / tab20 cycle)."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20" if len(clusters) > 10 else "tab10")
    return {c: to_hex(cmap(i % cmap.N)) for i, c in enumerate(clusters)}


def svg_map(points: pd.DataFrame, method: dict[str, Any], thumbs: dict[str, tuple[str, int, int]]) -> str:
    """The map as inline SVG with a tooltip that shows a point's thumbnail (from the
    cluster pages' sheets, ``thumbs``) and its id and cluster."""
    x, y = points["map_x"].to_numpy(), points["map_y"].to_numpy()
    span = max(np.ptp(x), np.ptp(y), 1e-9)
    px = 10 + (x - x.min()) / span * (SIDE - 20)
    py = 10 + (y - y.min()) / span * (SIDE - 20)
    colours = cluster_colours(sorted(points["cluster"].unique()))
    radius = 4 if len(points) <= 500 else 2.5
    circles = []
    for i, (row_id, cluster) in enumerate(zip(points["id"], points["cluster"], strict=True)):
        sheet = thumbs.get(row_id)
        image = f" data-s='{sheet[0]}' data-x='{sheet[1]}' data-y='{sheet[2]}'" if sheet else ""
        circles.append(f"<circle cx='{px[i]:.1f}' cy='{py[i]:.1f}' r='{radius}' fill='{colours[cluster]}' "
                       f"data-id='{html.escape(str(row_id), quote=True)}' data-c='{cluster}'{image}/>")
    caption = (f"{method['method']} of the {html.escape(str(method['of']))} of {method['rows']} rows"
               + (f" (a sample of {method['of_rows']})" if method["rows"] < method["of_rows"] else "")
               + ", coloured by cluster; hover a point for its image and id")
    return (f"<figure class='map'><svg id='map' width='{SIDE}' height='{SIDE}' viewBox='0 0 {SIDE} {SIDE}'>"
            + "".join(circles) + f"</svg><figcaption>{caption}</figcaption></figure>"
            "<div id='tip'><div id='tip-image'></div><div id='tip-text'></div></div>" + MAP_SCRIPT)


MAP_SCRIPT = """<script>
(function () {
  var tip = document.getElementById('tip'), image = document.getElementById('tip-image'),
      text = document.getElementById('tip-text');
  document.getElementById('map').addEventListener('mousemove', function (e) {
    var p = e.target;
    if (p.tagName !== 'circle') { tip.style.display = 'none'; return; }
    text.textContent = p.dataset.id + ' (cluster ' + p.dataset.c + ')';
    if (p.dataset.s) {
      image.style.display = 'block';
      image.style.backgroundImage = "url('" + p.dataset.s + "')";
      image.style.backgroundPosition = '-' + p.dataset.x + 'px -' + p.dataset.y + 'px';
    } else { image.style.display = 'none'; }
    tip.style.left = (e.clientX + 12) + 'px';
    tip.style.top = (e.clientY + 12) + 'px';
    tip.style.display = 'block';
  });
  document.getElementById('map').addEventListener('mouseleave', function () { tip.style.display = 'none'; });
})();
</script>"""
