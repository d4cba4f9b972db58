"""What a person checks by eye after a run, drawn from the run's files only.

- :mod:`deimos_ray.report.page`: ``DIR/report/index.html``, the page every job and sweep
  writes at its end (cluster montages, the 2-D map, sizes, scores, DESOM's maps, a
  sweep's trials); ``python jobs/report.py DIR`` redraws it for any finished run.
- :mod:`deimos_ray.report.pictures`: the image grids and DESOM's map pictures.
"""

from deimos_ray.report.page import write_report
from deimos_ray.report.pictures import (
    draw_desom_pictures,
    draw_desom_report,
    draw_members,
    hit_counts,
    mosaic,
    save_grid_values,
    save_mosaic,
)

__all__ = [
    "draw_desom_pictures",
    "draw_desom_report",
    "draw_members",
    "hit_counts",
    "mosaic",
    "save_grid_values",
    "save_mosaic",
    "write_report",
]
