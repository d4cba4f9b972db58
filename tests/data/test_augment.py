"""Batched augmentation: correct operations, reproducible under a seed."""

import pytest
import torch

from deimos_ray.data.augment import (
    AugmentConfig,
    augment,
    random_affine,
    random_resized_crop,
    rotate90,
    two_views,
)

OFF = AugmentConfig(rotate90=False, hflip=False, vflip=False, brightness=0, contrast=0, crop_scale=(1.0, 1.0))


def batch(n=8, size=6):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


def test_same_seed_same_views_other_seed_other_views():
    x, cfg = batch(), AugmentConfig()
    a = augment(x, cfg, torch.Generator().manual_seed(1))
    b = augment(x, cfg, torch.Generator().manual_seed(1))
    c = augment(x, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_everything_off_is_identity():
    x = batch()
    assert torch.equal(augment(x, OFF, torch.Generator().manual_seed(0)), x)


def test_rotate90_per_image():
    x = torch.arange(4.0).view(1, 1, 2, 2).repeat(4, 1, 1, 1)
    out = rotate90(x, torch.tensor([0, 1, 2, 3]))
    for k in range(4):
        assert torch.equal(out[k], torch.rot90(x[k], k, dims=(1, 2)))


def test_rotations_and_flips_preserve_pixel_multisets():
    x = batch()
    cfg = AugmentConfig(brightness=0, contrast=0, crop_scale=(1.0, 1.0))
    out = augment(x, cfg, torch.Generator().manual_seed(3))
    for a, b in zip(x, out, strict=True):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)


def test_full_crop_is_identity_and_small_crop_zooms():
    x = batch(size=8)
    # a "crop" of the whole image, resampled with grid_sample at the same size
    same = random_resized_crop(x, AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)), torch.Generator())
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    small = random_resized_crop(x, AugmentConfig(crop_scale=(0.1, 0.1), crop_ratio=(1.0, 1.0)), torch.Generator().manual_seed(0))
    assert small.shape == x.shape and not torch.allclose(small, x)


def test_two_views_differ_and_bad_config_fails():
    x = batch()
    v1, v2 = two_views(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == x.shape and not torch.equal(v1, v2)
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.0, 1.0))


def test_affine_warp_zooms_and_shifts_within_its_limits():
    rows = torch.arange(8.0).view(1, 1, 8, 1).expand(4, 1, 8, 8)  # pixel value = row index
    still = random_affine(rows, AugmentConfig(), torch.Generator())
    torch.testing.assert_close(still, rows, atol=1e-5, rtol=0)
    zoomed = random_affine(rows, AugmentConfig(zoom=(2.0, 2.0)), torch.Generator())
    # A 2x zoom shows the middle half of the rows, still constant along each row.
    assert zoomed.min() >= 1.5 and zoomed.max() <= 5.5
    torch.testing.assert_close(zoomed, zoomed[..., :1].expand_as(zoomed))

    dot = torch.zeros(16, 1, 16, 16)
    dot[:, :, 7:9, 7:9] = 1.0
    moved = random_affine(dot, AugmentConfig(shift=0.125), torch.Generator().manual_seed(0))
    grid = torch.arange(16.0)
    centre_row = (moved.sum(dim=3) * grid).sum(dim=(1, 2)) / moved.sum(dim=(1, 2, 3))
    assert (centre_row - 7.5).abs().max() <= 2.0 + 1e-4  # at most 1/8 of 16 pixels
    assert (centre_row - 7.5).abs().max() > 0.5
    with pytest.raises(ValueError, match="zoom"):
        AugmentConfig(zoom=(0.0, 1.0))
