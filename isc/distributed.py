"""Several processes under ``torchrun``: joining its process group, this process's rank and GPU, barriers.

Shared by extraction (each rank extracts a shard of the ids) and training (DistributedDataParallel).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def local_gpu() -> torch.device:
    """This process's GPU: ``cuda:LOCAL_RANK`` under torchrun, ``cuda:0`` alone."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def join_process_group(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group) of this process.

    Under torchrun (``WORLD_SIZE`` > 1) joins its process group, NCCL for a GPU ``device``, else gloo,
    unless the group already exists; alone, (0, 1, False). A GPU ``device`` becomes the current one.
    """
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before NCCL starts, so that each rank talks from its own GPU
    started = False
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() \
        else (0, 1)
    return rank, world, started


def leave_process_group(started: bool) -> None:
    """Destroy the process group if :func:`join_process_group` started it (a caller's group stays)."""
    if started:
        dist.destroy_process_group()


def barrier(world: int) -> None:
    """Wait for every rank (nothing to wait for alone)."""
    if world > 1:
        dist.barrier()
