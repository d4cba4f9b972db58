"""Metadata CSVs join onto rows by id, file name or stem; features are standardised."""

import numpy as np
import pandas as pd
import pytest

from deimos_ray.config import DataConfig
from deimos_ray.data.metadata import choose_key_form, feature_table
from deimos_ray.data.prepare import prepare_data
from tests.helpers import write_image_folder


def test_key_form_detection():
    keys = pd.Index(["img1", "img2"])
    assert choose_key_form(["a/img1.png", "a/img2.png"], keys) == "stem"
    assert choose_key_form(["img1"], keys) == "id"
    with pytest.raises(ValueError, match="no metadata key matches"):
        choose_key_form(["zzz.png"], keys)


def test_feature_table_standardises_and_weights():
    meta = pd.DataFrame({"a": [1.0, 3.0, np.nan], "b": [5.0, 5.0, 5.0]}, index=["x", "y", "z"])
    f = feature_table(meta, ("a", "b"), weight=2.0)
    assert f.loc["x", "a"] == pytest.approx(-2.0) and f.loc["y", "a"] == pytest.approx(2.0)
    assert f.loc["z", "a"] == 0.0 and (f["b"] == 0).all()  # missing -> mean; constant -> 0


def test_join_and_append_features(ray_session, tmp_path):
    paths = write_image_folder(tmp_path / "imgs", n_good=4)
    stems = sorted(p.stem for p in paths)
    pd.DataFrame({"name": stems[:3], "airmass": [1.0, 2.0, 3.0], "site": ["a", "b", "c"]}).to_csv(tmp_path / "m.csv", index=False)
    cfg = DataConfig(spec=str(tmp_path / "imgs"), image_size=4, metadata=str(tmp_path / "m.csv"),
                     metadata_key="name", metadata_features=("airmass",), metadata_weight=1.0)
    data = prepare_data(cfg)
    rows = data.good.to_pandas()
    assert data.input_shape == (16 + 1,)
    assert rows["site"].isna().sum() == 1  # the image without a metadata row
    appended = np.stack(rows["x"])[:, -1]
    np.testing.assert_allclose(np.sort(appended), [-1.224745, 0.0, 0.0, 1.224745], atol=1e-5)


def test_metadata_features_are_appended_to_backbone_features(ray_session, tmp_path):
    from deimos_ray.config import FeatureConfig

    paths = write_image_folder(tmp_path / "imgs", n_good=4)
    stems = sorted(p.stem for p in paths)
    pd.DataFrame({"name": stems, "airmass": [1.0, 2.0, 3.0, 4.0]}).to_csv(tmp_path / "m.csv", index=False)
    cfg = DataConfig(spec=str(tmp_path / "imgs"), metadata=str(tmp_path / "m.csv"), metadata_key="name",
                     metadata_features=("airmass",), metadata_weight=0.5)
    lite = FeatureConfig(backbone="efficientnet_lite0", image_size=32)
    for run in range(2):  # computed, then read from the cache: the metadata column survives it
        data = prepare_data(cfg, lite, tmp_path / "cache")
        assert data.cache_hit == (run == 1)
        rows = data.good.to_pandas().sort_values("id")
        assert data.input_shape == (1280 + 1,)
        x = np.stack(rows["x"])
        np.testing.assert_allclose(np.abs(x[:, :1280].mean(axis=0)), 0, atol=1e-4)  # standardised features
        np.testing.assert_allclose(np.sort(x[:, -1]), 0.5 * np.array([-1.341641, -0.447214, 0.447214, 1.341641]),
                                   atol=1e-5)
