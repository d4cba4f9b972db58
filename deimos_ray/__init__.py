"""deimos_ray: deep clustering of large unlabelled image collections on Ray.

The package is organised by concept: ``data/`` (sources and preprocessing), ``models/``
(plain PyTorch models and losses), ``train/`` (the Ray Train loops and drivers),
``metrics.py`` (cluster scores), ``baselines.py`` (k-means), ``assign.py`` (model to
per-image Parquet rows) and ``config.py`` (typed, frozen configuration).

``deimos_ray.DeepClusterer`` is the scikit-learn face (:mod:`deimos_ray.estimator`).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use: ``import deimos_ray`` stays free of Ray, torch and sklearn.
    if name == "DeepClusterer":
        from deimos_ray.estimator import DeepClusterer

        return DeepClusterer
    raise AttributeError(f"module 'deimos_ray' has no attribute {name!r}")
