"""The feature cache is read on a second preparation of the same inputs, and missed when
the inputs, the backbone's input size or the weights change; an entry appears whole, a
damaged one is named, removed and computed again, and writers of one entry at once leave
one complete entry."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from deimos_ray.config import DataConfig, FeatureConfig
from deimos_ray.data.feature_cache import FEATURES_FILE, INFO_FILE, REJECTED_FILE, write_entry
from deimos_ray.data.prepare import prepare_data
from tests.helpers import write_bad_files, write_image_folder

LITE = FeatureConfig(backbone="efficientnet_lite0", image_size=32, normalize="none")


def _rows(data):
    table = data.good.to_pandas().sort_values("id")
    return table["id"].tolist(), np.stack(table["x"].to_numpy())


def test_the_cache_is_hit_for_the_same_inputs_and_missed_when_they_change(ray_session, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_image_folder(images, n_good=6)
    write_bad_files(images)
    cache = tmp_path / "cache"
    cfg = DataConfig(spec=str(images))

    first = prepare_data(cfg, LITE, cache)
    assert not first.cache_hit and first.input_shape == (1280,)
    assert len(first.rejected) == 3 and set(first.rejected["stage"]) == {"decode"}
    second = prepare_data(cfg, LITE, cache)
    assert second.cache_hit and len(second.rejected) == 3
    ids, x = _rows(first)
    assert _rows(second)[0] == ids
    np.testing.assert_array_equal(_rows(second)[1], x)
    assert len(list(cache.iterdir())) == 1 and not list(cache.glob(".*"))

    # Another input size, or a changed file, is another entry.
    assert not prepare_data(cfg, FeatureConfig(backbone="efficientnet_lite0", image_size=48,
                                               normalize="none"), cache).cache_hit
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(images / "a" / "img1.jpg")
    changed = prepare_data(cfg, LITE, cache)
    assert not changed.cache_hit and len(list(cache.iterdir())) == 3
    changed_ids, changed_x = _rows(changed)
    row = changed_ids.index(next(i for i in changed_ids if i.endswith("img1.jpg")))
    assert not np.allclose(changed_x[row], x[row])


def test_another_weights_file_is_another_entry(ray_session, tmp_path):
    pytest.importorskip("torchvision")
    import torchvision

    cache = tmp_path / "cache"
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"resnet18-{seed}.pt"
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
        paths.append(path)
    cfg = DataConfig(spec="digits", limit=20)
    runs = [prepare_data(cfg, FeatureConfig(backbone="torchvision:resnet18", weights=str(p), image_size=32,
                                            normalize="none"), cache) for p in paths]
    assert not any(r.cache_hit for r in runs) and len(list(cache.iterdir())) == 2
    assert not np.allclose(_rows(runs[0])[1], _rows(runs[1])[1])


def test_standardized_features_have_zero_mean_and_unit_variance(ray_session, tmp_path):
    data = prepare_data(DataConfig(spec="digits", limit=40),
                        FeatureConfig(backbone="efficientnet_lite0", image_size=32), tmp_path)
    x = _rows(data)[1]
    varying = data.feature_stats["std"] > 1e-3
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(x[:, varying].std(axis=0), 1, rtol=1e-3)


def test_a_pixel_size_beside_a_backbone_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--feature-size"):
        prepare_data(DataConfig(spec="digits", image_size=16), LITE, tmp_path)


def test_a_damaged_entry_is_named_removed_and_computed_again(ray_session, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_image_folder(images, n_good=6)
    cache = tmp_path / "cache"
    cfg = DataConfig(spec=str(images))
    first = prepare_data(cfg, LITE, cache)
    (entry,) = cache.iterdir()
    ids, x = _rows(first)

    damages = [
        lambda: (entry / FEATURES_FILE).write_bytes((entry / FEATURES_FILE).read_bytes()[:-200]),  # truncated
        lambda: (entry / REJECTED_FILE).unlink(),  # incomplete
        lambda: (entry / INFO_FILE).write_text("{"),  # unreadable
    ]
    for damage in damages:
        damage()
        with pytest.warns(UserWarning, match=f"feature cache entry {entry} is damaged"):
            again = prepare_data(cfg, LITE, cache)
        assert not again.cache_hit
        assert _rows(again)[0] == ids
        np.testing.assert_allclose(_rows(again)[1], x, rtol=1e-5, atol=1e-6)
        assert [p.name for p in cache.iterdir()] == [entry.name]  # recomputed whole, nothing left aside
    assert prepare_data(cfg, LITE, cache).cache_hit


def test_writers_of_one_entry_at_once_leave_one_complete_entry(tmp_path):
    rng = np.random.default_rng(0)
    table = pa.table({"id": [f"img{i}" for i in range(50)], "label": np.zeros(50, np.int64),
                      "x": list(rng.normal(size=(50, 8)).astype(np.float32))})
    rejected = pd.DataFrame({"id": ["bad"], "path": ["bad.png"], "reason": ["corrupt"], "stage": ["decode"]})
    start = threading.Barrier(4)

    def write():
        start.wait()
        write_entry(tmp_path, "key", table, rejected, "efficientnet_lite0", 32)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # one entry, no copy left behind
    info = json.loads((tmp_path / "key" / INFO_FILE).read_text())
    assert set(info["sha256"]) == {FEATURES_FILE, REJECTED_FILE} and info["rows"] == 50
    assert pq.read_table(tmp_path / "key" / FEATURES_FILE).num_rows == 50
