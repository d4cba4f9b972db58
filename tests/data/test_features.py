"""Backbone features on Ray Data equal a direct call on the same images, and an image
the backbone cannot take is flagged, not lost."""

from __future__ import annotations

import numpy as np
import ray
import torch

from deimos_ray.data.features import (
    BANK_COLUMN,
    CPU_FORWARD_BATCH,
    FeatureExtractor,
    extract_features,
)
from deimos_ray.data.preprocess import split_rejected
from deimos_ray.models.backbones import load_backbone


def test_ray_data_features_equal_a_direct_call(ray_session):
    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 20, 20)).astype(np.float32)
    rows = [{"id": f"img{i}", "x": x[i]} for i in range(12)]
    ds = extract_features(ray.data.from_items(rows), "efficientnet_lite0", image_size=64, batch_size=5, actors=1)
    good, bad = split_rejected(ds)
    table = good.to_pandas().sort_values("id", key=lambda s: s.str[3:].astype(int))
    assert bad.count() == 0 and len(table) == 12
    with torch.no_grad():
        direct = load_backbone("efficientnet_lite0", image_size=64)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.stack(table["x"].to_numpy()), direct, rtol=1e-4, atol=1e-5)


def test_an_image_the_backbone_cannot_take_is_flagged_with_its_reason():
    extractor = FeatureExtractor("efficientnet_lite0", None, 32)
    batch = {"id": np.array(["a", "b"]), "x": np.empty(2, dtype=object)}
    batch["x"][0], batch["x"][1] = np.ones((1, 8, 8), np.float32), np.ones((2, 8, 8), np.float32)  # 2 channels
    out = extractor(batch)
    assert out["ok"].tolist() == [True, False] and out["stage"].tolist() == ["features"] * 2
    assert out["reason"][0] == "" and "1 or 3 channels" in out["reason"][1]
    with torch.no_grad():
        expected = load_backbone("efficientnet_lite0", image_size=32)(torch.ones(1, 1, 8, 8))[0].numpy()
    np.testing.assert_allclose(out["x"][0], expected, rtol=1e-5, atol=1e-6)


def test_a_cpu_extractor_runs_a_large_batch_in_forward_passes_of_16_with_the_same_features():
    extractor = FeatureExtractor("efficientnet_lite0", None, 32)
    x = np.random.default_rng(1).random((CPU_FORWARD_BATCH * 2 + 3, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        whole = load_backbone("efficientnet_lite0", image_size=32)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(extractor.features(x), whole, rtol=1e-4, atol=1e-5)
    assert extractor.features(x[:0]).shape == (0, 1280)


def test_pooled_views_are_the_same_for_an_image_and_its_rotation_or_mirror_image():
    x = np.random.default_rng(2).random((3, 1, 32, 32)).astype(np.float32)
    turned, mirrored = np.rot90(x, 1, axes=(-2, -1)).copy(), x[..., ::-1].copy()
    rot4 = FeatureExtractor("efficientnet_lite0", None, 32, views="rot4")
    np.testing.assert_allclose(rot4.features(turned), rot4.features(x), rtol=1e-4, atol=1e-5)
    plain = FeatureExtractor("efficientnet_lite0", None, 32).features(x)
    assert not np.allclose(plain, rot4.features(x), atol=1e-3)  # the views do change the features
    dihedral = FeatureExtractor("efficientnet_lite0", None, 32, views="dihedral")
    for other in (turned, mirrored):
        np.testing.assert_allclose(dihedral.features(other), dihedral.features(x), rtol=1e-4, atol=1e-5)


def test_a_view_bank_keeps_the_images_own_features_and_n_seeded_augmented_views():
    x = np.random.default_rng(3).random((4, 1, 32, 32)).astype(np.float32)
    batch = {"id": np.array(list("abcd")), "x": x}
    bank = FeatureExtractor("efficientnet_lite0", None, 32, views="augment:3")
    out = bank(dict(batch))
    plain = FeatureExtractor("efficientnet_lite0", None, 32).features(x)
    np.testing.assert_allclose(out["x"], plain, rtol=1e-4, atol=1e-5)  # x: the image as it is
    views = out[BANK_COLUMN]
    assert views.shape == (4, 3, 1280) and out["ok"].all()
    for i in range(4):  # three different views, none of them the image itself
        assert not np.allclose(views[i, 0], views[i, 1], atol=1e-3)
        assert not np.allclose(views[i, 0], plain[i], atol=1e-3)
    # Seeded by the pixels: the same images get the same views in another run.
    np.testing.assert_array_equal(bank(dict(batch))[BANK_COLUMN], views)
