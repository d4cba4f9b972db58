"""One object per clustering method (:class:`~deimos_ray.algorithms.base.Algorithm`):
how it trains, on which rows, what follows the assignment, how restarts combine."""

from __future__ import annotations

from deimos_ray.algorithms.base import Algorithm
from deimos_ray.algorithms.dac import DACAlgorithm
from deimos_ray.algorithms.dec import DECAlgorithm
from deimos_ray.algorithms.desom import DESOMAlgorithm

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (DACAlgorithm(), DECAlgorithm(), DESOMAlgorithm())}


def get_algorithm(name: str) -> Algorithm:
    """The algorithm called ``name`` (``dac``, ``dec`` or ``desom``)."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name]


__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm"]
