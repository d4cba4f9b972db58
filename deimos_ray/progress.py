"""What a job shows while it works: quiet by default, a progress bar where work is long.

Without ``-v``/``--verbose`` the console holds deimos_ray's own lines only: Ray's
INFO and WARNING output and its workers' output stay in Ray's session logs
(:func:`deimos_ray.runtime.init_ray`). Each stage prints one line with its time when it
ends (:func:`stage_line`). Training shows its epochs (or iterations) of the total, the
loss and the time left: the training loop, in a Ray Train worker or in the driver, sends
its progress and its log lines to a small actor (:class:`ProgressBoard`), which the
driver polls (:class:`TrainingDisplay`): a ``tqdm`` bar on a terminal, one line at the
end otherwise (CI, ``ray job submit`` logs). The loop's detailed log lines (its
schedule, thresholds, label changes) are printed with ``-v`` only; the run's
``metrics.json`` keeps the training summary either way.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from typing import Any

_verbose = False
_enabled = False  # a command's driver: trainings show their progress
_board: Any = None  # this process's board (set inside a training run)


def configure(verbose: bool) -> None:
    """Called once by a command: show progress, and with ``verbose`` every log line
    (Ray's included)."""
    global _verbose, _enabled
    _verbose, _enabled = verbose, True


def is_enabled() -> bool:
    """Whether a command runs (its trainings show progress)."""
    return _enabled


def is_verbose() -> bool:
    """Whether the command was given ``-v``/``--verbose``."""
    return _verbose


def on_terminal() -> bool:
    """Whether progress bars can be drawn (stderr is a terminal)."""
    return sys.stderr.isatty()


def stage_line(prefix: str, text: str, seconds: float) -> None:
    """The one line a finished stage prints: ``[prefix] text (12.3 s)``."""
    print(f"[{prefix}] {text} ({seconds:.1f} s)", flush=True)


# --- the training loop's side (a Ray Train worker, or the driver in local mode) -----------

def attach(board: Any) -> None:
    """Send this process's training progress to ``board`` (None: print log lines)."""
    global _board
    _board = board


def advance(done: int, total: int, unit: str, **values: Any) -> None:
    """Report ``done`` of ``total`` ``unit``s (epochs, iterations) and the values to show
    beside them (the loss). Rank 0 calls it; nothing happens outside a display."""
    if _board is not None:
        _board.update.remote({"done": done, "total": total, "unit": unit, "values": values})


def note(line: str) -> None:
    """A training log line: to the display (printed with ``-v``), or printed when the
    loop runs outside one (a unit test, a benchmark)."""
    if _board is not None:
        _board.note.remote(line)
    else:
        print(line, flush=True)


# --- the driver's side ------------------------------------------------------------------

@functools.cache
def _board_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)  # one call at a time: no line is lost between read and note
    class ProgressBoard:
        """Holds a training's latest progress and the log lines not yet shown."""

        def __init__(self) -> None:
            self.state: dict[str, Any] | None = None
            self.lines: list[str] = []

        def update(self, state: dict[str, Any]) -> None:
            self.state = state

        def note(self, line: str) -> None:
            self.lines.append(line)

        def read(self) -> tuple[dict[str, Any] | None, list[str]]:
            lines, self.lines = self.lines, []
            return self.state, lines

    return ProgressBoard


class TrainingDisplay:
    """Shows one training's progress while the block runs (module docstring).

    ``board`` is the actor the training loop reports to (None when displays are off:
    outside a command, or inside a sweep's trial). On leaving, one line says how far
    training went, its last values and its time.
    """

    POLL_S = 0.5

    def __init__(self, prefix: str, label: str = "training"):
        self.prefix, self.label = prefix, label
        self.board = _board_class().remote() if _enabled else None
        self._stop = threading.Event()
        self._bar: Any = None
        self._state: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._poll, name="progress", daemon=True)
        self._t0 = time.perf_counter()

    def __enter__(self) -> TrainingDisplay:
        if self.board is not None:
            self._thread.start()
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if self.board is None:
            return
        self._stop.set()
        self._thread.join()
        try:
            self._show()  # the last state and lines
        except Exception:  # the board went with an interrupted or failed run: nothing more to show
            pass
        if self._bar is not None:
            self._bar.close()
        if kind is None:
            stage_line(self.prefix, f"{self.label}: {self._summary()}", time.perf_counter() - self._t0)

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL_S):
            try:
                self._show()
            except Exception:  # the actor went with an interrupted run: stop showing
                return

    def _show(self) -> None:
        import ray

        state, lines = ray.get(self.board.read.remote(), timeout=10)
        if _verbose:
            for line in lines:
                (self._bar.write if self._bar is not None else print)(line)
        if state is None:
            return
        self._state = state
        if on_terminal():
            from tqdm import tqdm

            if self._bar is None:
                self._bar = tqdm(total=state["total"], unit=f" {state['unit']}",
                                 desc=f"[{self.prefix}] {self.label}", leave=False, dynamic_ncols=True)
            self._bar.total = state["total"]
            self._bar.n = state["done"]
            self._bar.set_postfix(_format(state["values"]), refresh=True)

    def _summary(self) -> str:
        state = self._state
        if state is None:
            return "done"
        values = " ".join(f"{k} {v}" for k, v in _format(state["values"]).items())
        done, total, unit = state["done"], state["total"], state["unit"]
        # Fewer than the total: the algorithm's own stopping rule ended it (the total is a bound).
        count = f"{done} of {total} {unit}s" if done >= total else f"{done} {unit}s (at most {total})"
        return count + (f", {values}" if values else "")


def _format(values: dict[str, Any]) -> dict[str, str]:
    return {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in values.items()}
