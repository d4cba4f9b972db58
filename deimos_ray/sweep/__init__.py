"""Ray Tune sweeps: :mod:`~deimos_ray.sweep.driver` (:func:`run_sweep`),
:mod:`~deimos_ray.sweep.objective` (the label-free score, in one reference space) and
:mod:`~deimos_ray.sweep.space` (what is searched, and how)."""
