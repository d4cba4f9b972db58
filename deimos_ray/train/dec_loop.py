"""DEC / IDEC training loop for one Ray Train worker, and the global-target helpers.

Phases, all inside :func:`train_loop_per_worker`:

1. Autoencoder pretraining (layer-wise denoising stages then fine-tuning, or end to end),
   data-parallel with DDP.
2. Centre initialisation: a capped, seeded sample of embeddings is gathered to rank 0,
   k-means (n_init 20) runs there, and the centres are broadcast.
3. Clustering: every ``update_interval`` steps the target distribution is recomputed over
   the WHOLE dataset: each worker computes q on its shard without gradient, the column
   sums f are all-reduced, each worker forms p for its own rows, and the number of
   changed labels is all-reduced; training stops when the changed fraction < ``tol``.

A worker whose shard fits in memory holds it (:mod:`deimos_ray.train.rows`) and keeps p
for its rows between updates. A streamed shard keeps no per-row state: the update pass
all-reduces f and counts the changed labels by labelling each row with both the previous
and the new target model, and each step computes its batch's p from the target model and
f, the same p by the paper's definition. A checkpoint holds the model snapshot that
defined the current target, so a resumed run trains on exactly the same p.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import ray.train
import torch
from sklearn.cluster import KMeans
from torch import nn

from deimos_ray import progress
from deimos_ray.config_io import from_dict, to_dict
from deimos_ray.losses.dec import target_distribution
from deimos_ray.models.autoencoder import DenoisingLayerPair, DenseAutoencoder
from deimos_ray.models.dec import DEC, DECConfig, build_autoencoder
from deimos_ray.train import collective as C
from deimos_ray.train import common
from deimos_ray.train.checkpoint import latest_state, report_epoch
from deimos_ray.train.common import Batches, CheckpointClock, batched, global_count
from deimos_ray.train.rows import (
    FEATURE_COLUMN,
    InMemoryRows,
    RowsPlan,
    StreamingRows,
    open_worker_rows,
)


@torch.no_grad()
def soft_assign_all(model: DEC, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """q for every row of ``x`` with ``model`` in eval mode, (N, K) on the CPU."""
    model.eval()
    out = [model(b.to(device))[1].cpu() for b in batched(x)]
    model.train()
    return torch.cat(out) if out else torch.zeros((0, model.cfg.n_clusters))


def global_cluster_frequencies(q_local: torch.Tensor) -> torch.Tensor:
    """f_j = sum over ALL samples of q_ij: the local column sums, all-reduced. (K,)."""
    f = q_local.sum(dim=0).to(torch.float64)
    return C.all_reduce_sum(f).to(torch.float32)


def compute_target(
    model: DEC, x_local: torch.Tensor, device: torch.device, prior: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target distribution for this worker's rows from the dataset-wide frequencies
    (against ``prior``, the size prior: None uniform, the paper).

    Returns:
        p_local: (N_local, K) targets for this shard.
        labels_local: (N_local,) current hard assignments.
        f: (K,) global cluster frequencies (identical on every worker).
    """
    q = soft_assign_all(model, x_local, device)
    f = global_cluster_frequencies(q)
    return target_distribution(q, f, prior, model.cfg.frequency_power), q.argmax(dim=1), f


@torch.no_grad()
def stream_target(model: DEC, previous: DEC | None, rows: StreamingRows,
                  device: torch.device) -> tuple[torch.Tensor, int]:
    """One pass over a streamed shard: the global frequencies f of ``model``'s q, and
    how many of this worker's rows ``model`` labels differently from ``previous`` (0
    without one)."""
    model.eval()
    f, changed = torch.zeros(model.cfg.n_clusters, dtype=torch.float64), 0
    for columns in rows.scan():
        x = columns[FEATURE_COLUMN].to(device)
        q = model(x)[1].cpu()
        f += q.sum(dim=0).to(torch.float64)
        if previous is not None:
            previous.eval()
            changed += int((previous(x)[1].argmax(dim=1).cpu() != q.argmax(dim=1)).sum())
    model.train()
    return C.all_reduce_sum(f).to(torch.float32), changed


