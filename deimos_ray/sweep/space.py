"""What a sweep searches: Tune's parameter space over dotted config keys, and the
search algorithm that draws from it."""

from __future__ import annotations

from typing import Any

from ray import tune

from deimos_ray.sweep.objective import OBJECTIVE

SEARCHES = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")  # fifo: every trial trains to the end


def search_space(grid: dict[str, list[Any]], search: str) -> dict[str, Any]:
    """Tune's ``param_space``: every value of every key (``grid``), or one value per key
    per trial, drawn at random (``random``) or by Optuna's TPE sampler from the
    objectives of the trials before it (``optuna``)."""
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    if not grid:
        raise ValueError("a sweep needs at least one key with values (e.g. --k 4 6 8)")
    for key, values in grid.items():
        if not values:
            raise ValueError(f"sweep key {key} has no values")
    if any(k < 2 for k in grid.get("model.n_clusters", [])):
        raise ValueError("--k: a sweep compares k >= 2 (its scores need two clusters)")
    draw = tune.grid_search if search == "grid" else tune.choice
    return {key: draw(list(values)) for key, values in grid.items()}


def searcher(search: str, seed: int) -> Any:
    """Tune's search algorithm: Optuna's (TPE, seeded, maximising the objective) for
    ``optuna``, else None (Tune's own grid and random draws)."""
    if search != "optuna":
        return None
    from ray.tune.search.optuna import OptunaSearch  # imports Optuna: only for this search

    return OptunaSearch(metric=OBJECTIVE, mode="max", seed=seed)
