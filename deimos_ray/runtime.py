"""Starting or joining Ray the same way everywhere (laptop, one GPU, a cluster, a job)."""

from __future__ import annotations

import _thread
import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import ray

from deimos_ray import progress
from deimos_ray.config import ScalingConfig
from deimos_ray.errors import UsageError


def init_ray(num_cpus: float | None = None, quiet: bool | None = None) -> None:
    """Connect to the cluster a job was submitted to, or start a private local instance.

    Under ``ray job submit`` (or with ``RAY_ADDRESS`` set) this joins that cluster and
    asks for no resources; otherwise it always starts a fresh local Ray, so a stray
    ``ray start`` on the machine is never joined by accident. Token authentication stays
    at Ray's default (on for local clusters); a private local instance does not warn
    about its own token.

    Args:
        num_cpus: Logical CPUs of a local instance (``None``: the machine's count).
        quiet: Keep Ray's INFO lines and its workers' output (``log_to_driver``) off the
            console; they stay in Ray's session logs. Default: quiet unless the command
            was given ``-v`` (:mod:`deimos_ray.progress`).
    """
    if ray.is_initialized():
        return
    if quiet is None:
        quiet = not progress.is_verbose()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Train V2 patches print() on workers and each line reaches the driver twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if on_cluster():
        ray.init(log_to_driver=not quiet)
    else:
        # Its own token, made for this instance: the advice to opt out is not for the user.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        # The dashboard (bound to 127.0.0.1) serves the state API that Train's cleanup
        # actor polls; without it that actor logs a warning every second. That actor
        # finds the API through RAY_API_SERVER_ADDRESS, which every process of this Ray
        # inherits from here: without it, beside another Ray on the machine (a second
        # job), it cannot choose between the two and fails with a traceback.
        port = _free_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", dashboard_port=port,
                 log_to_driver=not quiet, logging_level=logging.WARNING)
    # Ray's core worker has just installed a crash handler for SIGTERM (a C stack dump,
    # then abort): the driver's own comes back.
    handle_sigterm()
    configure_data_context(quiet)


_signals: list[int] = []  # the stopping signals received since handle_sigterm() was last called


def _stop(signum: int, frame: Any) -> None:
    _signals.append(signum)
    raise KeyboardInterrupt  # Ray's get turns any other exception from a handler into exit 1


def handle_sigterm() -> None:
    """Make SIGTERM stop the driver as Ctrl-C does (a ``KeyboardInterrupt`` in the main
    thread, so cleanup runs), remembering which signal came
    (:func:`stopping_signal`)."""
    if threading.current_thread() is threading.main_thread():
        _signals.clear()
        signal.signal(signal.SIGTERM, _stop)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Inside: :func:`handle_sigterm`, and Ctrl-C (SIGINT) remembered the same way, so
    that :func:`stop_if_signalled` still stops a job whose ``KeyboardInterrupt`` some
    library caught and dropped; the Ctrl-C handler that was there before comes back
    after. For a job's driver (:func:`deimos_ray.cli.interruptible`)."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT)
    handle_sigterm()
    if main:
        signal.signal(signal.SIGINT, _stop)
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, before)


def stopping_signal() -> int:
    """The signal behind the last ``KeyboardInterrupt``: SIGTERM when
    :func:`handle_sigterm`'s handler raised it, else SIGINT (Ctrl-C)."""
    return _signals[-1] if _signals else signal.SIGINT


