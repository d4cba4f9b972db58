"""Pieces every training loop shares: reading a worker's shard, batches with the same
number of steps on every rank, global counts, the clock that paces reports, and batch
norm statistics recomputed on clean inputs."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from deimos_ray.train import collective as C

FEATURE_COLUMN = "x"


def load_shard(shard: Any, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Read this worker's dataset shard into one float tensor (N_local, *input_shape)."""
    return load_columns(shard, input_shape)[FEATURE_COLUMN]


def load_columns(shard: Any, input_shape: tuple[int, ...], extra: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Read this worker's shard into memory: ``x`` as (N_local, *input_shape) floats and
    each ``extra`` column as a 1-D int64 tensor, row-aligned."""
    columns = [FEATURE_COLUMN, *extra]
    parts: dict[str, list[torch.Tensor]] = {c: [] for c in columns}
    for batch in shard.iter_batches(batch_size=4096, batch_format="numpy"):
        # Ray hands out read-only arrays; np.require copies only those, so torch gets
        # memory it may write (from_numpy on a read-only array warns).
        parts[FEATURE_COLUMN].append(torch.from_numpy(np.require(batch[FEATURE_COLUMN], np.float32, ["C", "W"])))
        for c in extra:
            parts[c].append(torch.from_numpy(np.require(batch[c], np.int64, ["C", "W"])))
    if not parts[FEATURE_COLUMN]:
        return {FEATURE_COLUMN: torch.zeros((0, *input_shape)), **{c: torch.zeros(0, dtype=torch.int64) for c in extra}}
    out = {c: torch.cat(parts[c]) for c in columns}
    out[FEATURE_COLUMN] = out[FEATURE_COLUMN].reshape(-1, *input_shape)
    return out


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


def recompute_batch_norm(module: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace the running mean and variance of every batch-norm layer in ``module`` by
    their averages over ``batches``, then average them across workers.

    During training the running statistics follow the (augmented) training batches with
    momentum 0.1; this pass recomputes them from the given inputs instead, so the model in
    evaluation mode normalises as it did on batches like those (the "precise batch norm"
    of Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021). Parameters do not change.
    Each worker averages over its own batches (PyTorch's cumulative average, ``momentum
    = None``), then the workers' averages are averaged, which equals the average over all
    batches when the workers hold as many batches each.

    Args:
        module: The model (not its DDP wrapper, whose forward would broadcast rank 0's
            buffers). It is left in evaluation mode.
        batches: Input batches, already on the model's device; each is normalised by its
            own statistics, as in training.

    Returns:
        The number of batch-norm layers recomputed.
    """
    layers = [m for m in module.modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches below
    module.train()
    with torch.no_grad():
        for x in batches:
            module(x)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
        for buffer in (layer.running_mean, layer.running_var):
            C.all_reduce_sum(buffer).div_(C.world_size())
    module.eval()
    return len(layers)


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

    def epoch(self, epoch: int):
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch * 1_009 + C.rank())
        need = self.steps * self.local_batch
        perm = torch.cat(
            [torch.randperm(self.n_local, generator=g) for _ in range(math.ceil(need / self.n_local))]
        )
        for s in range(self.steps):
            yield perm[s * self.local_batch : (s + 1) * self.local_batch]


def check_resumable(state: dict[str, Any], algorithm: str, cfg: Any, input_shape: tuple[int, ...],
                    may_change: set[str]) -> None:
    """Refuse to resume a checkpoint of another algorithm, model config or input shape.

    A field the checkpoint's config lacks (added to the package since) counts as its
    default (:func:`deimos_ray.config.stored_settings`); a new field's default keeps
    the behaviour runs had before it existed.

    Args:
        state: The checkpoint's state (``algorithm``, ``config``, ``input_shape``).
        algorithm: The resuming loop's algorithm (checkpoints without one are DEC's).
        cfg: The resuming run's model config.
        may_change: Config fields allowed to differ (e.g. to train longer).
    """
    from deimos_ray.config import stored_settings, to_dict

    if state.get("algorithm", "dec") != algorithm:
        raise ValueError(f"the run directory holds a {state.get('algorithm', 'dec')} checkpoint, "
                         f"not {algorithm} (another algorithm); use a new --out")
    old, new = stored_settings(type(cfg), state["config"]), to_dict(cfg)
    changed = sorted(k for k in new if k not in may_change and old[k] != new[k])
    if changed or tuple(state["input_shape"]) != tuple(input_shape):
        raise ValueError(
            f"the run directory holds a checkpoint made with different settings "
            f"({', '.join(changed) or 'input shape'}); use a new --out, or the same settings "
            f"to resume (only {sorted(may_change)} may change)"
        )
