"""Model -> assignment columns for every algorithm (its predictor), written by Ray Data model actors
into a staged folder; the cluster remap and the metadata read back."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import torch

from deimos_ray import __version__
from deimos_ray.algorithms import ALGORITHMS
from deimos_ray.algorithms.dac import dac_probability_columns
from deimos_ray.assignments import read_metadata, remap_clusters, write_assignments
from deimos_ray.config_io import to_dict
from deimos_ray.models.dac import DACConfig, DACNet
from deimos_ray.models.dec import DEC, DECConfig, build_autoencoder
from deimos_ray.models.desom import DESOM, DESOMConfig
from deimos_ray.train.checkpoint import STATE_FILE

SHAPE = (1, 4, 4)


def save_checkpoint(directory, algorithm):
    """A checkpoint as the loops write it, of an untrained model."""
    torch.manual_seed(0)
    directory.mkdir(parents=True)
    if algorithm == "dac":
        cfg = DACConfig(n_clusters=3, conv_widths=(4,), hidden_dim=4)
        state = {"algorithm": "dac", "model": DACNet(cfg, SHAPE).state_dict()}
    elif algorithm == "dec":
        cfg = DECConfig(n_clusters=3, hidden_dims=(8,), latent_dim=2)
        state = {"algorithm": "dec", "phase": "cluster", "model": DEC(cfg, build_autoencoder(cfg, SHAPE)).state_dict()}
    else:
        cfg = DESOMConfig(map_size=(2, 2), n_clusters=2, hidden_dims=(8,), latent_dim=2)
        state = {"algorithm": "desom", "model": DESOM(cfg, SHAPE).state_dict(), "node_clusters": [0, 1, 1, 0]}
    torch.save({**state, "config": to_dict(cfg), "input_shape": list(SHAPE)}, directory / STATE_FILE)
    return directory


COLUMNS = {
    "dac": {"cluster", "confidence", "topk_clusters", "topk_probs", "embedding"},
    "dec": {"cluster", "confidence", "embedding"},
    "desom": {"cluster", "som_row", "som_col", "bmu_distance", "embedding"},
}


@pytest.mark.parametrize("algorithm", sorted(COLUMNS))
def test_every_checkpoint_gives_its_algorithms_columns(tmp_path, algorithm):
    predict = ALGORITHMS[algorithm].predictor(save_checkpoint(tmp_path / "ck", algorithm))
    with torch.no_grad():
        columns = predict(torch.rand(5, *SHAPE))
    assert set(columns) == COLUMNS[algorithm]
    assert all(len(values) == 5 for values in columns.values())
    if algorithm == "desom":  # cluster = the node's group in the node -> cluster table
        nodes = np.array(columns["som_row"]) * 2 + np.array(columns["som_col"])
        assert (np.array(columns["cluster"]) == np.array([0, 1, 1, 0])[nodes]).all()


def test_dac_columns_come_from_the_probabilities():
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    columns = dac_probability_columns(probs)
    assert columns["cluster"].to_pylist() == [1, 0]
    assert columns["topk_clusters"].to_pylist() == [[1, 2, 0], [0, 2, 1]]
    assert columns["confidence"].to_numpy() == pytest.approx([0.5, 0.6])
    embedding = np.stack(columns["embedding"].to_numpy(zero_copy_only=False))
    assert np.linalg.norm(embedding, axis=1) == pytest.approx([1.0, 1.0])  # the label features


def test_a_checkpoint_of_an_unfinished_run_is_refused(tmp_path):
    directory = save_checkpoint(tmp_path / "ck", "desom")
    state = torch.load(directory / STATE_FILE, weights_only=True)
    torch.save({**state, "node_clusters": None}, directory / STATE_FILE)
    with pytest.raises(ValueError, match="unfinished DESOM run"):
        ALGORITHMS["desom"].predictor(directory)


def test_actors_write_every_row_with_its_metadata_into_a_staged_folder(ray_session, tmp_path):
    n = 40
    rows = [{"id": f"img{i}", "path": f"/data/img{i}.png", "group": "", "label": i % 2, "site": f"s{i % 3}",
             "x": np.full(SHAPE, i / n, np.float32)} for i in range(n)]
    checkpoint = save_checkpoint(tmp_path / "ck", "dec")
    destination = tmp_path / "run" / "assignments"
    destination.parent.mkdir()
    write_assignments(ALGORITHMS["dec"], ray.data.from_items(rows), checkpoint, destination, {"job": "t", "config": {"seed": 3}})
    table = pq.read_table(destination).to_pandas().sort_values("id")
    assert len(table) == n and set(table["site"]) == {"s0", "s1", "s2"}  # metadata travels with its image
    with torch.no_grad():
        expected = ALGORITHMS["dec"].predictor(checkpoint)(torch.from_numpy(np.stack([r["x"] for r in rows])))["cluster"]
    assert dict(zip(table["id"], table["cluster"], strict=True)) == dict(
        zip([r["id"] for r in rows], expected.to_pylist(), strict=True))
    meta = read_metadata(destination)
    assert meta == {"job": "t", "config": {"seed": 3}, "package_version": __version__}
    assert [p.name for p in destination.parent.iterdir()] == ["assignments"]  # no staging left

    remap_clusters(destination, {0: 2})
    remapped = pq.read_table(destination).to_pandas().sort_values("id")
    assert (remapped["cluster"] == table["cluster"].replace({0: 2})).all()
    assert [p.name for p in destination.iterdir() if p.name.startswith(".")] == []
