"""Backbone features on Ray Data: a ``map_batches`` stage whose actors each hold one
replica of a pretrained backbone (:mod:`deimos_ray.models.backbones`), streaming the
preprocessed images ``x`` (C, H, W) to feature vectors ``x`` (D,).

One actor per GPU when the stage runs on GPUs (bf16 there), else one single-threaded
actor per CPU of the cluster, each decoding its own blocks: on CPUs, processes beat
threads, and the decode is a hundredth of the forward pass. With ``views`` (``rot4``,
``dihedral``) each image's features are the mean over its rotations (and reflections):
on a GPU all views of a batch go through the backbone as one batch; on a CPU view by
view, so ``rot4`` costs four forward passes an image and ``dihedral`` eight. With
``augment:N`` the image's own features stay ``x`` and the features of N random augmented
views of it (:func:`deimos_ray.data.augment.augment`, seeded by the pixels of its forward
chunk, so a rerun over the same blocks draws the same views) go into ``BANK_COLUMN``
(N, D): N more forward passes an image, and N times the cache. A batch that fails is
retried image by image, and an image that still fails is flagged (``ok``, ``reason``,
``stage="features"``) like a decode failure, so it is recorded as rejected and no input
is lost.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import ray
import torch

from deimos_ray.config import bank_size
from deimos_ray.data.augment import AugmentConfig, augment
from deimos_ray.models.backbones import load_backbone

# Images per forward pass on a CPU: EfficientNet-Lite0 at 224 px on one thread ran 36
# images/s in batches of 16 and 24 in batches of 64 (activations that fit the cache).
CPU_FORWARD_BATCH = 16
# (right-angle turns, mirrored) of each view set.
VIEWS = {"none": [(0, False)], "rot4": [(k, False) for k in range(4)],
         "dihedral": [(k, flip) for flip in (False, True) for k in range(4)]}
BANK_COLUMN = "_views"  # augment:N: (N, D) features of each image's augmented views


def view_of(images: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """(B, C, H, W) images mirrored left-right (when ``mirrored``), then turned by
    ``turns`` right angles."""
    images = images.flip(-1) if mirrored else images
    return torch.rot90(images, turns, dims=(-2, -1)) if turns else images


class FeatureExtractor:
    """Ray Data actor: loads the backbone once, then maps batches of ``x`` to features."""

    def __init__(self, name: str, weights: str | None, image_size: int | None, use_gpu: bool = False,
                 views: str = "none"):
        self.bank = bank_size(views)
        self.views = VIEWS["none" if self.bank else views]
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        backbone = load_backbone(name, weights, image_size)
        self.out_dim = backbone.out_dim or 1
        self.backbone = backbone.to(self.device, dtype=self.dtype, memory_format=torch.channels_last)

    @property
    def step(self) -> int | None:
        """Images per forward pass: the whole batch on a GPU, ``CPU_FORWARD_BATCH`` on a CPU."""
        return None if self.device.type == "cuda" else CPU_FORWARD_BATCH

    def to_device(self, x: np.ndarray) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> the backbone's device, dtype and memory format."""
        images = torch.from_numpy(np.array(x, dtype=np.float32))  # a writable copy
        return images.to(self.device, dtype=self.dtype).contiguous(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> np.ndarray:
        """Images already on the device (:meth:`to_device`) -> (B, D) float32 features."""
        with torch.inference_mode():
            return self.backbone(images).float().cpu().numpy()

    def features(self, x: np.ndarray) -> np.ndarray:
        """(B, C, H, W) images in [0, 1] -> (B, D) float32 features (the mean over the
        views, when there are several); with a bank of N views, (B, (N + 1) D): the
        image's own features, then its views'."""
        step = self.step or len(x)
        out = [self.with_bank(x[start:start + step]) for start in range(0, len(x), step)]
        return np.concatenate(out) if out else np.zeros((0, self.out_dim * (self.bank + 1)), np.float32)

    def with_bank(self, x: np.ndarray) -> np.ndarray:
        """:meth:`pooled` features of ``x``, and with a bank the features of its N
        augmented views beside them."""
        images = self.to_device(x)
        own = self.pooled(images)
        if not self.bank:
            return own
        # Seeded by the chunk's pixels: the same blocks get the same views in every run.
        g = torch.Generator().manual_seed(zlib.crc32(np.ascontiguousarray(x, dtype=np.float32).tobytes()))
        plain = torch.from_numpy(np.array(x, dtype=np.float32))
        views = [self.forward(self.to_device(augment(plain, AugmentConfig(), g).numpy())) for _ in range(self.bank)]
        return np.concatenate([own, *views], axis=1)

    def pooled(self, images: torch.Tensor) -> np.ndarray:
        """The mean of the features of every view of ``images`` (on the device)."""
        if len(self.views) == 1:
            return self.forward(images)
        if self.device.type == "cuda":  # one batch of every view
            views = torch.cat([view_of(images, *v) for v in self.views])
            return self.forward(views).reshape(len(self.views), len(images), -1).mean(axis=0)
        return np.mean([self.forward(view_of(images, *v)) for v in self.views], axis=0)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["x"])
        # Rows the decode already rejected keep their flags; only readable images go
        # through the backbone.
        ok = np.asarray(batch.get("ok", np.ones(n, dtype=bool)), dtype=bool).copy()
        reason = np.asarray(batch.get("reason", [""] * n), dtype=object).copy()
        stage = np.asarray(batch.get("stage", ["features"] * n), dtype=object).copy()
        readable = np.flatnonzero(ok)
        rows: list[np.ndarray | None] = [None] * n
        try:
            if len(readable):
                for i, f in zip(readable, self.features(np.asarray(batch["x"])[readable]), strict=True):
                    rows[i] = f
        except Exception:  # find the images that fail; keep the others
            for i in readable:
                try:
                    rows[i] = self.features(np.asarray(batch["x"][i])[None])[0]
                except Exception as exc:  # recorded as a rejected row, never fatal
                    ok[i], reason[i], stage[i] = False, f"{type(exc).__name__}: {exc}", "features"
        width = next((len(r) for r in rows if r is not None), self.out_dim * (self.bank + 1))
        features = np.stack([r if r is not None else np.zeros(width, np.float32) for r in rows])
        out = {k: v for k, v in batch.items() if k not in ("x", "ok", "reason", "stage")}
        if self.bank:
            dim = width // (self.bank + 1)
            out[BANK_COLUMN] = features[:, dim:].reshape(n, self.bank, dim)
            features = features[:, :dim]
        out.update(x=features, ok=ok, reason=reason.astype(str), stage=stage.astype(str))
        return out


def extract_features(ds: ray.data.Dataset, name: str, weights: str | None = None,
                     image_size: int | None = None, use_gpu: bool = False, actors: int | None = None,
                     batch_size: int = 64, views: str = "none") -> ray.data.Dataset:
    """Replace every row's ``x`` by its ``name`` backbone features, flagging failures.

    Args:
        ds: Preprocessed, readable rows with ``x`` (C, H, W) in [0, 1].
        name, weights, image_size: The backbone (:func:`deimos_ray.models.backbones.load_backbone`).
        use_gpu: One GPU per actor.
        actors: Backbone replicas (default: the cluster's GPUs with ``use_gpu``, else its CPUs).
        batch_size: Images per block handed to an actor (and per forward pass on a GPU).
        views: ``none``, ``rot4``, ``dihedral`` or ``augment:N`` (module docstring).

    Returns:
        The rows with ``x`` = (D,) float32 features and ``ok``/``reason``/``stage`` flags.
    """
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("GPU" if use_gpu else "CPU", 0)))
    return ds.map_batches(
        FeatureExtractor,
        fn_constructor_args=(name, weights, image_size, use_gpu, views),
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_gpus=1 if use_gpu else 0,
    )
