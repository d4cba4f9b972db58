"""Collective helpers that also work in Ray Train's local mode (no process group).

Inside a TorchTrainer worker, Ray Train has already called ``init_process_group`` (Gloo on
CPU, NCCL on GPU). With ``num_workers=0`` the loop runs in the driver with no process
group, so every helper falls back to the single-process answer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    """True inside a multi-process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _comm_device() -> torch.device:
    """NCCL (GPU workers) communicates CUDA tensors only; Gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` across workers in place (on any device) and return it."""
    if is_distributed():
        buf = t.to(_comm_device())
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        t.copy_(buf)
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` (on any device) on every worker with rank ``src``'s value."""
    if is_distributed():
        buf = t.to(_comm_device())
        dist.broadcast(buf, src=src)
        t.copy_(buf)
    return t


def all_gather(t: torch.Tensor) -> torch.Tensor:
    """Every worker's ``t`` (same shape on all) concatenated along dim 0 in rank order,
    without gradient, on ``t``'s device."""
    if not is_distributed():
        return t.detach()
    buf = t.detach().to(_comm_device()).contiguous()
    parts = [torch.empty_like(buf) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, buf)
    return torch.cat(parts).to(t.device)


def all_gather_object(obj: Any) -> list[Any]:
    """List of every worker's ``obj``, in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` when distributed, else ``module``.

    DDP broadcasts rank 0's parameters at construction, so every worker starts equal.
    """
    module.to(device)
    if not is_distributed():
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
