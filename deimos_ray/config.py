"""Typed, frozen configuration shared by every job, with YAML load/save and validation.

A job's configuration is a tree of frozen dataclasses. It is loaded from a commented YAML
file (``configs/<job>.yaml``), overridden from the command line with dotted paths
(``model.n_clusters=10``), validated eagerly, and written next to every output
(``DIR/config.yaml``, the checkpoints and the Parquet file metadata), so any result says
how it was made.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ON_ERROR_CHOICES = ("skip", "fail")
RESTART_COMBINES = ("consensus", "lowest_loss")


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are turned into model inputs.

    Attributes:
        spec: Source specification: ``digits`` (built in), a ``.npz`` file, or a folder of
            images. A ``format:`` prefix (``npz:``, ``folder:``) overrides detection.
        image_size: Resize images to ``image_size`` x ``image_size``. ``None`` keeps the
            native size of array sources and uses 28 for image files.
        channels: 1 (grayscale) or 3 (RGB).
        on_error: ``skip`` records unreadable images in ``rejected.parquet`` and carries
            on; ``fail`` stops at the first one, naming the file and the reason.
        limit: Use only the first ``limit`` images (``None``: all). For quick trials.
        labels_from_folders: Folder sources: the parent folder's name is the class.
        originals_only: HiRISE: keep originals, drop the augmented copies.
        gz_labels: Galaxy Zoo: derive labels (elliptical / spiral / unknown) from votes.
        gz_elliptical: Galaxy Zoo: Class1.1 fraction above which a galaxy is elliptical.
        gz_spiral: Galaxy Zoo: Class1.2 fraction above which a galaxy is a spiral.
        tile: Cut every image into ``tile`` x ``tile`` tiles (survey exposures, HiRISE
            browse products); each tile is a row whose ``group`` is its source image.
        stride: Step between tiles (default ``tile``: no overlap). Tiles that would
            run past the image's edge are not cut.
        max_pixels: Images with more pixels are rejected (decompression bombs).
        metadata: A CSV whose columns are joined onto the rows.
        metadata_key: Its column holding the image id (matched against the row id, or
            the id's file name or stem when that is what the CSV holds).
        metadata_features: Numeric metadata columns to standardise and append to the
            feature vectors of dense models and of the k-means baseline.
        metadata_weight: Weight of those appended features against the pixels.
    """

    spec: str = "digits"
    image_size: int | None = None
    channels: int = 1
    on_error: str = "skip"
    limit: int | None = None
    labels_from_folders: bool = False
    originals_only: bool = False
    gz_labels: bool = True
    gz_elliptical: float = 0.8
    gz_spiral: float = 0.8
    tile: int | None = None
    stride: int | None = None
    max_pixels: int = 50_000_000
    metadata: str | None = None
    metadata_key: str = "id"
    metadata_features: tuple[str, ...] = ()
    metadata_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels}")
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(
                f"data.on_error must be one of {ON_ERROR_CHOICES}, got {self.on_error!r}"
            )
        if self.image_size is not None and self.image_size < 4:
            raise ValueError(f"data.image_size must be at least 4 pixels, got {self.image_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be a positive number of images, got {self.limit}")
        if self.tile is not None and self.tile < 4:
            raise ValueError(f"data.tile must be at least 4 pixels, got {self.tile}")
        if self.stride is not None and (self.tile is None or self.stride < 1):
            raise ValueError("data.stride needs data.tile and must be >= 1")
        if self.metadata_features and not self.metadata:
            raise ValueError("data.metadata_features needs data.metadata (a CSV file)")
        if self.max_pixels < 1:
            raise ValueError(f"data.max_pixels must be >= 1, got {self.max_pixels}")


