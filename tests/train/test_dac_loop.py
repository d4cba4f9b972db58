"""DAC through Ray Train: the global-batch gradient with --gather-pairs, 1 vs 2 workers
on the same data, chunk selection on two workers, and resuming an interrupted schedule."""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import pytest
import ray
import torch
from sklearn.metrics import adjusted_rand_score

from deimos_ray.config import ScalingConfig
from deimos_ray.config_io import to_dict
from deimos_ray.losses.dac import label_features
from deimos_ray.metrics import cluster_accuracy
from deimos_ray.models.dac import DACConfig
from deimos_ray.train import collective as C
from deimos_ray.train import dac_loop
from deimos_ray.train.common import PROGRESS_SCORE, check_resumable, load_columns
from deimos_ray.train.driver import fit
from tests import helpers
from tests.helpers import interrupted_after_two_reports

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ray.cloudpickle.register_pickle_by_value(helpers)

SHAPE = (1, 8, 8)
TINY = DACConfig(n_clusters=3, conv_widths=(8, 16), hidden_dim=16, batch_size=24, augment=False,
                 schedule="deimos", lambda_step=0.05, epochs=20)


def bars(n=144, seed=0):
    """Three classes of 8x8 images: a bright bar in row band 0-1, 3-4 or 6-7, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    x = 0.1 * rng.random((n, *SHAPE))
    for i, c in enumerate(labels):
        x[i, 0, 3 * c : 3 * c + 2, :] += 0.8
    return np.clip(x, 0, 1).astype(np.float32), labels


def dataset(x, labels):
    rows = [{"x": row, "known": -1, "label": int(c)} for row, c in zip(x, labels, strict=True)]
    return ray.data.from_items(rows).repartition(4)


def loop_config(cfg=TINY):
    return {"model": to_dict(cfg), "seed": 0, "input_shape": list(SHAPE), "checkpoint_interval_s": 0}


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.linear = torch.nn.Linear(64, 3)
        torch.nn.init.normal_(self.linear.weight, std=1.0)

    def forward(self, x):
        return self.linear(x.flatten(1))


def gradient_probe(config):
    """The parameter gradient of one gathered step on this worker's whole shard,
    averaged across workers as DDP does; and the rows it saw."""
    cfg = DACConfig(**{**config["model"], "conv_widths": tuple(config["model"]["conv_widths"])})
    shard = load_columns(ray.train.get_dataset_shard("train"), SHAPE, ("known",))
    net = Linear()
    loss, _ = dac_loop.step_loss(net, shard["x"], shard["known"], cfg, 0.8, 0.3, torch.Generator())
    loss.backward()
    grad = C.all_reduce_sum(net.linear.weight.grad.clone()) / C.world_size()
    return {"grad": grad.numpy(), "x": np.concatenate(C.all_gather_object(shard["x"].numpy()))}


@pytest.mark.slow
def test_gathered_pairs_give_the_global_batch_gradient(ray_session, tmp_path):
    x, labels = bars(n=16)
    cfg = DACConfig(**{**to_dict(TINY), "conv_widths": (8, 16), "gather_pairs": True})
    result = fit(gradient_probe, loop_config(cfg), dataset(x, labels),
                 ScalingConfig(num_workers=2, cpus_per_worker=1), tmp_path, name="grad")
    seen = torch.tensor(result.return_value["x"])
    assert len(seen) == 16
    net = Linear()  # one process, one batch of all 16 rows, no gathering
    loss, _ = dac_loop.step_loss(net, seen, torch.full((16,), -1), cfg, 0.8, 0.3, torch.Generator())
    loss.backward()
    np.testing.assert_allclose(result.return_value["grad"], net.linear.weight.grad.numpy(), rtol=1e-4, atol=1e-7)


def assignments_of(result, x):
    state = torch.load(f"{result.checkpoint.path}/state.pt", weights_only=True)
    from deimos_ray.models.dac import DACNet

    net = DACNet(DACConfig(**{**state["config"], "conv_widths": tuple(state["config"]["conv_widths"])}), SHAPE)
    net.load_state_dict(state["model"])
    with torch.no_grad():
        return label_features(net.eval()(torch.as_tensor(x))).argmax(1).numpy()


@pytest.mark.slow
def test_one_and_two_workers_follow_the_same_schedule_to_the_same_quality(ray_session, tmp_path):
    x, labels = bars()
    runs = {}
    for workers in (1, 2):
        cfg = DACConfig(**{**to_dict(TINY), "conv_widths": (8, 16), "gather_pairs": workers > 1})
        # One process is the driver (Ray Train's local mode: no worker group to start).
        result = fit(dac_loop.train_loop_per_worker, loop_config(cfg), dataset(x, labels),
                     ScalingConfig(num_workers=workers if workers > 1 else 0, cpus_per_worker=1), tmp_path,
                     name=f"w{workers}")
        runs[workers] = result
    clusters = {w: assignments_of(runs[w], x) for w in runs}
    # The same data and global batch give clusterings of the same quality: against the
    # classes, and against each other (cluster ids are arbitrary, so by ARI).
    acc = {w: cluster_accuracy(labels, clusters[w]) for w in runs}
    assert acc[1] >= 0.9 and acc[2] >= 0.9, acc
    assert adjusted_rand_score(clusters[1], clusters[2]) >= 0.8


@pytest.mark.slow
def test_chunk_selection_trains_on_two_workers(ray_session, tmp_path):
    # Shards of 36 and 36 rows, chunks of 18 per worker: every rank must take the same
    # number of steps, or DDP would hang.
    x, labels = bars(n=72)
    cfg = DACConfig(**{**to_dict(TINY), "conv_widths": (8, 16), "selection": "chunk", "chunk_size": 36,
                       "inner_passes": 2, "batch_size": 16, "pair_loss": "mse", "schedule": "official",
                       "official_upper": 0.9, "official_lower": 0.7, "epochs": 6})
    result = fit(dac_loop.train_loop_per_worker, loop_config(cfg), dataset(x, labels),
                 ScalingConfig(num_workers=2, cpus_per_worker=1), tmp_path, name="chunk")
    history = result.return_value["history"]
    assert [h["upper"] for h in history] == pytest.approx([0.9 - 0.2 * e / 6 for e in range(6)])
    assert all(h["selected_fraction"] == 1.0 for h in history)  # one threshold: every pair
    assert cluster_accuracy(labels, assignments_of(result, x)) >= 0.9


@pytest.mark.slow
def test_rerun_resumes_an_interrupted_schedule(ray_session, tmp_path):
    x, labels = bars(n=48)
    # In the driver: its checkpoints (train/checkpoint.py) resume as Ray Train's workers' do.
    scaling = ScalingConfig(num_workers=0)
    # PyTorch's RMSprop decay instead of the default, to check that the optimiser is built with it.
    cfg = DACConfig(**{**to_dict(TINY), "conv_widths": (8, 16), "rmsprop_alpha": 0.99})
    config = {**loop_config(cfg), "marker": str(tmp_path / "interrupted"), "loop_module": dac_loop.__name__}
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(interrupted_after_two_reports, config, dataset(x, labels), scaling, tmp_path, name="run")
    assert os.path.exists(config["marker"])
    second = fit(dac_loop.train_loop_per_worker, config, dataset(x, labels), scaling, tmp_path, name="run")
    assert second.return_value["resumed_at_epoch"] == 2
    optimizer = torch.load(f"{second.checkpoint.path}/state.pt", weights_only=True)["optimizer"]
    assert optimizer["param_groups"][0]["alpha"] == 0.99
    lambdas = [h["lambda"] for h in second.return_value["history"]]
    assert lambdas == pytest.approx([0.05 * i for i in range(9)])  # continued, not restarted


def test_resume_refuses_other_model_settings():
    state = {"algorithm": "dac", "config": to_dict(TINY), "input_shape": list(SHAPE)}
    check_resumable(state, "dac", TINY, SHAPE)
    for changed in ({"epochs": 50}, {"schedule": "paper"}, {"rmsprop_alpha": 0.99}):
        with pytest.raises(ValueError, match=next(iter(changed))):
            check_resumable(state, "dac", DACConfig(**{**to_dict(TINY), "conv_widths": (8, 16), **changed}), SHAPE)
    with pytest.raises(ValueError, match="input shape"):
        check_resumable(state, "dac", TINY, (1, 16, 16))
    with pytest.raises(ValueError, match="another algorithm"):
        check_resumable({**state, "algorithm": "dec"}, "dac", TINY, SHAPE)
    # A checkpoint written before a field existed resumes when the field is at its default.
    older = {**state, "config": {k: v for k, v in to_dict(TINY).items() if k != "convs_per_stage"}}
    check_resumable(older, "dac", TINY, SHAPE)
    with pytest.raises(ValueError, match="convs_per_stage"):
        check_resumable(older, "dac", DACConfig(**{**to_dict(TINY), "conv_widths": (8, 16), "convs_per_stage": 3}), SHAPE)


def test_with_the_progress_probe_on_the_reports_carry_the_silhouette_of_the_current_clusters(ray_session, tmp_path):
    x, labels = bars(60)
    config = {**loop_config(dataclasses.replace(TINY, epochs=2)), "checkpoint_interval_s": 3600, "progress_rows": 30}
    result = fit(dac_loop.train_loop_per_worker, config, dataset(x, labels), ScalingConfig(num_workers=0), tmp_path)
    assert -1.0 <= result.metrics[PROGRESS_SCORE] <= 1.0
    plain = fit(dac_loop.train_loop_per_worker, {**config, "progress_rows": 0}, dataset(x, labels),
                ScalingConfig(num_workers=0), tmp_path, name="plain")
    assert PROGRESS_SCORE not in plain.metrics


def test_two_views_from_a_bank_are_two_different_entries_and_a_same_pair():
    n, count, dim = 6, 3, 64
    bank = torch.arange(n * count, dtype=torch.float32)[:, None].expand(-1, dim).reshape(n, count, dim).clone()
    first, second = dac_loop.bank_views(bank, torch.Generator().manual_seed(0))
    row_of = lambda views: (views[:, 0] // count).long()  # noqa: E731  every entry holds its own index
    assert (row_of(first) == torch.arange(n)).all() and (row_of(second) == torch.arange(n)).all()
    assert (first[:, 0] != second[:, 0]).all()  # two different views of each image
    cfg = DACConfig(**{**to_dict(TINY), "conv_widths": (8, 16), "augment": True})
    # Thresholds no pair can pass: the only "same" pairs are the image's two views.
    _, stats = dac_loop.step_loss(Linear(), bank[:, 0], torch.full((n,), -1), cfg, 1.1, -1.1,
                                  torch.Generator().manual_seed(0), bank)
    assert float(stats["same"]) == 2 * n
