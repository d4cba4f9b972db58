"""What the job spine asks of an algorithm (:class:`Algorithm`).

An algorithm says how it trains (its Ray Train loop), which rows it trains on, what it
does after the rows are assigned, how its restarts become one clustering, and its name
in the score table. :func:`deimos_ray.job.run_training_job` does the rest the same way
for every algorithm.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import ray

from deimos_ray.config import JobConfig
from deimos_ray.data.prepare import PreparedData
from deimos_ray.errors import UsageError


class Algorithm:
    """One deep clustering method, as the job spine runs it.

    Subclasses set the class attributes and override the hooks they need; the defaults
    train on the ``x`` column and change nothing after assignment.

    Attributes:
        name: Short name (``dac``, ``dec``, ``desom``), also the score-table column
            unless :meth:`model_name` says otherwise.
        job: The job's name (``train_dac``): log prefix and default run folder.
        config_class: The job's config dataclass.
        train_loop: The Ray Train ``train_loop_per_worker``; its checkpoints load with
            :func:`deimos_ray.assign.load_predictor`.
    """

    name: ClassVar[str]
    job: ClassVar[str]
    config_class: ClassVar[type[JobConfig]]
    train_loop: ClassVar[Callable[[dict[str, Any]], Any]]

    def model_name(self, cfg: JobConfig) -> str:
        """The model's column in the score table."""
        return self.name

    def n_clusters(self, cfg: JobConfig) -> int:
        """Clusters the model outputs; the k-means baseline uses as many."""
        return cfg.model.n_clusters

    def check(self, cfg: JobConfig) -> None:
        """Refuse settings this algorithm cannot run, before any work starts."""

    def fine_tunes_backbone(self, cfg: JobConfig) -> bool:
        """Whether training updates the backbone (``cfg.features``) itself: the job then
        hands it images decoded at the backbone's size, not cached features."""
        return False

    def check_data(self, cfg: JobConfig, data: PreparedData) -> None:
        """Refuse settings the prepared rows cannot serve, before the run folder is
        written (default: the rows make ``n_clusters`` clusters).

        Raises:
            UsageError: naming the flag and the fix.
        """
        if data.num_rows < self.n_clusters(cfg):
            raise UsageError(f"{data.num_rows} readable rows cannot make {self.n_clusters(cfg)} clusters; "
                             "lower --k or add images")

    def training_rows(self, cfg: JobConfig, data: PreparedData) -> ray.data.Dataset:
        """The dataset the loop trains on (default: the ``x`` column)."""
        return data.good.select_columns(["x"])

    def final_loss(self, summary: dict[str, Any]) -> float:
        """A finished training's final loss, from the loop's return value: among
        restarts, the lowest one's model is the run's ``checkpoint/``."""
        raise NotImplementedError(f"{self.name} has no restarts")

    def combine(self, cfg: JobConfig, sources: list[Path], destination: Path, kept: int) -> list[float]:
        """Write the consensus of the restarts' assignments (``sources``) to
        ``destination``; return each restart's agreement with it."""
        raise NotImplementedError(f"{self.name} has no restarts")

    def after_assign(self, cfg: JobConfig, out: Path, assignments: pd.DataFrame,
                     data: PreparedData) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Post-processing of the written ``out/assignments``: returns the (possibly
        updated) rows and entries for ``metrics.json``."""
        return assignments, {}

    def labels_seen(self, cfg: JobConfig) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """Marks the rows whose label training used, given (ids, labels), so the scores
        add held-out ones over the others; None when training saw no label."""
        return None
