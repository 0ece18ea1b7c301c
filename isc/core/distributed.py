"""Several processes under ``torchrun``: joining its process group, this process's rank and GPU, barriers.

Shared by extraction (each rank extracts a shard of the ids) and training (DistributedDataParallel)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from isc.core.files import InputError


def local_gpu() -> torch.device:
    """This process's GPU: ``cuda:LOCAL_RANK`` under torchrun, ``cuda:0`` alone."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def check_device(device: str | None) -> None:
    """Refuse, as InputError, a device other than cpu, cuda and cuda:N, or a GPU that torch cannot see."""
    if device is None:
        return
    kind, colon, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (colon and (kind == "cpu" or not index.isdigit())):
        raise InputError(f"device {device!r}: not a device (cpu, cuda or cuda:N)")
    visible = torch.cuda.device_count() if kind == "cuda" and torch.cuda.is_available() else 0
    if kind == "cuda" and not visible:
        raise InputError(f"device {device!r}: no GPU is visible to torch (use the cpu device)")
    if kind == "cuda" and colon and int(index) >= visible:
        raise InputError(f"device {device!r}: torch sees {visible} GPU(s), cuda:0 to cuda:{visible - 1}")


def this_device(device: str | None) -> torch.device:
    """This rank's device: ``device`` itself when it names a GPU or the CPU, else (cuda, or None with a GPU
    visible) the rank's own GPU under torchrun."""
    check_device(device)
    want_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if want_cuda:
        return torch.device(device) if device and ":" in device else local_gpu()
    return torch.device(device or "cpu")


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
