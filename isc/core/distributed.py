"""Several processes under ``torchrun``: joining its process group, this process's rank and GPU, barriers.

Shared by extraction (each rank extracts a shard of the ids) and training (DistributedDataParallel). torch is
imported only where a GPU or a process group is involved: a single process on the CPU runs without it."""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import TYPE_CHECKING

from isc.core.files import InputError

if TYPE_CHECKING:
    import torch

TORCH_INSTALL = "pip install 'isc[torch]'"  # the extra of torch, torchvision and timm
TORCH_MODULES = ("torch", "torchvision", "timm")
# what Linux shows where CUDA may run: NVIDIA's driver, its control device (also in a sandbox without the
# driver's /proc entry), WSL's GPU device
LINUX_GPU_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg")


def torch_absent(error: ImportError) -> bool:
    """Whether ``error`` says that torch, torchvision or timm is not installed (the torch extra)."""
    return (error.name or "").partition(".")[0] in TORCH_MODULES


def needs_torch(what: str) -> InputError:
    """The error of ``what`` (a model, a device, a command) asked for without the torch extra."""
    return InputError(f"{what} needs torch, torchvision and timm, not installed: {TORCH_INSTALL}")


def torch_installed() -> bool:
    """Whether torch can be imported, without importing it."""
    return importlib.util.find_spec("torch") is not None


def cuda_possible() -> bool:
    """Whether torch may see a CUDA GPU, asked without importing torch (seconds and hundreds of MB) where the
    answer is known: not without torch, nor on Linux without NVIDIA's driver or device (or WSL's GPU device)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].cuda.is_available()
    if not torch_installed():
        return False
    return sys.platform != "linux" or any(os.path.exists(path) for path in LINUX_GPU_PATHS)


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_device(device: str | None) -> None:
    """Refuse, as InputError, a device other than cpu, cuda and cuda:N, or a GPU that torch cannot see."""
    if device is None:
        return
    kind, colon, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (colon and (kind == "cpu" or not index.isdigit())):
        raise InputError(f"device {device!r}: not a device (cpu, cuda or cuda:N)")
    if kind == "cpu":
        return
    if not torch_installed():
        raise needs_torch(f"device {device!r}")
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not visible:
        raise InputError(f"device {device!r}: no GPU is visible to torch (use the cpu device)")
    if colon and int(index) >= visible:
        raise InputError(f"device {device!r}: torch sees {visible} GPU(s), cuda:0 to cuda:{visible - 1}")


def device_name(device: str | None) -> str:
    """This rank's device as torch names it: ``device`` itself when it names a GPU or the CPU, else (cuda, or
    None with a GPU visible) the rank's own GPU under torchrun, ``cuda:LOCAL_RANK``. torch is imported only to
    look for a GPU, never for ``cpu``."""
    check_device(device)
    if device == "cpu":
        return "cpu"
    if device is None:
        if not cuda_possible():
            return "cpu"
        import torch

        if not torch.cuda.is_available():
            return "cpu"
    return device if device and ":" in device else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def this_device(device: str | None) -> torch.device:
    """:func:`device_name` as a torch device."""
    import torch

    return torch.device(device_name(device))


def _distributed():  # noqa: ANN202 - the torch.distributed module, or None
    """torch.distributed when a process group may exist (under torchrun, or torch already loaded by the caller),
    else None: a lone process that has not loaded torch has no group."""
    if not _under_torchrun() and "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() else None


def join_process_group(device: torch.device | str) -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group) of this process.

    Under torchrun (``WORLD_SIZE`` > 1) joins its process group, NCCL for a GPU ``device``, else gloo,
    unless the group already exists; alone, (0, 1, False). A GPU ``device`` becomes the current one.
    """
    on_gpu = str(device).startswith("cuda")
    if on_gpu:
        import torch

        torch.cuda.set_device(device)  # before NCCL starts, so that each rank talks from its own GPU
    dist = _distributed()
    if dist is None:
        return 0, 1, False
    started = False
    if not dist.is_initialized() and _under_torchrun():
        dist.init_process_group("nccl" if on_gpu else "gloo")
        started = True
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return rank, world, started


def leave_process_group(started: bool) -> None:
    """Destroy the process group if :func:`join_process_group` started it (a caller's group stays)."""
    if started:
        import torch.distributed as dist

        dist.destroy_process_group()


def barrier(world: int) -> None:
    """Wait for every rank (nothing to wait for alone)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
