"""Models run outside torch, on numpy arrays (PDQ, ONNX graphs): :class:`ArrayModel`, a plain object, so that
extracting with one never imports torch."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from isc.models.base import DescriptorModel

if TYPE_CHECKING:
    import torch


class ArrayNet(Protocol):
    """What an :class:`ArrayModel` runs: ``uint8``, its input contract (uint8 RGB pixels [B, H, W, 3], else
    normalised floats [B, 3, H, W]); ``takes_pixels``, whether extraction may feed it numpy pixels (the pixel
    path; a caller may turn it off to run the net on the torch pipeline); ``gpu_capable``, whether a GPU would
    run it; ``embed``, descriptors [B, D]
    float32 of an array in its contract on a device (``cpu``, ``cuda:N``)."""

    uint8: bool
    takes_pixels: bool
    gpu_capable: bool

    def embed(self, array: np.ndarray, device: str = "cpu") -> np.ndarray: ...


class ArrayModel(DescriptorModel):
    """An :class:`ArrayNet` with its preprocessing (the keyword arguments of
    :class:`isc.models.base.DescriptorModel`). Called on a torch batch (the torch pipeline) it runs the net on
    the batch's arrays: a uint8 net on the pixels the batch was made of."""

    def __init__(self, net: ArrayNet, **preprocessing: object):
        self.net = net
        self._set_preprocessing(**preprocessing)

    @property
    def takes_pixels(self) -> bool:
        return bool(self.net.takes_pixels)

    @property
    def gpu_capable(self) -> bool:
        return bool(self.net.gpu_capable)

    @property
    def per_image_descriptor(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """For a net that describes each image alone (PDQ): a picklable function of one image's uint8 pixels
        [H, W, 3] to its descriptor [D] float32, which isc-extract runs in its decoding processes."""
        return getattr(self.net, "per_image", None)

    def embed_pixels(self, pixels: np.ndarray, device: str = "cpu") -> np.ndarray:
        return self.net.embed(pixels, device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch  # a torch batch came: torch is loaded already

        from isc.models.torch_model import to_pixels

        array = to_pixels(images) if self.net.uint8 else images.float().cpu().numpy()
        return torch.from_numpy(self.net.embed(array, str(images.device))).to(images.device)