@torch.no_grad()
def batch_target(model: DEC, x: torch.Tensor, f: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """p for one batch from the target model and the global f (the rows' p does not
    depend on the other rows of the batch)."""
    model.eval()
    q = model(x)[1]
    model.train()
    return target_distribution(q, f.to(q.device), None if prior is None else prior.to(q.device),
                               model.cfg.frequency_power)


def start_prior(cfg: DECConfig, f: torch.Tensor) -> torch.Tensor | None:
    """The size prior of the clustering phase from the frequencies at its start (the
    k-means centres): their shares with ``size_prior: start``, else None (uniform)."""
    return f / f.sum() if cfg.size_prior == "start" else None


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    return torch.optim.Adam(params, lr=lr)


def _log(message: str) -> None:
    if C.rank() == 0:
        progress.note(f"[dec] {message}")


def _advance(done: int, total: int, **values: Any) -> None:
    if C.rank() == 0:
        progress.advance(done, total, "epoch", **values)


def _pretrain_total(cfg: DECConfig, autoencoder: nn.Module) -> int:
    """Epochs of pretraining in all (every stage's)."""
    return sum(epochs for _, epochs in pretrain_stages(cfg, autoencoder)) if cfg.pretrain_epochs > 0 else 0


def _should_log(epoch: int, total: int) -> bool:
    return epoch == 0 or epoch == total - 1 or (epoch + 1) % max(1, total // 5) == 0


def pretrain_stages(cfg: DECConfig, autoencoder: nn.Module) -> list[tuple[str, int]]:
    """(stage name, epochs) in order: one per layer pair then fine-tuning, or one stage."""
    if cfg.pretrain == "layerwise":
        assert isinstance(autoencoder, DenseAutoencoder)
        per_layer = max(1, cfg.pretrain_epochs // 2)
        stages = [(f"layer{i}", per_layer) for i in range(autoencoder.num_layers)]
        return [*stages, ("finetune", cfg.pretrain_epochs)]
    return [("end_to_end", cfg.pretrain_epochs)]


def _pretrain_lr(cfg: DECConfig, epoch_in_stage: int) -> float:
    name, base = cfg.pretrain_optimizer
    if name == "sgd":
        # DEC's solver divides the rate by 10 every 20,000 of a layer's 50,000 iterations.
        step = max(1, round(0.2 * cfg.pretrain_epochs))
        return base * 0.1 ** (epoch_in_stage // step)
    return base


def pretrain(
    cfg: DECConfig,
    autoencoder: nn.Module,
    rows: InMemoryRows | StreamingRows,
    batches: Batches,
    device: torch.device,
    state: dict[str, Any] | None,
    base_state: dict[str, Any],
    clock: CheckpointClock,
) -> None:
    """Train the autoencoder in place; reports with checkpoints follow ``clock`` and
    always close a stage."""
    stages = pretrain_stages(cfg, autoencoder) if cfg.pretrain_epochs > 0 else []
    flat = isinstance(autoencoder, DenseAutoencoder)
    done = state["pretrain_epochs_done"] if state else 0
    opt_name = cfg.pretrain_optimizer[0]
    global_epoch = 0
    for stage_name, stage_epochs in stages:
        if global_epoch + stage_epochs <= done:
            global_epoch += stage_epochs
            continue
        if stage_name.startswith("layer"):
            module: nn.Module = DenoisingLayerPair(autoencoder, int(stage_name[5:]), cfg.dropout)
            depth = int(stage_name[5:])
        else:
            module, depth = autoencoder, None
        net = C.wrap_ddp(module, device)
        opt = make_optimizer(opt_name, net.parameters(), _pretrain_lr(cfg, 0))
        if state and state.get("stage") == stage_name and "optimizer" in state:
            opt.load_state_dict(state["optimizer"])
        for e in range(stage_epochs):
            if global_epoch < done:
                global_epoch += 1
                continue
            for group in opt.param_groups:
                group["lr"] = _pretrain_lr(cfg, e)
            total, count = 0.0, 0
            for _, columns in rows.epoch(batches, global_epoch):
                x = columns[FEATURE_COLUMN].to(device)
                x = x.flatten(1) if flat else x
                if depth is not None:
                    with torch.no_grad():
                        x = autoencoder.encode_upto(x, depth)
                    loss = net(x)
                else:
                    loss = nn.functional.mse_loss(net(x)[1], x)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, count = total + loss.item(), count + 1
            loss_avg = global_count(total / count) / C.world_size()
            if _should_log(e, stage_epochs):
                _log(f"pretrain {stage_name} epoch {e + 1}/{stage_epochs} loss {loss_avg:.5f}")
            global_epoch += 1
            _advance(global_epoch, _pretrain_total(cfg, autoencoder) + cfg.epochs, phase="pretrain", loss=loss_avg)
            if not clock.due(final=e == stage_epochs - 1):
                continue
            report_epoch(
                {"phase": "pretrain", "stage": stage_name, "epoch": global_epoch, "loss": loss_avg},
                {
                    **base_state,
                    "phase": "pretrain",
                    "stage": stage_name,
                    "pretrain_epochs_done": global_epoch,
                    "autoencoder": C.unwrap(net).state_dict() if depth is None else autoencoder.state_dict(),
                    "optimizer": opt.state_dict(),
                },
            )


def init_centres(cfg: DECConfig, model: DEC, rows: InMemoryRows | StreamingRows, device: torch.device,
                 seed: int) -> None:
    """k-means (n_init=cfg.kmeans_n_init) on rank 0 over gathered embeddings; broadcast."""
    per_worker = max(1, cfg.kmeans_max_samples // C.world_size())
    g = torch.Generator().manual_seed(seed + C.rank())
    take = torch.randperm(rows.n, generator=g)[:per_worker]
    with torch.no_grad():
        model.eval()
        # Embedded as read: the sample's codes are kept, not its inputs.
        z = rows.map_rows(take, lambda x: model.embed(x.to(device)).cpu()).reshape(-1, cfg.latent_dim)
        model.train()
    gathered = C.all_gather_object(z.numpy())
    centres = torch.zeros(cfg.n_clusters, cfg.latent_dim)
    if C.rank() == 0:
        km = KMeans(cfg.n_clusters, n_init=cfg.kmeans_n_init, random_state=seed)
        km.fit(np.concatenate(gathered))
        centres = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
    C.broadcast_(centres)
    model.centres.data.copy_(centres.to(model.centres.device))


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point for DEC / IDEC (see the module docstring for the phases).

    Args:
        config: ``{"model": DECConfig as dict, "seed": int, "input_shape": [C, H, W]}``.

    Returns:
        Summary of the clustering phase (rank 0's is ``Result.return_value``), and
        ``resumed_from``: the phase and epoch of the checkpoint it started from (a retry
        after a lost worker, or a rerun), or None.
    """
    cfg = from_dict(DECConfig, config["model"])
    seed = int(config["seed"])
    input_shape = tuple(config["input_shape"])
    device = ray.train.torch.get_device()
    torch.manual_seed(seed)  # identical initial weights on every rank

    plan = config.get("rows")
    rows = open_worker_rows(input_shape, plan=plan)
    n_global = int(global_count(rows.n))
    if rows.n == 0:
        raise RuntimeError("a training worker received no rows: use fewer workers or more data")
    batches = Batches(rows.n, n_global, cfg.batch_size, seed)
    _log(f"{n_global} samples, {C.world_size()} worker(s), {batches.steps} steps per epoch, "
         f"{RowsPlan(**(plan or {})).describe(rows.n)}")

    clock = CheckpointClock(float(config.get("checkpoint_interval_s", 0.0)))
    state = latest_state()
    if state is not None:
        common.check_resumable(state, "dec", cfg, input_shape)
        _log(f"resuming from checkpoint: phase {state['phase']}")
    base_state = {"algorithm": "dec", "config": to_dict(cfg), "input_shape": list(input_shape), "seed": seed}
    resumed_from = None if state is None else {
        "phase": state["phase"], "epoch": state["pretrain_epochs_done"] if state["phase"] == "pretrain" else state["epoch"]}

    autoencoder = build_autoencoder(cfg, input_shape).to(device)
    if state is not None and state["phase"] == "pretrain":
        autoencoder.load_state_dict(state["autoencoder"])
    if state is None or state["phase"] == "pretrain":
        pretrain(cfg, autoencoder, rows, batches, device, state, base_state, clock)

    model = DEC(cfg, autoencoder).to(device)
    if state is not None and state["phase"] == "cluster":
        model.load_state_dict(state["model"])
    else:
        init_centres(cfg, model, rows, device, seed)
        _log("centres initialised by k-means")
        state = None  # clustering starts from scratch
    probe = common.ProgressProbe(rows, int(config.get("progress_rows", 0)), seed)
    summary = cluster(cfg, model, rows, batches, device, state, base_state, clock, probe)
    return {**summary, "resumed_from": resumed_from}


def cluster(
    cfg: DECConfig,
    model: DEC,
    rows: InMemoryRows | StreamingRows,
    batches: Batches,
    device: torch.device,
    state: dict[str, Any] | None,
    base_state: dict[str, Any],
    clock: CheckpointClock,
    probe: common.ProgressProbe,
) -> dict[str, Any]:
    """DEC's self-training phase; reports with checkpoints follow ``clock`` and always
    close the phase. With ``probe`` on, every epoch also reports the silhouette of the
    target model's labels (the pretraining phase reports none: it has no clusters yet)."""
    net = C.wrap_ddp(model, device)
    opt_name, lr = cfg.cluster_optimizer
    opt = make_optimizer(opt_name, [p for p in net.parameters() if p.requires_grad], lr)
    n_global = global_count(rows.n)

    start_epoch, step, converged, delta = 0, 0, False, float("nan")
    resumed_at = None
    target_model = copy.deepcopy(model)  # the model that defined the current target p
    has_target = False  # once it has, each update counts the labels that changed
    p_local = labels_prev = f = prior = None
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        start_epoch, step, converged = state["epoch"], state["step"], state["converged"]
        target_model.load_state_dict(state["target_model"])
        has_target = True
        prior = None if state.get("size_prior") is None else torch.tensor(state["size_prior"])
        if rows.in_memory:
            p_local, labels_prev, f = compute_target(target_model, rows.x, device, prior)
        else:
            f, _ = stream_target(target_model, None, rows, device)
        delta = state["delta_label"]
        resumed_at = start_epoch

    epoch = start_epoch
    if state is None and cfg.epochs == 0:
        # No self-training: the k-means start is the model (the DEC paper's "AE+k-means").
        report_epoch({"phase": "cluster", "epoch": 0, "step": 0, "delta_label": delta},
                     {**base_state, "phase": "cluster", "epoch": 0, "step": 0, "converged": False,
                      "delta_label": delta, "model": model.state_dict(), "target_model": model.state_dict(),
                      "size_prior": None, "optimizer": opt.state_dict()})
    while epoch < cfg.epochs and not converged:
        totals: dict[str, float] = {}
        for idx, columns in rows.epoch(batches, 10_000 + epoch):
            if step % cfg.update_interval == 0:
                if rows.in_memory:
                    target_model.load_state_dict(model.state_dict())
                    if not has_target and cfg.size_prior == "start":  # the k-means start's shares
                        prior = start_prior(cfg, global_cluster_frequencies(soft_assign_all(target_model, rows.x,
                                                                                            device)))
                    p_local, labels, f = compute_target(target_model, rows.x, device, prior)
                    changed = None if labels_prev is None else int((labels != labels_prev).sum())
                    labels_prev = labels
                else:
                    previous = copy.deepcopy(target_model) if has_target else None
                    target_model.load_state_dict(model.state_dict())
                    f, changed = stream_target(target_model, previous, rows, device)
                    changed = None if previous is None else changed
                    if not has_target:
                        prior = start_prior(cfg, f)
                has_target = True
                if changed is not None:
                    delta = global_count(changed) / n_global
                    if delta < cfg.tol:
                        converged = True
                        _log(f"step {step}: {delta:.4%} of labels changed < tol {cfg.tol:.4%}; stopping")
                        break
            x = columns[FEATURE_COLUMN].to(device)
            p = p_local[idx].to(device) if rows.in_memory else batch_target(target_model, x, f, prior)
            _, q, x_hat = net(x)  # through DDP, so gradients are averaged across workers
            loss, parts = model.loss_from_outputs(x, p, q, x_hat)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + value
        epoch += 1
        metrics = {
            "phase": "cluster",
            "epoch": epoch,
            "step": step,
            "delta_label": delta,
            **{k: v / max(1, batches.steps) for k, v in totals.items()},
        }
        if _should_log(epoch - 1, cfg.epochs) or converged:
            _log(common.format_metrics(metrics))
        before = _pretrain_total(cfg, model.autoencoder)
        _advance(before + epoch, before + cfg.epochs, phase="cluster",
                 **{k: v / max(1, batches.steps) for k, v in totals.items()})
        due = clock.due(final=converged or epoch >= cfg.epochs)
        if not due and not probe.on:
            continue
        report_epoch(
            {**metrics, **probe.score(lambda p: common.eval_labels(
                target_model, p.x, device, lambda out: out[1].argmax(dim=1)))},
            {
                **base_state,
                "phase": "cluster",
                "epoch": epoch,
                "step": step,
                "converged": converged,
                "delta_label": delta,
                "model": model.state_dict(),
                "target_model": target_model.state_dict(),
                "size_prior": None if prior is None else prior.tolist(),
                "optimizer": opt.state_dict(),
            } if due else None,
        )
    return {"epochs": epoch, "steps": step, "converged": converged, "delta_label": delta,
            "resumed_at_epoch": resumed_at}
