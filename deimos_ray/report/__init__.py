"""What a person checks by eye after a run, drawn from the run's files only.

- :mod:`deimos_ray.report.page`: ``DIR/report/index.html``, the page every job, sweep
  and assignment writes at its end; ``deimos-ray report DIR`` redraws it for any
  finished run. It ties together :mod:`~deimos_ray.report.montages` (each cluster's
  members), :mod:`~deimos_ray.report.map` (the 2-D map, the sizes),
  :mod:`~deimos_ray.report.html` (the page) and the algorithm's own pictures.
- :mod:`deimos_ray.report.pictures`: image mosaics and self-organising-map grids.
"""
