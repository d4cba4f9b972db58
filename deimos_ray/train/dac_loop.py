"""DAC training loop for one Ray Train worker.

Every step follows the paper's alternation: the current network selects the batch's
pairs (similarities without gradient against the thresholds u and l), then learns from
them. Selection therefore always uses the network as it is now, and the pairs change as
it learns.

Data parallelism (DDP; gradients averaged across workers):

- default: each worker selects pairs within its own share of the global batch;
- ``gather_pairs``: the label features of the whole global batch are all-gathered
  (without gradient) and each worker's rows are paired with every column. The loss is
  scaled so the averaged gradient equals the gradient of the global-batch loss: the
  pair loss is symmetric, so rows-only gradients are half of it, and DDP divides by the
  number of workers, hence the factor 2 x workers over the global pair count.

The schedule state (epoch and λ) and the history of thresholds are in every checkpoint,
so a resumed run continues the same schedule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ray.train
import torch

from deimos_ray import progress
from deimos_ray.config_io import from_dict, to_dict
from deimos_ray.data.augment import augment, two_views
from deimos_ray.data.features import BANK_COLUMN
from deimos_ray.losses.dac import label_features, labeled_masks, pair_loss_sum, select_pairs
from deimos_ray.models.dac import DACConfig, DACNet, next_lambda, schedule_done, thresholds
from deimos_ray.train import collective as C
from deimos_ray.train import common
from deimos_ray.train.checkpoint import latest_state, report_epoch
from deimos_ray.train.common import Batches, CheckpointClock, global_count
from deimos_ray.train.rows import FEATURE_COLUMN, RowsPlan, open_worker_rows

KNOWN_COLUMN = "known"  # label used as supervision, -1 where unknown or not drawn

def _log(message: str) -> None:
    if C.rank() == 0:
        progress.note(f"[dac] {message}")


def _loss_and_stats(
    sim: torch.Tensor, same: torch.Tensor, different: torch.Tensor, valid: torch.Tensor,
    rows_known: torch.Tensor, cols_known: torch.Tensor, cfg: DACConfig, gather: bool,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The loss of the selected pairs (plus the labelled term), and the step's sums."""
    n_rows, n_cols = sim.shape
    pair_sum, pair_count = pair_loss_sum(sim, same, different, cfg.pair_loss)
    # Sums stay tensors on the device; the loop reads them once per epoch.
    stats = {"selected": pair_count, "same": same.sum(), "candidates": n_rows * (n_cols - 1),
             "pair_loss_sum": pair_sum.detach()}

    label_sum = label_count = None
    if cfg.labeled_fraction > 0:
        with torch.no_grad():
            must, cannot = labeled_masks(rows_known.to(sim.device), cols_known.to(sim.device), valid)
        label_sum, label_count = pair_loss_sum(sim, must, cannot, cfg.pair_loss)
        stats.update(labeled=label_count, labeled_loss_sum=label_sum.detach())

    if gather:  # a global count needs a collective, which waits anyway
        scale = 2.0 * C.world_size()
        loss = scale * pair_sum / max(global_count(pair_count.item()), 1.0)
        if label_sum is not None:
            loss = loss + cfg.labeled_weight * scale * label_sum / max(global_count(label_count.item()), 1.0)
    else:
        loss = pair_sum / pair_count.clamp(min=1)
        if label_sum is not None:
            loss = loss + cfg.labeled_weight * label_sum / label_count.clamp(min=1)
    return loss, stats


