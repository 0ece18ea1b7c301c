"""``torchscript:PATH``: a TorchScript module taking a normalised image batch and returning descriptors (the
format the SSCD copy-detection checkpoints are published in)."""

from __future__ import annotations

import warnings

import torch

from isc.core.files import InputError, check_file, file_digest
from isc.models.base import IMAGENET_MEAN, IMAGENET_STD
from isc.models.torch_model import TorchModel


def build_torchscript(name: str, pretrained: bool, *, image_size: int = 288, resize: str = "short-edge",
                      mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD) -> TorchModel:
    path = name.removeprefix("torchscript:")
    check_file(path, "TorchScript file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but is SSCD's format
            net = torch.jit.load(path, map_location="cpu")
    except RuntimeError as e:
        raise InputError(f"{path}: not a TorchScript module ({str(e).splitlines()[0]})") from None
    net.eval()
    with torch.no_grad():
        probe = net(torch.zeros(1, 3, image_size, image_size))
    if probe.ndim != 2:
        raise InputError(f"{path}: the module returns shape {tuple(probe.shape)}, expected [batch, dimension]")
    options = {"image_size": image_size, "resize": resize, "mean": list(mean), "std": list(std)}
    return TorchModel(net, name=name, options=options, dim=probe.shape[1], image_size=image_size, resize=resize,
                      mean=mean, std=std, normalized=False, fingerprint_extra=file_digest(path, "sha256")).eval()