@dataclass(frozen=True)
class ScalingConfig:
    """How many Ray Train workers run, and on what.

    Attributes:
        num_workers: Data-parallel training workers. 0 runs the training loop inside the
            driver process (Ray Train's local mode: fastest to start, one process).
        use_gpu: Give each worker one GPU (NCCL); otherwise CPU workers (Gloo).
        cpus_per_worker: Logical CPUs reserved per worker. Keep it below the node's CPU
            count so Ray Data's tasks can still be scheduled beside the workers.
        torch_threads: CPU threads PyTorch uses in each training process: every worker,
            or the driver with ``num_workers=0``. None (default): ``cpus_per_worker``
            rounded down, at least 1, in the driver too. The thread count changes the
            order in which floating-point sums are added up, and self-supervised
            training (DAC above all) amplifies those differences, so one count
            everywhere is what makes a seed give the same model wherever it trains.
    """

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"scaling.num_workers must be >= 0, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"scaling.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"scaling.torch_threads must be >= 1 or null, got {self.torch_threads}")

    @property
    def threads(self) -> int:
        """The CPU thread count PyTorch gets in each training process."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, int(self.cpus_per_worker))


def check_restarts(restarts: int, restart_combine: str, concurrent_restarts: int) -> None:
    """Validate a model's restart settings (``restarts``, ``restart_combine``,
    ``concurrent_restarts``; DAC and DESOM take them)."""
    if restarts < 1:
        raise ValueError(f"model.restarts must be >= 1, got {restarts}")
    if concurrent_restarts < 1:
        raise ValueError(f"model.concurrent_restarts must be >= 1, got {concurrent_restarts}")
    if restart_combine not in RESTART_COMBINES:
        raise ValueError(f"model.restart_combine must be one of {RESTART_COMBINES}, got {restart_combine!r}")


def _resolve_type(tp: Any) -> Any:
    """Return the dataclass inside ``X``, ``X | None`` or ``Optional[X]``, else ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type, data: dict[str, Any] | None) -> Any:
    """Build the frozen dataclass ``cls`` from a nested dict, rejecting unknown keys.

    Args:
        cls: A dataclass type whose fields may themselves be dataclasses.
        data: Plain values as read from YAML; missing keys take the defaults.

    Raises:
        ValueError: A key is not a field of ``cls`` (typos must not pass silently).
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} for {cls.__name__}; valid keys: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = _resolve_type(hints[name])
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value)
        elif isinstance(value, list):
            value = tuple(value)  # YAML lists become tuples so configs stay hashable
        kwargs[name] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict of a config dataclass (tuples become lists, for YAML and JSON)."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def stored_settings(cls: type, data: dict[str, Any] | None) -> dict[str, Any]:
    """A stored config (a run's ``config.yaml``, a checkpoint's) as :func:`to_dict` of
    ``cls`` gives it today: a field added since it was written counts as its default, so
    it compares equal to a config made now with that default.

    Raises:
        ValueError: It holds a field ``cls`` no longer has.
    """
    return to_dict(from_dict(cls, data))


def override(cfg: Any, path: str, value: Any) -> Any:
    """Return a copy of ``cfg`` with the dotted field ``path`` set to ``value``.

    Example: ``override(cfg, "model.n_clusters", 10)``. Validation runs again on the new
    objects, so a bad value fails here, before any work starts.
    """
    head, _, rest = path.partition(".")
    if head not in {f.name for f in dataclasses.fields(cfg)}:
        raise ValueError(f"{type(cfg).__name__} has no field {head!r} (from {path!r})")
    if rest:
        return dataclasses.replace(cfg, **{head: override(getattr(cfg, head), rest, value)})
    if isinstance(value, list):
        value = tuple(value)
    return dataclasses.replace(cfg, **{head: value})


def override_all(cfg: Any, settings: dict[str, Any]) -> Any:
    """Return a copy of ``cfg`` with every dotted field of ``settings`` set, validated
    once, after all of them: rules that tie two fields together (DESOM's restart
    consensus needs ``n_clusters``) must not depend on the order the settings come in.

    Raises:
        ValueError: A path names no field, or the result is not a valid config.
    """
    data = to_dict(cfg)
    for path, value in settings.items():
        *heads, leaf = path.split(".")
        node = data
        for head in heads:
            node = node.get(head) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise ValueError(f"{type(cfg).__name__} has no field {path!r}")
        node[leaf] = value
    return from_dict(type(cfg), data)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.path=value`` into the path and a YAML-typed value."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key written twice in one mapping.

    PyYAML keeps the last of two equal keys without a word, so a setting written twice
    would silently lose its first value.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"key {key!r} is written twice",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict, with a clear error when it is missing or
    when a key is written twice in one mapping."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {p} does not exist")
    with p.open() as stream:  # a stream, so that errors name the file and line
        loaded = yaml.load(stream, Loader=_UniqueKeyLoader) or {}  # a SafeLoader: no arbitrary objects
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {p} must hold a mapping at the top level")
    return loaded


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (the file a run can be reproduced from)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = [
    "DataConfig",
    "ScalingConfig",
    "RESTART_COMBINES",
    "check_restarts",
    "from_dict",
    "to_dict",
    "override",
    "override_all",
    "parse_override",
    "load_yaml",
    "save_yaml",
]