def bank_views(bank: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two different views of every image from its bank (n, N, D) of augmented views'
    features (``--views augment:N``): DAC's two augmented views, lifted to features."""
    n, count = bank.shape[:2]
    first = torch.randint(0, count, (n,), generator=g, device=bank.device)
    second = (first + torch.randint(1, count, (n,), generator=g, device=bank.device)) % count
    rows = torch.arange(n, device=bank.device)
    return bank[rows, first], bank[rows, second]


def step_loss(
    net: torch.nn.Module, x: torch.Tensor, known: torch.Tensor, cfg: DACConfig,
    upper: float, lower: float, g: torch.Generator, bank: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The loss of one step on this worker's share ``x`` of the global batch, selecting
    the pairs with the network as it is now (``selection="batch"``, the paper). With
    ``augment``, the two views of an image are augmentations of its pixels, or, on
    features, two entries of its view ``bank``.

    Returns:
        The loss to back-propagate, and sums for the epoch's log (tensors, except the
        number of candidate pairs): selected pairs, "same" pairs, candidate pairs,
        pair-loss sum, labelled pairs and their loss sum.
    """
    rows_known = known
    if cfg.augment:
        # Two views of every image; an image and its view are always a "same" pair.
        view_a, view_b = two_views(x, cfg.augmentation, g) if bank is None else bank_views(bank, g)
        x, rows_known = torch.cat([view_a, view_b]), torch.cat([known, known])
    features = label_features(net(x))
    n_rows = len(features)
    gather = cfg.gather_pairs and C.is_distributed()
    if gather:
        columns, cols_known = C.all_gather(features), C.all_gather(rows_known)
        offset = C.rank() * n_rows
    else:
        columns, cols_known, offset = features, rows_known, 0
    device = features.device
    row_pos = torch.arange(n_rows, device=device) + offset
    col_pos = torch.arange(len(columns), device=device)
    valid = row_pos[:, None] != col_pos[None, :]  # an image with itself says nothing

    sim = features @ columns.T
    with torch.no_grad():
        same, different = select_pairs(sim, upper, lower, valid)
        if cfg.augment:
            half = n_rows // 2
            partner = (torch.arange(n_rows, device=device) + half) % n_rows + offset
            views = col_pos[None, :] == partner[:, None]
            same, different = same | views, different & ~views
    return _loss_and_stats(sim, same, different, valid, rows_known, cols_known, cfg, gather)


def selection_size(cfg: DACConfig, n_global: int) -> int:
    """Images per selection (global): a chunk, at most the whole set, or a training batch."""
    return min(cfg.chunk_size, n_global) if cfg.selection == "chunk" else cfg.batch_size


def _off_diagonal(n: int, device: torch.device) -> torch.Tensor:
    """(n, n) mask of the pairs of distinct images (an image with itself says nothing)."""
    return ~torch.eye(n, dtype=torch.bool, device=device)


def chunk_targets(
    net: torch.nn.Module, x: torch.Tensor, upper: float, lower: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ "Same" and "different" masks over a chunk's pairs, from its un-augmented images
    (``selection="chunk"``, the reference MNIST code).

    ``net`` stays in training mode, so batch norm uses the chunk's own statistics as the
    reference's Keras ``BatchNormalization(mode=2)`` does; the chunk's clean images thus
    also nudge the running statistics, which the final assignment uses.
    """
    with torch.no_grad():
        features = label_features(net(x))
        return select_pairs(features @ features.T, upper, lower, _off_diagonal(len(x), features.device))


def chunk_step_loss(
    net: torch.nn.Module, x: torch.Tensor, known: torch.Tensor, same: torch.Tensor,
    different: torch.Tensor, cfg: DACConfig, g: torch.Generator, bank: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The loss of one mini-batch of a chunk against the chunk's fixed targets.

    With ``augment``, the network sees one random view of each image (on features, one
    entry of its view ``bank``) and learns the targets that :func:`chunk_targets` gave
    the clean images.
    """
    if cfg.augment:
        x = augment(x, cfg.augmentation, g) if bank is None else bank_views(bank, g)[0]
    features = label_features(net(x))
    valid = _off_diagonal(len(x), features.device)
    return _loss_and_stats(features @ features.T, same, different, valid, known, known, cfg, False)


def _learn(opt: torch.optim.Optimizer, loss: torch.Tensor, stats: dict[str, Any], sums: dict[str, Any]) -> None:
    """One optimiser step; the step's statistics are added to the epoch's ``sums``."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    for name, value in stats.items():
        sums[name] = sums.get(name, 0.0) + value


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point for DAC.

    Args:
        config: ``{"model": DACConfig as dict, "seed": int, "input_shape": [C, H, W],
            "checkpoint_interval_s": float, "view_bank": N}``; the dataset has columns
            ``x`` and ``known`` (and with ``view_bank`` N > 0 the bank, ``_views``).

    Returns:
        ``epochs``, the final ``lambda``/``upper``/``lower``, ``resumed_at_epoch`` and the
        per-epoch ``history`` (rank 0's is ``Result.return_value``).
    """
    cfg = from_dict(DACConfig, config["model"])
    seed = int(config["seed"])
    input_shape = tuple(config["input_shape"])
    view_bank = int(config.get("view_bank", 0))  # --views augment:N: augmented views' features
    if len(input_shape) == 1 and cfg.augment and not view_bank:
        # Feature vectors (a backbone's) have no pixels to crop or rotate: the pairs are
        # selected as in the paper, without views. check_resumable compares the config
        # as given, so the replacement is local to the training.
        train_cfg = dataclasses.replace(cfg, augment=False)
    else:
        train_cfg = cfg
    device = ray.train.torch.get_device()
    torch.manual_seed(seed)  # identical initial weights on every rank

    plan = config.get("rows")
    extra = (KNOWN_COLUMN, BANK_COLUMN) if view_bank else (KNOWN_COLUMN,)
    rows = open_worker_rows(input_shape, extra, plan)
    if rows.n == 0:
        raise RuntimeError("a training worker received no rows: use fewer workers or more data")
    n_global = int(global_count(rows.n))
    batches = Batches(rows.n, n_global, selection_size(cfg, n_global), seed)
    if cfg.selection == "chunk":
        # The same number of mini-batches per chunk on every rank (DDP steps together).
        minis = math.ceil(batches.local_batch / max(1, cfg.batch_size // C.world_size()))
        steps = f"{batches.steps} chunks x {cfg.inner_passes} passes x {minis} steps per epoch"
    else:
        steps = f"{batches.steps} steps per epoch"
    _log(f"{n_global} images, {C.world_size()} worker(s), {steps}, schedule {cfg.schedule}, "
         f"{cfg.selection} selection, {cfg.pair_loss} loss"
         + (", pairs from the global batch" if cfg.gather_pairs else "")
         + f", {RowsPlan(**(plan or {})).describe(rows.n)}")

    backbone = config.get("backbone")  # set when the pretrained backbone is fine-tuned
    net = DACNet(cfg, input_shape, backbone).to(device)
    ddp = C.wrap_ddp(net, device)
    opt = torch.optim.RMSprop(net.parameter_groups(cfg), lr=cfg.lr, alpha=cfg.rmsprop_alpha)
    clock = CheckpointClock(float(config.get("checkpoint_interval_s", 0.0)))
    probe = common.ProgressProbe(rows, int(config.get("progress_rows", 0)), seed)

    epoch, lam, history, resumed_at = 0, 0.0, [], None
    state = latest_state()
    if state is not None:
        common.check_resumable(state, "dac", cfg, input_shape)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch, lam, history = int(state["epoch"]), float(state["lambda"]), list(state["history"])
        resumed_at = epoch
        _log(f"resuming at epoch {epoch}, lambda {lam:.4f}")

    while not schedule_done(cfg, lam, epoch):
        upper, lower = thresholds(cfg, lam, epoch)
        g = torch.Generator(device=device).manual_seed(seed * 100_003 + epoch * 1_009 + C.rank())
        sums: dict[str, float] = {}
        ddp.train()

        for _, columns in rows.epoch(batches, epoch):
            x, known = columns[FEATURE_COLUMN].to(device), columns[KNOWN_COLUMN]
            bank = columns[BANK_COLUMN].to(device) if view_bank else None
            if cfg.selection == "batch":
                _learn(opt, *step_loss(ddp, x, known, train_cfg, upper, lower, g, bank), sums)
                continue
            same, different = chunk_targets(net, x, upper, lower)
            known = known.to(device)  # indexed by the device-side mini-batches below
            for _ in range(cfg.inner_passes):
                order = torch.randperm(len(x), generator=g, device=device)
                for mini in torch.tensor_split(order, minis):
                    pick = mini[:, None], mini[None, :]
                    _learn(opt, *chunk_step_loss(ddp, x[mini], known[mini], same[pick], different[pick], train_cfg, g,
                                                 None if bank is None else bank[mini]), sums)
        totals = {name: global_count(float(value)) for name, value in sorted(sums.items())}
        record = {
            "epoch": epoch + 1, "lambda": lam, "upper": upper, "lower": lower,
            "selected_fraction": totals["selected"] / max(totals["candidates"], 1.0),
            "same_fraction": totals["same"] / max(totals["selected"], 1.0),
            "pair_loss": totals["pair_loss_sum"] / max(totals["selected"], 1.0),
        }
        if "labeled" in totals:
            record["labeled_loss"] = totals["labeled_loss_sum"] / max(totals["labeled"], 1.0)
        history.append(record)
        _log(common.format_metrics(record, 4))
        if C.rank() == 0:
            progress.advance(epoch + 1, cfg.epochs, "epoch", pair_loss=record["pair_loss"],
                             selected=round(record["selected_fraction"], 3))
        epoch, lam = epoch + 1, next_lambda(cfg, lam)
        due = clock.due(final=schedule_done(cfg, lam, epoch))
        if not due and not probe.on:
            continue
        report_epoch(
            {"phase": "dac", **record, **probe.score(lambda p: common.eval_labels(net, p.x, device, lambda logits: logits.argmax(dim=1)))},
            None if not due else {
                "algorithm": "dac",
                "config": to_dict(cfg),
                "input_shape": list(input_shape),
                "backbone": backbone,
                "seed": seed,
                "epoch": epoch,
                "lambda": lam,
                "history": history,
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
            },
        )
    upper, lower = thresholds(cfg, lam, epoch)
    crossed = cfg.schedule != "official" and upper <= lower  # official: u = l by design
    _log(f"stopped after {epoch} epochs: u {upper:.4f} <= l {lower:.4f}" if crossed
         else f"stopped after {epoch} epochs (model.epochs)")
    return {"epochs": epoch, "lambda": lam, "upper": upper, "lower": lower,
            "resumed_at_epoch": resumed_at, "history": history}
