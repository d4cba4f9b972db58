"""Image mosaics and self-organising-map grids, drawn from a trained model and the
rows' map cells (a run's files), so they can be redrawn without training again
(``deimos-ray report DIR``).

DESOM maps (``DIR/report/``, drawn by ``DESOMAlgorithm.report_pictures``):
- ``prototypes.png``: each map cell is the decoder's image of its prototype;
- ``hits.png``: how many images have each cell as best-matching unit;
- ``umatrix.png``: mean distance from each prototype to its grid neighbours (high values
  mark borders between regions of the map).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deimos_ray.files import write_atomic  # noqa: E402
from deimos_ray.models.som import umatrix  # noqa: E402


def mosaic(images: np.ndarray, rows: int, cols: int, pad: int = 1) -> np.ndarray:
    """Tile (rows*cols, C, H, W) images in [0, 1] into one (H', W') or (H', W', 3) array,
    row-major, separated by ``pad`` white pixels."""
    n, c, h, w = images.shape
    canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.float32)
    for k in range(min(n, rows * cols)):
        r, q = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y : y + h, x : x + w] = np.clip(images[k].transpose(1, 2, 0), 0, 1)
    return canvas[..., 0] if c == 1 else canvas


def save_mosaic(images: np.ndarray, rows: int, cols: int, path: Path, title: str) -> Path:
    """A titled figure of :func:`mosaic`."""
    canvas = mosaic(images, rows, cols)
    fig, ax = plt.subplots(figsize=(max(4, cols * 0.6), max(4, rows * 0.6) + 0.4))
    ax.imshow(canvas, cmap="gray" if canvas.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def save_grid_values(values: np.ndarray, path: Path, title: str, cmap: str, annotate: bool) -> Path:
    """A (rows, cols) array as a heat map with a colour bar, numbers in the cells if asked."""
    rows, cols = values.shape
    fig, ax = plt.subplots(figsize=(max(4, cols * 0.5) + 1, max(4, rows * 0.5)))
    im = ax.imshow(values, cmap=cmap, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if annotate and rows * cols <= 400:
        for r in range(rows):
            for c in range(cols):
                v = values[r, c]
                ax.text(c, r, f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}",
                        ha="center", va="center", fontsize=7, color="white" if v < values.mean() else "black")
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    ax.set_title(title)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def hit_counts(som_rows: np.ndarray, som_cols: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) number of assigned rows per map cell."""
    hits = np.zeros((rows, cols), dtype=np.int64)
    np.add.at(hits, (np.asarray(som_rows), np.asarray(som_cols)), 1)
    return hits


def draw_desom_pictures(model, som_rows: np.ndarray, som_cols: np.ndarray, out: Path) -> list[Path]:
    """Draw ``prototypes.png`` (image inputs only), ``hits.png`` and ``umatrix.png`` into
    ``out`` from a trained DESOM and the map cell of every assigned row."""
    rows, cols = model.cfg.map_size
    out.mkdir(exist_ok=True)
    written = []
    if len(model.input_shape) == 3:
        images = model.decode_prototypes().numpy()
        written.append(save_mosaic(images, rows, cols, out / "prototypes.png",
                                   f"decoded prototypes, {rows}x{cols} map"))
    hits = hit_counts(som_rows, som_cols, rows, cols)
    written.append(save_grid_values(hits.astype(float), out / "hits.png",
                                    f"hits per cell ({hits.sum()} rows)", "viridis", annotate=True))
    u = umatrix(model.prototypes.detach(), rows, cols).numpy()
    written.append(save_grid_values(u, out / "umatrix.png", "U-matrix (distance to neighbours)",
                                    "bone_r", annotate=False))
    return written


def draw_members(images_per_cell: dict[tuple[int, int], np.ndarray], rows: int, cols: int,
                 path: Path, per_cell: int = 9, max_cells: int = 36) -> Path:
    """For up to ``max_cells`` occupied cells, a 3x3 grid of sample members each.

    Args:
        images_per_cell: (row, col) -> (n, C, H, W) member images in [0, 1].
    """
    cells = sorted(images_per_cell)[:max_cells]
    side = int(np.ceil(np.sqrt(per_cell)))
    ncols = min(6, len(cells))
    nrows = int(np.ceil(len(cells) / max(ncols, 1)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.4 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, cell in zip(axes.ravel()[: len(cells)], cells, strict=True):
        imgs = images_per_cell[cell][:per_cell]
        canvas = mosaic(imgs, side, side)
        ax.imshow(canvas, cmap="gray" if canvas.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"cell ({cell[0]}, {cell[1]})", fontsize=8)
    fig.suptitle(f"sample members per cell, {rows}x{cols} map")
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path
