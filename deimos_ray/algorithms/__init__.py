"""One object per clustering method (:class:`~deimos_ray.algorithms.base.Algorithm`):
how it trains, on which rows, its flags, its predictor, how restarts combine, what
follows the assignment and what it adds to the report.

A new method is an ``Algorithm`` subclass registered with :func:`register`
(``CONTRIBUTING.md``: adding an algorithm).
"""

from __future__ import annotations

from deimos_ray.algorithms.base import Algorithm
from deimos_ray.algorithms.dac import DACAlgorithm
from deimos_ray.algorithms.dec import DECAlgorithm
from deimos_ray.algorithms.desom import DESOMAlgorithm

ALGORITHMS: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    """Make ``algorithm`` known by its name (jobs, sweeps) and its job (reading a run
    folder back); returns it."""
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm


for _algorithm in (DACAlgorithm(), DECAlgorithm(), DESOMAlgorithm()):
    register(_algorithm)


def get_algorithm(name: str) -> Algorithm:
    """The algorithm called ``name`` (``dac``, ``dec``, ``desom`` or a registered one)."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


def algorithm_for_job(job: str | None) -> Algorithm | None:
    """The algorithm whose job is ``job`` (a run's ``metrics.json`` names it), or None."""
    return next((a for a in ALGORITHMS.values() if a.job == job), None)


__all__ = ["ALGORITHMS", "Algorithm", "algorithm_for_job", "get_algorithm", "register"]
