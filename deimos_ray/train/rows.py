"""A training worker's rows: held in memory, or streamed from its Ray Data shard.

Every loop reads its rows through the same three operations, so it does not know which
of the two it has:

- ``epoch(batches, e)``: the epoch's mini-batches, ``batches.steps`` of them, each
  ``batches.local_batch`` rows drawn without replacement from a seeded permutation;
- ``scan()``: every row once, in the shard's order, in batches (no-gradient passes:
  DEC's target distribution, DESOM's node hits);
- ``take(index)``: the rows at the given positions (samples: k-means starts, the
  progress probe);
- ``map_rows(index, fn)``: ``fn`` of the inputs at the given positions, for a sample
  too large to hold as inputs (DEC's k-means start embeds up to 50,000 rows: 256 MB of
  1,280 features, 2 MB of codes); a streamed shard applies ``fn`` as it reads.

:class:`InMemoryRows` reads the shard once and indexes it (the fast path, random access).
:class:`StreamingRows` reads the shard again for every epoch and pass, so a worker holds
at most one *window* of rows and one batch, whatever the collection's size. An epoch
permutes each window of ``window_rows`` consecutive rows and draws the batches in that
order (a windowed shuffle: rows mix within a window, and the driver randomises the
order of the dataset's blocks once when the windows are smaller than a shard, so a
window is not one folder). When one window holds the whole shard, the permutation is
the one :class:`~deimos_ray.train.common.Batches` gives the in-memory rows, so both
draw the same batches and train the same model.

Streaming is collective: a Ray Data shard of several workers moves to its next pass
only when every worker starts it, so every rank must call ``scan``, ``take`` and
``epoch`` in the same order (a rank with nothing to take passes an empty index). Ray
Data's equal split gives every worker the same number of rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray.train
import torch

from deimos_ray.data.features import BANK_COLUMN

FEATURE_COLUMN = "x"
TRAIN_DATASET, PASSES_DATASET = "train", "passes"  # the Ray Train datasets a loop reads
SCAN_ROWS = 1024  # rows of a no-gradient pass's batch


@dataclass(frozen=True)
class RowsPlan:
    """How the driver tells each worker to read its rows (part of the loop's config).

    Attributes:
        stream: Read the shard batch by batch every epoch instead of holding it.
        window_rows: Rows an epoch permutes at a time when streaming.
    """

    stream: bool = False
    window_rows: int = 0

    def describe(self, n_local: int) -> str:
        """The log's words for it."""
        if not self.stream:
            return "rows held in memory"
        if self.window_rows >= n_local:
            return "rows streamed from Ray Data (one window holds the shard)"
        return f"rows streamed from Ray Data in shuffled windows of {self.window_rows}"


def plan_rows(total_bytes: int, total_rows: int, workers: int, in_memory_mb: float,
              window_mb: float) -> RowsPlan:
    """Hold each worker's shard in memory when it is at most ``in_memory_mb`` MiB, else
    stream it in windows of about ``window_mb`` MiB (at least one row)."""
    shard_bytes = total_bytes / max(1, workers)
    if shard_bytes <= in_memory_mb * 2**20:
        return RowsPlan()
    row_bytes = max(1.0, total_bytes / max(1, total_rows))
    return RowsPlan(stream=True, window_rows=max(1, int(window_mb * 2**20 / row_bytes)))


def _columns(batch: dict[str, np.ndarray], input_shape: tuple[int, ...],
             extra: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A Ray batch as tensors: ``x`` as (n, *input_shape) float32, a view bank as
    (n, N, D) float32, other extras as int64."""
    # Ray hands out read-only arrays; np.require copies only those, so torch gets
    # memory it may write (from_numpy on a read-only array warns).
    out = {FEATURE_COLUMN: torch.from_numpy(np.require(batch[FEATURE_COLUMN], np.float32, ["C", "W"]))
           .reshape(-1, *input_shape)}
    for c in extra:
        out[c] = torch.from_numpy(np.require(batch[c], np.float32 if c == BANK_COLUMN else np.int64, ["C", "W"]))
    return out


def _empty(input_shape: tuple[int, ...], extra: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {FEATURE_COLUMN: torch.zeros((0, *input_shape)),
            **{c: torch.zeros(0, dtype=torch.float32 if c == BANK_COLUMN else torch.int64) for c in extra}}


def _cat(parts: list[dict[str, torch.Tensor]], input_shape: tuple[int, ...],
         extra: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if not parts:
        return _empty(input_shape, extra)
    return {c: torch.cat([p[c] for p in parts]) for c in parts[0]}


def _cat_outputs(outputs: list[torch.Tensor]) -> torch.Tensor:
    """The outputs of ``map_rows``' parts, one tensor (empty: no rows, no columns known)."""
    return torch.cat(outputs) if outputs else torch.zeros(0)


def _pick(columns: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {c: v[index] for c, v in columns.items()}


class InMemoryRows:
    """The shard read once into memory (see the module docstring)."""

    def __init__(self, columns: dict[str, torch.Tensor]):
        self.columns = columns
        self.n = len(columns[FEATURE_COLUMN])
        self.in_memory = True

    @classmethod
    def read(cls, shard: Any, input_shape: tuple[int, ...], extra: tuple[str, ...] = ()) -> InMemoryRows:
        """The whole shard (``x`` and the ``extra`` integer columns), row-aligned."""
        parts = [_columns(b, input_shape, extra)
                 for b in shard.iter_batches(batch_size=4096, batch_format="numpy")]
        return cls(_cat(parts, input_shape, extra))

    @property
    def x(self) -> torch.Tensor:
        return self.columns[FEATURE_COLUMN]

    def epoch(self, batches: Any, epoch: int) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """(positions, columns) of each of the epoch's mini-batches."""
        for idx in batches.epoch(epoch):
            yield idx, _pick(self.columns, idx)

    def scan(self, batch_size: int = SCAN_ROWS) -> Iterator[dict[str, torch.Tensor]]:
        """Every row once, in order, ``batch_size`` rows at a time."""
        for start in range(0, self.n, batch_size):
            yield {c: v[start:start + batch_size] for c, v in self.columns.items()}

    def take(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows at ``index`` (positions in the shard), in that order."""
        return _pick(self.columns, index)

    def map_rows(self, index: torch.Tensor, fn: Any) -> torch.Tensor:
        """``fn`` of the inputs at ``index``, ``SCAN_ROWS`` at a time, in that order."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return _cat_outputs([fn(self.x[index[i:i + SCAN_ROWS]]) for i in range(0, len(index), SCAN_ROWS)])


class StreamingRows:
    """The shard read again for every epoch and pass (see the module docstring).

    ``peak_rows`` is the most rows it has held at once (a window, a batch being
    assembled, or a sample being taken): what a worker's memory grows with.
    """

    def __init__(self, shard: Any, input_shape: tuple[int, ...], extra: tuple[str, ...] = (),
                 window_rows: int = 65536, passes: Any = None):
        self.shard, self.input_shape, self.extra = shard, input_shape, extra
        # A Ray Data shard has one pass open at a time: a new one invalidates the one in
        # progress. Passes made in the middle of an epoch (DEC's target every
        # update_interval steps) read a second split of the same rows, ``passes``.
        self.passes = passes if passes is not None else shard
        self.window_rows = max(1, window_rows)
        self.in_memory = False
        self.peak_rows = 0
        # Blocks as they are (batch_size None): counting needs no batching.
        self.n = sum(len(b[FEATURE_COLUMN]) for b in shard.iter_batches(batch_size=None, batch_format="numpy"))

    def _held(self, rows: int) -> None:
        self.peak_rows = max(self.peak_rows, rows)

    def _batches(self, batch_size: int, shard: Any = None) -> Iterator[dict[str, torch.Tensor]]:
        for batch in (shard or self.shard).iter_batches(batch_size=batch_size, batch_format="numpy"):
            yield _columns(batch, self.input_shape, self.extra)

    def scan(self, batch_size: int = SCAN_ROWS) -> Iterator[dict[str, torch.Tensor]]:
        """Every row of the collection once across the workers, ``batch_size`` rows at a
        time, for sums over all rows (:func:`deimos_ray.train.collective.all_reduce_sum`):
        read from the ``passes`` split, so it may run in the middle of an epoch. Which
        worker reads which rows may differ from the epoch's shard."""
        for columns in self._batches(batch_size, self.passes):
            self._held(len(columns[FEATURE_COLUMN]))
            yield columns

    def _wanted_parts(self, wanted: torch.Tensor) -> Iterator[dict[str, torch.Tensor]]:
        """The rows at the sorted positions ``wanted``, part by part as the shard is read
        (one pass over this worker's own shard, between epochs, made even when nothing
        is wanted: every rank passes together)."""
        start = 0
        for columns in self._batches(SCAN_ROWS):
            end = start + len(columns[FEATURE_COLUMN])
            lo, hi = torch.searchsorted(wanted, start), torch.searchsorted(wanted, end)
            if hi > lo:
                yield _pick(columns, wanted[lo:hi] - start)
            start = end

    def _asked_order(self, index: torch.Tensor, wanted: torch.Tensor, n_found: int, what: str) -> torch.Tensor:
        """Where each position of ``index`` is among the ``n_found`` rows found in sorted order."""
        if n_found != len(index):
            raise IndexError(f"{what}: {len(index)} positions asked, {n_found} found in a shard of {self.n} rows")
        return torch.searchsorted(wanted, index)

    def take(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows at ``index`` (positions in the shard), in that order (one pass)."""
        index = torch.as_tensor(index, dtype=torch.int64)
        wanted = torch.sort(index).values
        found = _cat(list(self._wanted_parts(wanted)), self.input_shape, self.extra)
        self._held(len(found[FEATURE_COLUMN]) + SCAN_ROWS)
        return _pick(found, self._asked_order(index, wanted, len(found[FEATURE_COLUMN]), "take"))

    def map_rows(self, index: torch.Tensor, fn: Any) -> torch.Tensor:
        """``fn`` of the inputs at ``index``, in that order, applied to each part of
        the shard as it is read (one pass): only ``fn``'s outputs are kept."""
        index = torch.as_tensor(index, dtype=torch.int64)
        wanted = torch.sort(index).values
        found = _cat_outputs([fn(part[FEATURE_COLUMN]) for part in self._wanted_parts(wanted)])
        self._held(SCAN_ROWS)
        return found[self._asked_order(index, wanted, len(found), "map_rows")]

    def epoch(self, batches: Any, epoch: int) -> Iterator[tuple[None, dict[str, torch.Tensor]]]:
        """(None, columns) of each of the epoch's ``batches.steps`` mini-batches: one pass
        over the shard in permuted windows; an epoch that needs more rows than the shard
        holds (the last batch of a short shard) draws them from a new permutation of the
        last window, as :meth:`Batches.epoch` draws them from a new permutation of all."""
        g = batches.generator(epoch)
        size, steps = batches.local_batch, batches.steps
        emitted, carry = 0, []
        window: dict[str, torch.Tensor] | None = None

        def draw(window: dict[str, torch.Tensor]):
            nonlocal carry, emitted
            order = torch.randperm(len(window[FEATURE_COLUMN]), generator=g)
            at = 0
            while at < len(order) and emitted < steps:
                have = sum(len(c[FEATURE_COLUMN]) for c in carry)
                piece = order[at:at + size - have]
                at += len(piece)
                carry.append(_pick(window, piece))
                if have + len(piece) == size:
                    batch = _cat(carry, self.input_shape, self.extra)
                    carry = []
                    emitted += 1
                    yield None, batch

        for window in self._batches(self.window_rows):
            self._held(len(window[FEATURE_COLUMN]) + size)
            yield from draw(window)
            if emitted >= steps:
                return
        while window is not None and emitted < steps:
            yield from draw(window)


def open_rows(shard: Any, input_shape: tuple[int, ...], extra: tuple[str, ...] = (),
              plan: dict[str, Any] | None = None, passes: Any = None) -> InMemoryRows | StreamingRows:
    """This worker's rows as ``plan`` (a :class:`RowsPlan` as a dict, from the loop's
    config; None: in memory) says; ``passes``: the second split a streamed shard scans
    (:class:`StreamingRows`)."""
    plan_ = RowsPlan(**(plan or {}))
    if plan_.stream:
        return StreamingRows(shard, input_shape, extra, plan_.window_rows, passes)
    return InMemoryRows.read(shard, input_shape, extra)


def open_worker_rows(input_shape: tuple[int, ...], extra: tuple[str, ...] = (),
                     plan: dict[str, Any] | None = None) -> InMemoryRows | StreamingRows:
    """:func:`open_rows` of this Ray Train worker's shards (``train``, and when
    streaming ``passes``: the datasets :func:`deimos_ray.train.driver.fit` hands over)."""
    stream = RowsPlan(**(plan or {})).stream
    return open_rows(ray.train.get_dataset_shard(TRAIN_DATASET), input_shape, extra, plan,
                     ray.train.get_dataset_shard(PASSES_DATASET) if stream else None)
