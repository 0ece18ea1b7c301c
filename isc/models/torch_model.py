"""Models that are torch networks: :class:`TorchModel`, and the conversion of a torch batch back to the uint8
pixels it was made of (:func:`to_pixels`), which the models run outside torch need on the torch pipeline."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from isc.models.base import DescriptorModel


class TorchModel(nn.Module, DescriptorModel):
    """A torch network mapping normalised images [B, 3, H, W] to descriptors [B, D], with its preprocessing
    (the keyword arguments of :class:`isc.models.base.DescriptorModel`)."""

    def __init__(self, net: nn.Module, **preprocessing: object):
        super().__init__()
        self.net = net
        self._set_preprocessing(**preprocessing)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def prepare(self, device: str, half: bool) -> TorchModel:
        """On ``device`` (channels-last on a GPU), float16 if ``half`` else float32, in eval mode."""
        on_gpu = str(device).startswith("cuda")
        model = self.to(device, memory_format=torch.channels_last if on_gpu else torch.preserve_format)
        return (model.half() if half else model.float()).eval()

    def _weights(self) -> Iterator[tuple[str, bytes]]:
        for key, tensor in self.state_dict().items():
            yield key, tensor.detach().float().cpu().contiguous().numpy().tobytes()


def to_pixels(images: torch.Tensor) -> np.ndarray:
    """A batch scaled to [0, 1] (mean 0, std 1) [B, 3, H, W] as the uint8 RGB pixels it was made of [B, H, W, 3]."""
    pixels = images.float().mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return np.ascontiguousarray(pixels.cpu().numpy())
