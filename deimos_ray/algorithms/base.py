"""What the job spine asks of an algorithm (:class:`Algorithm`).

Everything that differs between clustering methods is answered here, by the
algorithm's own object; the job spine (:mod:`deimos_ray.job`), the sweeps
(:mod:`deimos_ray.sweep`), the assignment of new images (:mod:`deimos_ray.new_images`),
the report (:mod:`deimos_ray.report`) and the command line (:mod:`deimos_ray.cli`) call
these hooks and never name an algorithm. ``CONTRIBUTING.md`` shows how to add one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
import torch

from deimos_ray.config import JobConfig
from deimos_ray.data.prepare import PreparedData
from deimos_ray.errors import UsageError

Predictor = Callable[[torch.Tensor], dict[str, pa.Array]]
"""A batch of model inputs -> the algorithm's assignment columns (``cluster`` and
``embedding`` at least; ``confidence`` where the model has one)."""


class Algorithm:
    """One deep clustering method, as the job spine runs it.

    Subclasses set the class attributes and override the hooks they need; the defaults
    train on the ``x`` column, change nothing after assignment, refuse restarts and add
    nothing to the report.

    Attributes:
        name: Short name (``dac``, ``dec``, ``desom``), also the score-table column
            unless :meth:`model_name` says otherwise.
        job: The job's name (``train_dac``): log prefix, ``metrics.json``'s ``job`` and
            the default run folder.
        config_class: The job's config dataclass.
        train_loop: The Ray Train ``train_loop_per_worker``; its checkpoints load with
            :meth:`predictor`.
        smoke: This method's settings of ``--smoke-test`` (dotted config paths), applied
            after those of every job (:meth:`smoke_settings`).
        flag_help: Help texts of the common flags that mean something else for this
            method (``{"k": ..., "epochs": ...}``).
        confidence_words: How the report names the surest and the least sure members.
        description: The job's ``--help`` text: what it does, examples, its outputs.
    """

    name: ClassVar[str]
    job: ClassVar[str]
    config_class: ClassVar[type[JobConfig]]
    train_loop: ClassVar[Callable[[dict[str, Any]], Any]]
    smoke: ClassVar[dict[str, Any]] = {}
    flag_help: ClassVar[dict[str, str]] = {}
    confidence_words: ClassVar[tuple[str, str]] = ("most confident", "least confident")
    description: ClassVar[str] = ""

    # --- the command line -------------------------------------------------------------

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this method's own flags to its job's parser (the common ones are there)."""

    def settings(self, args: argparse.Namespace) -> dict[str, Any]:
        """The dotted config paths this method's flags set (None: not given)."""
        return {}

    def preset(self, args: argparse.Namespace) -> dict[str, Any]:
        """A named recipe the flags chose, applied before ``--smoke-test`` and the flags."""
        return {}

    def smoke_settings(self) -> dict[str, Any]:
        """Everything ``--smoke-test`` sets: what every job leaves out of a smoke test
        (UMAP's baseline, whose kernels compile for some 30 s, more than a smoke test's
        whole training), then this method's :attr:`smoke`."""
        return {"baseline_umap": False, **self.smoke}

    # --- settings and rows ------------------------------------------------------------

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

    # --- from a checkpoint to assignments ---------------------------------------------

    def predictor(self, checkpoint_dir: str | Path, device: str = "cpu") -> Predictor:
        """The trained model of ``checkpoint_dir`` as a function from a batch of inputs
        to assignment columns (runs in the Ray Data model actors)."""
        raise NotImplementedError(f"{self.name} has no predictor")

    # --- restarts ---------------------------------------------------------------------

    @property
    def has_restarts(self) -> bool:
        """Whether it can train several times and combine them (it overrides :meth:`combine`)."""
        return type(self).combine is not Algorithm.combine

    def final_loss(self, summary: dict[str, Any]) -> float:
        """A finished training's final loss, from the loop's return value: among
        restarts, the lowest one's model is the run's ``checkpoint/``."""
        raise NotImplementedError(f"{self.name} has no restarts")

    def combine(self, cfg: JobConfig, sources: list[Path], destination: Path, kept: int,
                orders: list[np.ndarray] | None = None) -> list[float]:
        """Write one clustering of the restarts' assignments of the same rows
        (``sources``) to ``destination``.

        Args:
            cfg: The run's config.
            sources: Each restart's assignments folder, in restart order.
            destination: The combined ``assignments/`` to write.
            kept: The restart whose model is the run's ``checkpoint/``.
            orders: Each restart's matching to the combined clusters, as a training's
                combination saved it (new images are combined the way the training
                was); None: find the consensus (a training).

        Returns:
            Each restart's agreement with the combined clusters (share of rows).
        """
        raise NotImplementedError(f"{self.name} has no restarts")

    # --- after the rows are assigned --------------------------------------------------

    def after_assign(self, cfg: JobConfig, out: Path, assignments: pd.DataFrame,
                     data: PreparedData) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Post-processing of the written ``out/assignments``: returns the (possibly
        updated) rows and entries for ``metrics.json``."""
        return assignments, {}

    def after_assign_new(self, run_metrics: dict[str, Any], assignments_dir: Path) -> None:
        """Apply to new images' ``assignments_dir`` what :meth:`after_assign` did to the
        run's own rows, as the run's ``metrics.json`` records it."""

    def further_training(self, cfg: JobConfig, out: Path) -> dict[str, Any] | None:
        """A training the spine runs after the rows are assigned, on what they were
        assigned to (DESOM-2 over the groups); its summary goes into ``metrics.json``
        as returned. None: there is none."""
        return None

    def labels_seen(self, cfg: JobConfig) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """Marks the rows whose label training used, given (ids, labels), so the scores
        add held-out ones over the others; None when training saw no label."""
        return None

    # --- the report -------------------------------------------------------------------

    def report_pictures(self, run: Path, report_dir: Path,
                        images_of: Callable[[list[str]], dict[str, np.ndarray]]) -> list[str]:
        """Draw this method's own pictures of a finished run from its files into
        ``report_dir`` and return the names the page shows. ``images_of(ids)`` gives
        rows' images as the report shows them ((C, H, W) in [0, 1])."""
        return []