def stop_if_signalled() -> None:
    """Raise ``KeyboardInterrupt`` if a stopping signal has come since the handlers were
    installed. Called between a job's stages: the ``KeyboardInterrupt`` a signal raises
    lands wherever the driver's main thread happens to be, and code there that catches
    ``BaseException`` without raising it again (in a library, a ``__del__``) would let
    the run go on to write its results as if nothing had been asked."""
    if _signals:
        raise KeyboardInterrupt


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that no process listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def configure_data_context(quiet: bool = False) -> None:
    """Ray Data settings for batch jobs.

    Progress bars appear only on a terminal: one per dataset, and one per operator with
    ``-v`` (:mod:`deimos_ray.progress`). Ray Data's per-operator resource
    reservation is switched off: on a 2-CPU node it admitted one decode task at a time,
    leaving a core idle. deimos_ray's pipelines are short chains, and their memory stays
    bounded without it (``bench/ingest.py`` measures both). Set
    ``DEIMOS_RAY_DATA_RESERVATION=1`` to keep Ray's default.

    Rows keep their order (``preserve_order``): Ray Data otherwise hands blocks on as
    their tasks finish, so the rows reached a training worker in a different order from
    run to run, its batches and chunks differed, and a seed did not reproduce a training
    on a source decoded by several tasks.

    ``quiet`` also keeps Ray Data's INFO lines ("Dataset ... execution finished") off
    the terminal; they still reach Ray's session log file.
    """
    ctx = ray.data.DataContext.get_current()  # imports Ray Data, which sets up its logger
    if quiet:
        for handler in logging.getLogger("ray.data").handlers:
            # The terminal's handler only; the session log file keeps everything.
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(max(handler.level, logging.WARNING))
    ctx.enable_progress_bars = progress.on_terminal() and (progress.is_enabled() or not quiet)
    if hasattr(ctx, "enable_operator_progress_bars"):
        ctx.enable_operator_progress_bars = progress.is_verbose()
    if not ctx.enable_progress_bars:
        # Ray Data then warns once that progress bars are off and how to turn them on;
        # here they are off on purpose (no terminal, or quiet), so the advice is noise.
        logging.getLogger("ray.data._internal.progress").addFilter(_drop_progress_bar_advice)
    ctx.print_on_execution_start = False
    ctx.execution_options.preserve_order = True
    ctx.verbose_progress = False
    if os.environ.get("DEIMOS_RAY_DATA_RESERVATION", "0") != "1" and hasattr(ctx, "op_resource_reservation_enabled"):
        ctx.op_resource_reservation_enabled = False


def _drop_progress_bar_advice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Progress bars disabled")


CLUSTER_RETRIES = 3
WAIT_VARIABLE = "DEIMOS_RAY_WAIT_FOR_NODES"


def on_cluster() -> bool:
    """True when the job joins a running Ray cluster (``ray job submit`` sets
    ``RAY_ADDRESS``) rather than starting a private local instance."""
    return bool(os.environ.get("RAY_ADDRESS"))


def worker_retries(max_failures: int | None) -> int:
    """Ray Train's ``max_failures`` for ``--max-failures`` (None: :data:`CLUSTER_RETRIES`
    on a cluster, 0 on a private local instance)."""
    if max_failures is not None:
        return max_failures
    return CLUSTER_RETRIES if on_cluster() else 0


def training_cpus(num_workers: int, cpus_per_worker: float) -> float:
    """Logical CPUs that training needs on a cluster: the workers', and one more so Ray
    Data tasks can run beside them (otherwise they wait forever)."""
    return num_workers * cpus_per_worker + 1


def shortfall(scaling: ScalingConfig, trainings: int = 1, extra_cpus: float = 0.0) -> dict[str, tuple[float, float]]:
    """What the live cluster lacks for ``trainings`` trainings at once beside Ray Data:
    ``{"CPU" or "GPU": (the cluster's, needed)}``, empty when they fit."""
    have = ray.cluster_resources()
    workers = scaling.num_workers * trainings
    need = {"CPU": training_cpus(workers, scaling.cpus_per_worker) + extra_cpus}
    if scaling.use_gpu:
        need["GPU"] = workers
    return {k: (have.get(k, 0.0), v) for k, v in need.items() if have.get(k, 0.0) < v}


class LostRoom(RuntimeError):
    """The cluster no longer has room for a running training beside Ray Data (a node
    was lost) and nothing says nodes will come (:class:`RoomWatch`)."""


