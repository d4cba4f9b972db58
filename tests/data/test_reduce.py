"""``--reduce umap``: features embedded by a UMAP model fitted on a sample, in Ray Data
actors, the same for a row whatever its block; a DEC run on the embedding, and new
images embedded by the run's own model."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from deimos_ray.config import FeatureConfig, UmapConfig
from deimos_ray.data.reduce import REDUCER_FILE, embed, fit_umap, load_reducer
from deimos_ray.new_images import assign_new
from tests.helpers import backbone_job, smoke_may_collapse


def test_every_row_is_embedded_in_ray_data_the_same_whatever_its_block(ray_session):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 60)
    x = (rng.normal(scale=6.0, size=(3, 32))[labels] + rng.normal(size=(180, 32))).astype(np.float32)
    reducer = fit_umap(x, UmapConfig(components=3, neighbours=10), seed=0, max_fit_samples=120)
    rows = [{"id": f"r{i}", "x": x[i]} for i in range(len(x))]

    def embedded(blocks: int) -> np.ndarray:
        ds = ray.data.from_items(rows).repartition(blocks)
        out = {r["id"]: r["x"] for r in embed(ds, reducer, actors=2).take_all()}
        return np.stack([out[f"r{i}"] for i in range(len(x))])

    one, many = embedded(1), embedded(7)
    assert one.shape == (180, 3)
    np.testing.assert_array_equal(one, many)  # a row's embedding does not depend on its block
    assert adjusted_rand_score(labels, KMeans(3, n_init=3, random_state=0).fit_predict(one)) == 1.0


def test_reduce_needs_a_backbone():
    with pytest.raises(ValueError, match="needs --backbone"):
        FeatureConfig(reduce="umap")
    with pytest.raises(ValueError, match="must be one of"):
        FeatureConfig(backbone="efficientnet_lite0", reduce="pca")


@pytest.mark.slow
@smoke_may_collapse
def test_a_run_on_umap_embedded_features_assigns_new_images_with_its_own_model(ray_session, tmp_path):
    good, metrics, run = backbone_job(tmp_path, "dec", n_good=24, features__reduce="umap", umap__components=4,
                                      umap__neighbours=5, baseline_umap=True)
    images = tmp_path / "images"

    assert metrics["accounting"]["assigned"] == len(good)
    # Every method clustered the 4-d embedding; Ward's column is UMAP then Ward already.
    assert set(metrics["scores"]) == {"dec", "kmeans", "ward"} and "umap_ward_fit" not in metrics["score_rows"]
    assert load_reducer(run / REDUCER_FILE).n_components == 4
    assert json.loads((run / "identity.json").read_text())["features"]["umap"]["components"] == 4

    # New images (here the same ones) go through the run's standardisation and UMAP model.
    assign_new(run, str(images), tmp_path / "again", report=False)
    theirs = pq.read_table(run / "assignments").to_pandas().set_index("id")
    mine = pq.read_table(tmp_path / "again" / "assignments").to_pandas().set_index("id")
    assert (mine.loc[theirs.index, "cluster"] == theirs["cluster"]).all()
