"""Descriptor models: one registry (:mod:`registry`: the table of models, :func:`create_model`, the default
model), what every model is (:mod:`base`: :class:`DescriptorModel`, its preprocessing and recorded attributes),
the models that are torch networks (:mod:`torch_model`, :mod:`timm_models`, :mod:`torchscript`), the models
run outside torch on numpy arrays (:mod:`array_model`, :mod:`pdq`, :mod:`onnx_graphs`), and the checkpoint
format (:mod:`checkpoints`).

Imports: :mod:`isc.core` (and numpy, each model's own library, imported where it is built); torch only in :mod:`torch_model`, :mod:`timm_models`, :mod:`torchscript` and
:mod:`checkpoints`, which load when a torch model or a checkpoint is used: importing this package, building PDQ
or an ONNX model and running them never import torch. Their names (``save_checkpoint``, ``load_checkpoint``,
``efficientnet_lite_state_dict``, ``TorchModel``, ...) are still importable from here, on first use.
"""

from __future__ import annotations

import importlib

from isc.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_IMAGE_SIZE,
    POOLINGS,
    RESIZE_MODES,
    DescriptorModel,
)
from isc.models.registry import (
    DEFAULT_MODEL,
    REGISTRY,
    SSCD_MODELS,
    ModelEntry,
    create_model,
    default_model,
    given_options,
    untrainable,
)

__all__ = ["DEFAULT_MODEL", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_IMAGE_SIZE", "POOLINGS", "REGISTRY", "RESIZE_MODES",
           "SSCD_MODELS", "DescriptorModel", "ModelEntry", "create_model", "default_model", "given_options",
           "untrainable"]

# names of the torch modules, imported on first use
_TORCH_NAMES = {"save_checkpoint": "checkpoints", "load_checkpoint": "checkpoints", "CHECKPOINT_FORMAT": "checkpoints",
                "efficientnet_lite_state_dict": "timm_models", "LITE_VARIANTS": "timm_models",
                "TorchModel": "torch_model"}


def __getattr__(name: str) -> object:
    if name not in _TORCH_NAMES:
        raise AttributeError(f"module 'isc.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"isc.models.{_TORCH_NAMES[name]}"), name)
