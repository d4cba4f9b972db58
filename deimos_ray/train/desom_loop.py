"""DESOM training loop for one Ray Train worker.

Prototypes start as the encodings of random samples drawn on rank 0 and broadcast.
Every step: embeddings, distances to every prototype, best-matching units and
neighbourhood weights at the current temperature (no gradient), then reconstruction +
gamma x SOM loss; DDP averages the gradients, so prototypes stay identical on every
worker. The temperature is a function of the global iteration, which the checkpoint
carries, so a resumed run continues the same schedule. After the last iteration, with
``n_clusters`` set, rank 0 groups the prototypes by k-means and the node -> cluster
table goes into the final checkpoint.
"""

from __future__ import annotations

from typing import Any

import ray.train
import torch

from deimos_ray import progress
from deimos_ray.config_io import from_dict, to_dict
from deimos_ray.models.desom import DESOM, DESOMConfig, node_clusters, node_hits
from deimos_ray.models.som import temperature
from deimos_ray.train import collective as C
from deimos_ray.train import common
from deimos_ray.train.checkpoint import latest_state, report_epoch
from deimos_ray.train.common import Batches, CheckpointClock, global_count
from deimos_ray.train.rows import (
    FEATURE_COLUMN,
    InMemoryRows,
    RowsPlan,
    StreamingRows,
    open_worker_rows,
)


def _log(message: str) -> None:
    if C.rank() == 0:
        progress.note(f"[desom] {message}")


def init_prototypes(model: DESOM, rows: InMemoryRows | StreamingRows, device: torch.device, seed: int) -> None:
    """Prototypes = encodings of M random samples (rank 0's shard), broadcast to all."""
    m = model.cfg.nodes
    protos = torch.zeros(m, model.cfg.latent_dim, device=device)
    take = torch.zeros(0, dtype=torch.int64)
    if C.rank() == 0:
        g = torch.Generator().manual_seed(seed)
        take = torch.randint(rows.n, (m,), generator=g) if rows.n < m else torch.randperm(rows.n, generator=g)[:m]
    x = rows.take(take)[FEATURE_COLUMN]  # on every rank: a streamed shard passes together
    if C.rank() == 0:
        with torch.no_grad():
            protos = model.encode(x.to(device))
    C.broadcast_(protos)
    model.prototypes.data.copy_(protos)


def final_node_clusters(model: DESOM, rows: InMemoryRows | StreamingRows, cfg: DESOMConfig,
                        seed: int) -> list[int]:
    """Every node's cluster after training; the hit counts that weigh the k-means over
    prototypes are summed over all workers' shards."""
    weights = None
    if cfg.n_clusters is not None:
        weights = C.all_reduce_sum(sum((node_hits(model, columns[FEATURE_COLUMN]) for columns in rows.scan(4096)),
                                       torch.zeros(cfg.nodes, device=model.prototypes.device)))
    return node_clusters(model.prototypes, cfg.n_clusters, cfg.kmeans_n_init, seed, weights)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point for DESOM.

    Args:
        config: ``{"model": DESOMConfig as dict, "seed": int, "input_shape": [...],
            "checkpoint_interval_s": float}``; the dataset has an ``x`` column.

    Returns:
        ``iterations``, final ``temperature`` and losses, ``resumed_at_iteration``.
    """
    cfg = from_dict(DESOMConfig, config["model"])
    seed = int(config["seed"])
    input_shape = tuple(config["input_shape"])
    device = ray.train.torch.get_device()
    torch.manual_seed(seed)

    plan = config.get("rows")
    rows = open_worker_rows(input_shape, plan=plan)
    if rows.n == 0:
        raise RuntimeError("a training worker received no rows: use fewer workers or more data")
    n_global = int(global_count(rows.n))
    batches = Batches(rows.n, n_global, cfg.batch_size, seed)
    height, width = cfg.map_size
    _log(f"{n_global} samples, {C.world_size()} worker(s), {height}x{width} map, "
         f"{cfg.iterations} iterations ({batches.steps} per epoch), {RowsPlan(**(plan or {})).describe(rows.n)}")

    model = DESOM(cfg, input_shape).to(device)
    net = C.wrap_ddp(model, device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    clock = CheckpointClock(float(config.get("checkpoint_interval_s", 0.0)))
    # The probe's clusters are the map nodes (the merge into k clusters happens at the end).
    probe = common.ProgressProbe(rows, int(config.get("progress_rows", 0)), seed)

    iteration, epoch, resumed_at = 0, 0, None
    state = latest_state()
    if state is not None:
        common.check_resumable(state, "desom", cfg, input_shape)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        iteration, epoch = int(state["iteration"]), int(state["epoch"])
        resumed_at = iteration
        _log(f"resuming at iteration {iteration}")
    else:
        init_prototypes(model, rows, device, seed)

    record: dict[str, float] = {}
    while iteration < cfg.iterations:
        sums: dict[str, float] = {}
        steps = 0
        for _, columns in rows.epoch(batches, epoch):
            if iteration >= cfg.iterations:
                break
            t = temperature(iteration, cfg.iterations, cfg.t_max, cfg.t_min, cfg.decay)
            x = columns[FEATURE_COLUMN].to(device)
            _, x_hat, d = net(x)
            loss, parts = model.loss(x, x_hat, d, t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            iteration, steps = iteration + 1, steps + 1
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value
        epoch += 1
        record = {"epoch": epoch, "iteration": iteration, "temperature": t,
                  **{k: global_count(v / steps) / C.world_size() for k, v in sums.items()}}
        if epoch == 1 or iteration >= cfg.iterations or epoch % max(1, (cfg.iterations // batches.steps) // 10) == 0:
            _log(common.format_metrics(record))
        if C.rank() == 0:
            progress.advance(iteration, cfg.iterations, "iteration", loss=record.get("loss", float("nan")))
        final = iteration >= cfg.iterations
        due = clock.due(final=final)
        if not due and not probe.on:
            continue
        clusters = final_node_clusters(model, rows, cfg, seed) if final else None
        report_epoch(
            {"phase": "desom", **record, **probe.score(lambda p: common.eval_labels(model, p.x, device, lambda out: out[2].argmin(dim=1)))},
            None if not due else {
                "algorithm": "desom",
                "config": to_dict(cfg),
                "input_shape": list(input_shape),
                "seed": seed,
                "iteration": iteration,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "node_clusters": clusters,
            },
        )
    return {"iterations": iteration, "resumed_at_iteration": resumed_at, **record}
