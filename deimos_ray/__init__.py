"""deimos_ray: deep clustering of large unlabelled image collections on Ray.

The package is organised by concept: ``data/`` (sources and preprocessing), ``models/``
(plain PyTorch models and losses), ``train/`` (the Ray Train loops and drivers),
``metrics.py`` (cluster scores), ``baselines.py`` (k-means), ``assign.py`` (model to
per-image Parquet rows) and ``config.py`` (typed, frozen configuration).
"""

__version__ = "0.1.0"
