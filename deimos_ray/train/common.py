"""Pieces every training loop shares: reading a worker's shard, batches with the same
number of steps on every rank, global counts, the clock that paces reports, the score
a sweep's early stopping compares trials by, and the check that a checkpoint may be
resumed."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from deimos_ray.config_io import stored_settings, to_dict
from deimos_ray.train import collective as C
from deimos_ray.train.rows import FEATURE_COLUMN, InMemoryRows

PROGRESS_SCORE = "progress_silhouette"  # the per-epoch score ASHA compares trials by


def load_shard(shard: Any, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Read this worker's dataset shard into one float tensor (N_local, *input_shape)."""
    return load_columns(shard, input_shape)[FEATURE_COLUMN]


def load_columns(shard: Any, input_shape: tuple[int, ...], extra: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Read this worker's shard into memory: ``x`` as (N_local, *input_shape) floats and
    each ``extra`` column as a 1-D int64 tensor, row-aligned."""
    return InMemoryRows.read(shard, input_shape, extra).columns


def format_metrics(record: dict[str, Any], digits: int = 5) -> str:
    """One log line, ``key value ...``: floats to ``digits`` significant figures, and
    ``n/a`` for a NaN (a quantity not measured yet, such as DEC's first label change)."""
    def text(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.{digits}g}"
        return str(v)

    return " ".join(f"{k} {text(v)}" for k, v in record.items())


def batched(x: torch.Tensor, batch_size: int = 1024):
    """Consecutive slices of ``x`` for no-gradient passes."""
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size]


def eval_labels(model: torch.nn.Module, x: torch.Tensor, device: torch.device,
                labels_of: Any) -> torch.Tensor:
    """``labels_of(model(batch))`` over ``x`` in no-gradient batches, in eval mode (the
    model's mode is restored after), on the CPU."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        labels = torch.cat([labels_of(model(part.to(device))).cpu() for part in batched(x)])
    model.train(was_training)
    return labels


def global_count(value: int | float) -> float:
    """Sum of a per-worker count across workers."""
    return float(C.all_reduce_sum(torch.tensor([float(value)], dtype=torch.float64)).item())


class CheckpointClock:
    """Decides which epochs end with a report and checkpoint: when ``interval_s``
    seconds have passed since the last one, and always at the end of a stage. With
    ``interval_s=0`` every epoch reports.

    Why not every epoch: Train V2 drains each worker's one-slot result queue only every
    2 s (its health-check interval), so each ``ray.train.report`` blocks for up to 2 s.
    On digits (8 steps an epoch) reporting every epoch made a 90 s run take 10 minutes.
    Rank 0's clock decides and the decision is broadcast, because every rank must call
    ``report`` the same number of times.
    """

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self.last = time.monotonic()

    def due(self, final: bool = False) -> bool:
        now = time.monotonic()
        decision = torch.tensor([1.0 if final or now - self.last >= self.interval_s else 0.0])
        due = bool(C.broadcast_(decision).item())
        if due:
            self.last = now
        return due


class ProgressProbe:
    """The label-free score a sweep's early stopping (ASHA) compares trials by at equal
    progress: the silhouette of the model's current clusters on a fixed, seeded sample of
    ``rows`` of rank 0's shard, in the model's input space (the pixels or the cached
    features, which every trial of a sweep shares, so the scores are comparable across
    trials and k). A sample that falls in one cluster scores -1, the worst.

    ``rows=0`` (the jobs' default) switches it off: loops then report only when their
    :class:`CheckpointClock` is due. When on, they report every epoch (each report can
    block up to 2 s: the cost of early stopping), with the score from rank 0 only, the
    rank whose report reaches Tune.
    """

    def __init__(self, rows_local: Any, rows: int, seed: int):
        self.on = rows > 0
        self.scored = self.on and C.rank() == 0
        if self.on:
            pick = np.zeros(0, dtype=np.int64)
            if self.scored:
                pick = np.sort(np.random.default_rng(seed).choice(rows_local.n, min(rows, rows_local.n), replace=False))
            # Every rank takes (nothing, off rank 0): a streamed shard passes together.
            x = rows_local.take(torch.from_numpy(pick))[FEATURE_COLUMN]
        if self.scored:
            self.index = torch.from_numpy(pick)
            self.x = x
            self.flat = self.x.reshape(len(self.x), -1).numpy()

    def score(self, labels_of: Any) -> dict[str, float]:
        """``{PROGRESS_SCORE: silhouette}`` with ``labels_of(self.x)`` (or of this probe
        itself, for a loop that holds its rows' labels), or ``{}`` on ranks that do not score."""
        if not self.scored:
            return {}
        from sklearn.metrics import silhouette_score

        with torch.no_grad():
            labels = labels_of(self)
        labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if len(np.unique(labels)) < 2:
            return {PROGRESS_SCORE: -1.0}
        return {PROGRESS_SCORE: float(silhouette_score(self.flat, labels))}


class Batches:
    """Per-epoch mini-batch indices with the same number of steps on every worker.

    DDP needs every rank to take the same number of steps, so the steps per epoch come
    from the global row count; a worker whose shard is a row short wraps around.
    """

    def __init__(self, n_local: int, n_global: int, batch_size: int, seed: int):
        self.n_local = n_local
        self.local_batch = max(1, batch_size // C.world_size())
        self.steps = max(1, math.ceil(n_global / (self.local_batch * C.world_size())))
        self.seed = seed

    def generator(self, epoch: int) -> torch.Generator:
        """The epoch's seeded generator (this rank's)."""
        return torch.Generator().manual_seed(self.seed * 100_003 + epoch * 1_009 + C.rank())

    def epoch(self, epoch: int):
        g = self.generator(epoch)
        need = self.steps * self.local_batch
        perm = torch.cat(
            [torch.randperm(self.n_local, generator=g) for _ in range(math.ceil(need / self.n_local))]
        )
        for s in range(self.steps):
            yield perm[s * self.local_batch : (s + 1) * self.local_batch]


def check_resumable(state: dict[str, Any], algorithm: str, cfg: Any, input_shape: tuple[int, ...]) -> None:
    """Refuse to resume a checkpoint of another algorithm, model config or input shape.

    Every model setting must match: settings that may change between a run and its
    resumption (restarts, post-processing, checkpoint pacing) are the job's, outside the
    model config. A field the checkpoint's config lacks (added to the package since)
    counts as its default (:func:`deimos_ray.config.stored_settings`).

    Args:
        state: The checkpoint's state (``algorithm``, ``config``, ``input_shape``).
        algorithm: The resuming loop's algorithm (checkpoints without one are DEC's).
        cfg: The resuming run's model config.
    """
    if state.get("algorithm", "dec") != algorithm:
        raise ValueError(f"the run directory holds a {state.get('algorithm', 'dec')} checkpoint, "
                         f"not {algorithm} (another algorithm); use a new --out")
    old, new = stored_settings(type(cfg), state["config"]), to_dict(cfg)
    changed = sorted(k for k in new if old[k] != new[k])
    if changed or tuple(state["input_shape"]) != tuple(input_shape):
        raise ValueError(
            f"the run directory holds a checkpoint made with different settings "
            f"({', '.join(changed) or 'input shape'}); use a new --out, or the same model "
            f"settings to resume"
        )
