"""Every member of every cluster in view: one page per cluster (paged when large), each
member a thumbnail whose tooltip gives its id and how sure the model is of it (its
confidence, or DESOM's distance to its node).

A page's thumbnails are drawn on one picture, a sheet (``report/clusters/c<C>_p<N>.png``,
:data:`COLUMNS` thumbnails of :data:`THUMB` pixels a row), placed on the page with CSS,
so a cluster of thousands is a few files. ``report/clusters/members.json`` records which
ids each sheet shows: a redraw keeps every sheet whose members have not changed and
reads the source only for the others, so the pages redraw without the source.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from deimos_ray.files import write_atomic, write_text
from deimos_ray.report.montages import iter_images

FOLDER = "clusters"
INDEX = "members.json"
PAGE = 300  # members per page
COLUMNS = 20  # thumbnails per sheet row
THUMB = 48  # a thumbnail's side in pixels

PAGE_STYLE = f"""
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.grid {{ line-height: 0; max-width: {COLUMNS * (THUMB + 2)}px; }}
.t {{ display: inline-block; width: {THUMB}px; height: {THUMB}px; margin: 1px; background-repeat: no-repeat; }}
.t:hover {{ outline: 2px solid #c00; }}
nav a {{ margin-right: 1em; }}
.note {{ color: #666; font-size: 90%; }}
"""


def page_name(cluster: Any, page: int, suffix: str) -> str:
    """``c<cluster>_p<page>.<suffix>`` (pages count from 1)."""
    return f"c{cluster}_p{page}.{suffix}"


def thumbnail(x: np.ndarray) -> np.ndarray:
    """(THUMB, THUMB, 3) uint8 of a (C, H, W) image in [0, 1]: small images enlarged
    without smoothing (no invented detail), large ones shrunk smoothly."""
    pixels = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)).convert("RGB")
    smaller = max(picture.size) < THUMB
    return np.asarray(picture.resize((THUMB, THUMB), Image.NEAREST if smaller else Image.BILINEAR))


def sheet_position(index: int) -> tuple[int, int]:
    """(x, y) pixel offset of the ``index``-th thumbnail on its sheet."""
    return (index % COLUMNS) * THUMB, (index // COLUMNS) * THUMB


def save_sheet(thumbs: list[np.ndarray | None], path: Path) -> None:
    """The thumbnails (None: a blank place) on one sheet, written as PNG."""
    rows = -(-len(thumbs) // COLUMNS)
    sheet = np.full((rows * THUMB, min(len(thumbs), COLUMNS) * THUMB, 3), 255, np.uint8)
    for i, thumb in enumerate(thumbs):
        if thumb is not None:
            x, y = sheet_position(i)
            sheet[y : y + THUMB, x : x + THUMB] = thumb
    write_atomic(path, lambda tmp: Image.fromarray(sheet).save(tmp, format="PNG"))


def draw_member_pages(out: Path, cfg: Any, table: pd.DataFrame, score: pd.Series, clusters: pd.DataFrame,
                      images: bool, keep: frozenset[str] = frozenset()
                      ) -> tuple[dict[str, tuple[str, int, int]], dict[str, np.ndarray]]:
    """Write ``out/clusters/`` (module docstring) for the rows of ``table``, clusters in
    the order of ``clusters`` (largest first), members surest first by ``score``.

    Args:
        images: Read the source for sheets that are missing or out of date (False: keep
            the sheets that are up to date, draw the others as lists of ids).

        keep: Rows whose pixels to hand back when this drawing reads them (the montages'
            members: the source is then read once).

    Returns:
        ``{id: (sheet file relative to out, x, y)}`` of every member with a thumbnail
        (the map's hover uses them), and ``{id: (C, H, W) pixels}`` of the rows of
        ``keep`` that were read.
    """
    folder = out / FOLDER
    folder.mkdir(exist_ok=True)
    previous = json.loads((folder / INDEX).read_text()) if (folder / INDEX).is_file() else {}
    order = table.assign(_score=score.values).sort_values("_score", ascending=False, kind="stable")
    members = {c: order.loc[order["cluster"] == c, "id"].tolist() for c in clusters.index}
    # The tooltip's number: the confidence, or the distance to the node (the score negated).
    sureness = {i: (f"confidence {v:.3g}" if "confidence" in table else f"distance {-v:.3g}")
                for i, v in zip(order["id"], order["_score"], strict=True)}
    pages = {page_name(c, n + 1, "png"): ids[n * PAGE : (n + 1) * PAGE]
             for c, ids in members.items() for n in range(-(-len(ids) // PAGE))}
    stale = [name for name, ids in pages.items() if previous.get(name) != ids or not (folder / name).is_file()]
    drawn = set(pages) - set(stale)
    kept: dict[str, np.ndarray] = {}
    if images and stale:
        wanted = {i for name in stale for i in pages[name]}
        thumbs = {}
        try:
            for i, x in iter_images(cfg, sorted(wanted)):
                thumbs[i] = thumbnail(x)
                if i in keep:
                    kept[i] = x
        except (FileNotFoundError, ValueError) as exc:  # moved or removed: pages list the ids
            print(f"[report] the cluster pages' images cannot be read from the source: {exc}")
        for name in stale:
            if any(i in thumbs for i in pages[name]):
                save_sheet([thumbs.get(i) for i in pages[name]], folder / name)
                drawn.add(name)
    for leftover in folder.glob("c*_p*.*"):  # an earlier drawing's pages, or sheets out of date
        sheet = leftover.name.rsplit(".", 1)[0] + ".png"
        if sheet not in pages or (leftover.suffix == ".png" and sheet not in drawn):
            leftover.unlink()
    write_text(folder / INDEX, json.dumps({name: ids for name, ids in pages.items() if name in drawn}))

    positions: dict[str, tuple[str, int, int]] = {}
    for c, ids in members.items():
        n_pages = -(-len(ids) // PAGE)
        for n in range(1, n_pages + 1):
            sheet = page_name(c, n, "png")
            chunk = pages[sheet]
            if sheet in drawn:
                positions.update({i: (f"{FOLDER}/{sheet}", *sheet_position(k)) for k, i in enumerate(chunk)})
            write_text(folder / page_name(c, n, "html"),
                       _page_html(c, n, n_pages, len(ids), chunk, sheet if sheet in drawn else None, sureness))
    return positions, kept


def _page_html(cluster: Any, page: int, pages: int, size: int, ids: list[str], sheet: str | None,
               sureness: dict[str, str]) -> str:
    """One cluster page: its members ``ids`` on ``sheet`` (None: as a list of ids)."""
    nav = ["<a href='../index.html'>overview</a>"]
    if page > 1:
        nav.append(f"<a href='{page_name(cluster, page - 1, 'html')}'>previous</a>")
    if page < pages:
        nav.append(f"<a href='{page_name(cluster, page + 1, 'html')}'>next</a>")
    first = (page - 1) * PAGE + 1
    head = (f"<h1>cluster {html.escape(str(cluster))}: {size} members</h1>"
            f"<nav>{''.join(nav)}</nav><p class='note'>members {first} to {first + len(ids) - 1}, "
            f"page {page} of {pages}, surest first; hover a thumbnail for its id</p>")
    if sheet is None:
        items = "".join(f"<li>{html.escape(i)}</li>" for i in ids)
        body = f"<p class='note'>No thumbnails (the source could not be read).</p><ol start='{first}'>{items}</ol>"
    else:
        cells = []
        for k, i in enumerate(ids):
            x, y = sheet_position(k)
            cells.append(f"<span class='t' title='{html.escape(i, quote=True)} ({sureness[i]})' "
                         f"style=\"background-image:url('{sheet}');background-position:-{x}px -{y}px\"></span>")
        body = f"<div class='grid'>{''.join(cells)}</div>"
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>cluster {html.escape(str(cluster))}</title><style>{PAGE_STYLE}</style></head><body>\n"
            f"{head}\n{body}\n</body></html>\n")
