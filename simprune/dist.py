"""Optional distributed helpers. Every collective is a no-op without a process group."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str) -> torch.device:
    """Join the process group ``torchrun`` describes (if any) and return this process's device.

    NCCL on CUDA, gloo on CPU. Without ``WORLD_SIZE`` > 1 nothing is initialised.
    """
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if ws > 1 and not is_dist():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(device)


def all_reduce_mean(x: Tensor) -> Tensor:
    """Mean over processes (identity when single-process)."""
    if not is_dist():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate ``x: [B, ...]`` from every process along dim 0 (no gradient through others)."""
    if not is_dist():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def wrap_ddp(module: torch.nn.Module, device: torch.device,
             find_unused_parameters: bool = False) -> torch.nn.parallel.DistributedDataParallel:
    """``module`` in DDP, with its buffers left to each rank after the start (a momentum head's
    BatchNorm statistics are the rank's own; DINO's centre is averaged by its own all-reduce).

    ``find_unused_parameters``: some trained parameters take no part in some steps. torch 2.13
    deprecates ``broadcast_buffers`` for ``forward_sync_buffers``, which also copies rank 0's
    buffers once at the start; that changes nothing here (every rank builds, or resumes, the same
    buffers). Older versions only have the first.
    """
    import inspect

    ddp = torch.nn.parallel.DistributedDataParallel
    params = inspect.signature(ddp.__init__).parameters
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
               else {"broadcast_buffers": False})
    return ddp(module, device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=find_unused_parameters, **no_sync)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
