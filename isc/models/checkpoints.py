"""One checkpoint format: ``{format, model, options, state_dict, **extra}`` written by isc-train, read back by
:func:`isc.models.create_model` (a bare state dict is read too)."""

from __future__ import annotations

from pathlib import Path

import torch

from isc.core.files import InputError, atomic_path, check_file
from isc.models.base import DescriptorModel

CHECKPOINT_FORMAT = "isc-descriptor-model/1"


def save_checkpoint(model: DescriptorModel, path: str | Path, **extra: object) -> None:
    """Write ``{format, model, options, state_dict, **extra}`` atomically; ``create_model`` ignores ``extra``."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else {}
    payload = {**extra, "format": CHECKPOINT_FORMAT, "model": model.name, "options": model.options,
               "state_dict": {k: v.detach().cpu() for k, v in state.items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint file: a :func:`save_checkpoint` dict, or a bare state dict (wrapped in one)."""
    check_file(path, "checkpoint file")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a file that is not a checkpoint
        raise InputError(f"{path}: not a PyTorch checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(saved, dict):
        raise InputError(f"{path}: a checkpoint must hold a dict, found {type(saved).__name__}")
    if "state_dict" not in saved:
        if not all(isinstance(v, torch.Tensor) for v in saved.values()):
            raise InputError(f"{path}: neither a save_checkpoint file nor a state dict")
        saved = {"state_dict": saved}
    return saved


def load_weights(model: DescriptorModel, state: dict, checkpoint: str | Path, options: dict) -> None:
    """Load a checkpoint's ``state`` into ``model``; InputError when they do not fit (a model run outside torch
    has no weights: only an empty state fits it)."""
    try:
        if isinstance(model, torch.nn.Module):
            model.load_state_dict(state)
        elif state:
            raise RuntimeError(f"{model.name} has no weights, the checkpoint holds {len(state)} tensors")
    except RuntimeError as e:
        raise InputError(f"{checkpoint}: weights do not fit model {model.name!r} with options {options} "
                         f"({str(e).splitlines()[0]})") from None