class RoomWatch:
    """While a training runs on a cluster, check every :data:`POLL_S` seconds that its
    workers and Ray Data's task still fit (:func:`shortfall`). After a lost node, Ray
    Train starts the workers again wherever they fit, and with no CPU left for Ray Data
    they would wait for their data for ever; after :data:`GRACE_S` seconds short, the
    training is interrupted and :class:`LostRoom` raised instead, naming what is missing.

    Only in a command's driver on a cluster (a private local Ray loses no node), with
    workers, and unless nodes are awaited (:func:`waits_for_nodes`).
    """

    POLL_S = 5.0
    GRACE_S = 30.0

    def __init__(self, scaling: ScalingConfig):
        self.scaling = scaling
        self.active = (on_cluster() and scaling.num_workers > 0 and not waits_for_nodes(scaling)
                       and progress.is_enabled() and threading.current_thread() is threading.main_thread())
        self.lost: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="room-watch", daemon=True)

    def __enter__(self) -> RoomWatch:
        if self.active:
            self._thread.start()
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        self._stop.set()
        if kind is KeyboardInterrupt and self.lost:
            have, need = self.lost.get("CPU", self.lost.get("GPU", (0.0, 0.0)))
            unit = "CPUs" if "CPU" in self.lost else "GPUs"
            raise LostRoom(f"training stopped: the cluster has {have:g} {unit} left and its workers and Ray Data "
                           f"need {need:g} (a node was lost?)") from error

    def _watch(self) -> None:
        short_since = None
        while not self._stop.wait(self.POLL_S):
            try:
                short = shortfall(self.scaling)
            except Exception:  # the driver is shutting Ray down
                return
            if not short:
                short_since = None
                continue
            short_since = short_since or time.monotonic()
            if time.monotonic() - short_since >= self.GRACE_S:
                self.lost = short
                _thread.interrupt_main()  # trainer.fit() blocks the main thread
                return


def check_room(scaling: ScalingConfig, extra_cpus: float = 0.0) -> None:
    """Refuse at once a training the cluster can never run beside Ray Data.

    Ray Train's workers take their CPUs first; Ray Data's tasks (decoding, feeding the
    workers, assigning) then need at least one more. Without it the workers start and
    wait forever for their data, silently. A private local instance is started large
    enough (:func:`local_cpus_needed`); a cluster is what it is, so it is checked here:
    total CPUs (and GPUs) against :func:`training_cpus`, and one node against one
    worker. ``extra_cpus`` counts other processes that hold CPUs during training (a Tune
    trial's own). ``scaling.wait_for_nodes``, or ``DEIMOS_RAY_WAIT_FOR_NODES=1`` in the
    cluster's environment (``cluster.yaml`` sets it on the head), skips the check, for an
    autoscaler that adds nodes on demand.

    Raises:
        UsageError: naming what is missing and the flags that fix it.
    """
    if scaling.num_workers == 0 or waits_for_nodes(scaling):
        return
    short = shortfall(scaling, extra_cpus=extra_cpus)
    largest = max((n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)
    workers = f"{scaling.num_workers} Ray Train worker(s) x {scaling.cpus_per_worker:g} CPU"
    fix = ("use fewer --num-workers, or --set scaling.cpus_per_worker=0.5 (fractional CPUs), or add "
           "nodes (--set scaling.wait_for_nodes=true if an autoscaler adds them on demand)")
    if "CPU" in short:
        cpus, need = short["CPU"]
        raise UsageError(f"the cluster has {cpus:g} CPUs and {workers}{' and the trial' if extra_cpus else ''} "
                         f"need {need:g} (one left for Ray Data's tasks, without which training waits "
                         f"forever): {fix}")
    if largest < scaling.cpus_per_worker:
        raise UsageError(f"no node has {scaling.cpus_per_worker:g} CPUs for one Ray Train worker (the largest "
                         f"has {largest:g}): {fix}")
    if "GPU" in short:
        gpus = int(short["GPU"][0])
        if gpus == 0:
            raise UsageError("--use-gpu needs GPUs and the cluster has none: drop --use-gpu")
        raise UsageError(f"--use-gpu gives each of {scaling.num_workers} workers a GPU and the cluster has "
                         f"{gpus}: use --num-workers {gpus} or add GPU nodes")


def waits_for_nodes(scaling: ScalingConfig) -> bool:
    """Whether training waits for nodes to come (an autoscaler): ``scaling.wait_for_nodes``
    or ``DEIMOS_RAY_WAIT_FOR_NODES=1`` (:func:`check_room`)."""
    return scaling.wait_for_nodes or os.environ.get(WAIT_VARIABLE) == "1"


def local_cpus_needed(num_workers: int, cpus_per_worker: float) -> int:
    """Logical CPUs for a local instance: the machine's, and at least
    :func:`training_cpus`."""
    return max(os.cpu_count() or 1, math.ceil(training_cpus(num_workers, cpus_per_worker)))
