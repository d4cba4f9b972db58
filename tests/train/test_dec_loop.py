"""DEC training through Ray Train: local mode, 1 vs 2 workers, checkpoint and resume."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import ray
import torch

from deimos_ray.config import ScalingConfig
from deimos_ray.config_io import to_dict
from deimos_ray.models.dec import DEC, DECConfig, build_autoencoder
from deimos_ray.train import collective as C
from deimos_ray.train import dec_loop
from deimos_ray.train.checkpoint import load_state
from deimos_ray.train.common import check_resumable, load_shard
from deimos_ray.train.driver import fit
from deimos_ray.train.rows import StreamingRows

# Ray workers cannot import this test module by name; ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

SHAPE = (1, 4, 4)
TINY = DECConfig(n_clusters=3, hidden_dims=(16, 16), latent_dim=3, pretrain_epochs=2, epochs=3,
                 batch_size=32, update_interval=2, tol=0.0, kmeans_n_init=2)


def blobs(n=120, seed=0):
    """Three well separated clusters of 16-dim vectors, shaped like 4x4 images."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, size=(3, 16))
    labels = np.arange(n) % 3
    x = centres[labels] + 0.05 * rng.normal(size=(n, 16))
    return x.reshape(n, *SHAPE).astype(np.float32), labels


def dataset(x):
    return ray.data.from_items([{"x": row} for row in x]).repartition(4)


def loop_config(cfg=TINY, **extra):
    return {"model": to_dict(cfg), "seed": 0, "input_shape": list(SHAPE),
            "checkpoint_interval_s": 0, **extra}


def frequency_probe(config):
    """Global f and the changed-label count from a fixed model on this worker's shard."""
    cfg = DECConfig(**{**config["model"], "hidden_dims": tuple(config["model"]["hidden_dims"])})
    torch.manual_seed(123)  # the same weights on every worker
    model = DEC(cfg, build_autoencoder(cfg, SHAPE))
    model.centres.data = torch.randn(cfg.n_clusters, cfg.latent_dim)
    shard = ray.train.get_dataset_shard("train")
    x_local = load_shard(shard, SHAPE)
    _, labels, f = dec_loop.compute_target(model, x_local, torch.device("cpu"))
    changed = dec_loop.global_count((labels == 0).sum().item())
    n = dec_loop.global_count(len(x_local))
    # Streamed: the same f, and the labels that change when centre 0 moves far away
    # (the rows labelled 0 now, no others).
    previous = copy.deepcopy(model)
    previous.centres.data[0] += 100.0
    f_stream, moved = dec_loop.stream_target(model, previous, StreamingRows(shard, SHAPE), torch.device("cpu"))
    return {"f": C.all_gather_object(f.numpy()), "n": n, "count": changed, "world": C.world_size(),
            "f_stream": C.all_gather_object(f_stream.numpy()), "moved": dec_loop.global_count(moved)}


def reference_frequencies(x):
    torch.manual_seed(123)
    model = DEC(TINY, build_autoencoder(TINY, SHAPE))
    model.centres.data = torch.randn(TINY.n_clusters, TINY.latent_dim)
    with torch.no_grad():
        q = model(torch.as_tensor(x))[1]
    return q.sum(0).numpy(), int((q.argmax(1) == 0).sum())


def test_local_mode_trains_and_writes_a_cluster_checkpoint(ray_session, tmp_path):
    x, labels = blobs()
    result = fit(dec_loop.train_loop_per_worker, loop_config(), dataset(x),
                 ScalingConfig(num_workers=0), tmp_path, name="local")
    with result.checkpoint.as_directory() as d:
        state = load_state(d)
    assert state["phase"] == "cluster" and state["epoch"] == TINY.epochs
    assert state["model"]["centres"].shape == (3, 3)
    assert result.return_value["steps"] == TINY.epochs * 4  # 120 rows / 32 per step


