"""Batched image augmentation on tensors, for training loops (on the worker's device).

Whole batches are augmented with a handful of tensor operations, never image by image:
the per-image torchvision pipeline runs about 1,600 images/s on a CPU core, batched
rotations and flips tens of thousands. Every random choice comes from the
``torch.Generator`` passed in, so a seed reproduces the same views.

Operations (each per image, each optional): a small random affine warp (rotation by a
few degrees, shift, zoom), rotation by a multiple of 90 degrees, horizontal and vertical
flips, brightness and contrast jitter, and a random resized crop (area fraction and
aspect ratio drawn per image). Warps and crops resample back to the input size with
``grid_sample``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run, and how strong they are.

    Attributes:
        rotate90: Rotate each image by 0, 90, 180 or 270 degrees (orbital and sky images
            have no preferred orientation).
        hflip: Flip left-right with probability 1/2.
        vflip: Flip top-bottom with probability 1/2.
        brightness: Add a shift drawn from [-b, b] (pixels in [0, 1]).
        contrast: Scale contrast about the image mean by a factor from [1-c, 1+c].
        crop_scale: (min, max) fraction of the area kept by the random resized crop;
            (1, 1) disables it.
        crop_ratio: (min, max) aspect ratio of the crop.
        rotate_degrees: Rotate by an angle drawn from [-d, d] degrees (0 disables).
        shift: Translate by up to this fraction of the width and of the height.
        zoom: (min, max) scale factor of the affine warp; (1, 1) disables it. Pixels
            the warp brings in from outside repeat the nearest edge (Keras's "nearest").
    """

    rotate90: bool = True
    hflip: bool = True
    vflip: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotate_degrees: float = 0.0
    shift: float = 0.0
    zoom: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.brightness < 0 or not 0 <= self.contrast < 1:
            raise ValueError("brightness must be >= 0 and contrast in [0, 1)")
        if self.rotate_degrees < 0 or not 0 <= self.shift < 1 or not 0 < self.zoom[0] <= self.zoom[1]:
            raise ValueError("rotate_degrees must be >= 0, shift in [0, 1) and zoom 0 < min <= max")

    @property
    def warps(self) -> bool:
        """True when the small affine warp is on."""
        return self.rotate_degrees > 0 or self.shift > 0 or self.zoom != (1.0, 1.0)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def rotate90(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate image i of (B, C, H, W) by k[i] * 90 degrees (square images)."""
    out = x.clone()
    for turns in range(1, 4):
        sel = k == turns
        if sel.any():
            out[sel] = torch.rot90(x[sel], turns, dims=(2, 3))
    return out


def random_resized_crop(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Per-image random crop (area and aspect drawn per image), resampled to (H, W)."""
    b = x.shape[0]
    area = _uniform(b, *cfg.crop_scale, g, x.device)
    log_r = _uniform(b, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), g, x.device)
    ratio = torch.exp(log_r)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop size as a fraction of the side
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(b, generator=g, device=x.device) - 1)  # centre in [-1+w, 1-w]
    cy = (1 - h) * (2 * torch.rand(b, generator=g, device=x.device) - 1)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_affine(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Per-image rotation by a few degrees, shift and zoom, resampled to (H, W)."""
    b = x.shape[0]
    angle = torch.deg2rad(_uniform(b, -cfg.rotate_degrees, cfg.rotate_degrees, g, x.device))
    scale = _uniform(b, *cfg.zoom, g, x.device)
    # affine_grid maps output to input coordinates in [-1, 1]: a zoom by s samples a
    # window 1/s as wide, and a shift by a fraction f of the side moves it by 2f.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    theta[:, :, 2] = 2 * cfg.shift * (2 * torch.rand(b, 2, generator=g, device=x.device) - 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """One random view of every image of a (B, C, H, W) batch in [0, 1]."""
    b = x.shape[0]
    if cfg.warps:
        x = random_affine(x, cfg, g)
    if cfg.crop_scale != (1.0, 1.0):
        x = random_resized_crop(x, cfg, g)
    if cfg.rotate90 and x.shape[-1] == x.shape[-2]:
        x = rotate90(x, torch.randint(0, 4, (b,), generator=g, device=x.device))
    if cfg.hflip:
        flip = torch.rand(b, generator=g, device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if cfg.vflip:
        flip = torch.rand(b, generator=g, device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-2), x)
    if cfg.contrast > 0:
        factor = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, g, x.device).view(-1, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor + mean
    if cfg.brightness > 0:
        x = x + _uniform(b, -cfg.brightness, cfg.brightness, g, x.device).view(-1, 1, 1, 1)
    return x.clamp(0.0, 1.0)


def two_views(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent random views of each image, for algorithms that train on pairs."""
    return augment(x, cfg, g), augment(x, cfg, g)