@pytest.mark.parametrize(
    "changes",
    [{"autoencoder": "conv", "variant": "idec"}, {"pretrain": "layerwise"}],
    ids=["conv-idec", "layerwise-dec"],
)
def test_other_autoencoders_and_pretraining_run_in_local_mode(ray_session, tmp_path, changes):
    x, _ = blobs()
    cfg = DECConfig(**{**to_dict(TINY), "hidden_dims": (16, 16), **changes})
    result = fit(dec_loop.train_loop_per_worker, loop_config(cfg), dataset(x),
                 ScalingConfig(num_workers=0), tmp_path, name="variants")
    with result.checkpoint.as_directory() as d:
        state = load_state(d)
    assert state["phase"] == "cluster" and state["config"]["autoencoder"] == cfg.autoencoder


def test_pretrain_stages_follow_the_papers_ratio():
    ae = build_autoencoder(DECConfig(hidden_dims=(8, 8, 8)), SHAPE)
    layerwise = dec_loop.pretrain_stages(DECConfig(pretrain="layerwise", pretrain_epochs=10), ae)
    assert layerwise == [("layer0", 5), ("layer1", 5), ("layer2", 5), ("layer3", 5), ("finetune", 10)]
    assert dec_loop.pretrain_stages(DECConfig(pretrain_epochs=10), ae) == [("end_to_end", 10)]


@pytest.mark.slow
def test_two_workers_compute_the_same_global_frequencies_as_one(ray_session, tmp_path):
    x, _ = blobs(n=90)
    expected_f, expected_count = reference_frequencies(x)
    out = {}
    for workers in (1, 2):
        result = fit(frequency_probe, loop_config(), dataset(x),
                     ScalingConfig(num_workers=workers, cpus_per_worker=1), tmp_path, name=f"probe{workers}")
        out[workers] = result.return_value
        assert out[workers]["world"] == workers and out[workers]["n"] == 90
        for f in out[workers]["f"] + out[workers]["f_stream"]:  # every rank holds the global f
            np.testing.assert_allclose(f, expected_f, rtol=1e-5)
        assert out[workers]["count"] == expected_count == out[workers]["moved"]
    np.testing.assert_allclose(out[1]["f"][0], out[2]["f"][1], rtol=1e-5)


@pytest.mark.slow
def test_rerun_resumes_from_the_latest_checkpoint(ray_session, tmp_path):
    x, _ = blobs()
    # In the driver: its checkpoints resume as Ray Train's workers' do (the job contract
    # test resumes DEC through a worker group).
    scaling = ScalingConfig(num_workers=0)
    first = fit(dec_loop.train_loop_per_worker, loop_config(TINY), dataset(x), scaling, tmp_path, name="run")
    assert first.return_value["resumed_at_epoch"] is None and first.return_value["epochs"] == 3
    # The same settings again: the rerun resumes the finished clustering (its step
    # count included) instead of pretraining anew.
    second = fit(dec_loop.train_loop_per_worker, loop_config(TINY), dataset(x), scaling, tmp_path, name="run")
    assert second.return_value["resumed_at_epoch"] == 3
    assert second.return_value["epochs"] == 3
    assert second.return_value["steps"] == 3 * 4


def test_resume_refuses_a_checkpoint_from_other_settings():
    state = {"config": to_dict(TINY), "input_shape": list(SHAPE)}
    check_resumable(state, "dec", TINY, SHAPE)
    longer = DECConfig(**{**to_dict(TINY), "hidden_dims": (16, 16), "epochs": 9})
    with pytest.raises(ValueError, match="epochs"):  # a model setting, so it must match
        check_resumable(state, "dec", longer, SHAPE)
    other_k = DECConfig(**{**to_dict(TINY), "hidden_dims": (16, 16), "n_clusters": 4})
    with pytest.raises(ValueError, match="n_clusters"):
        check_resumable(state, "dec", other_k, SHAPE)
    with pytest.raises(ValueError, match="input shape"):
        check_resumable(state, "dec", TINY, (1, 8, 8))
