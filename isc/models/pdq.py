"""``pdq``: Meta's PDQ perceptual hash of each image as a 256-d ±1 descriptor (no weights, no torch)."""

from __future__ import annotations

import numpy as np

from isc.models.array_model import ArrayModel


def pdq_descriptor(pixels: np.ndarray) -> np.ndarray:
    """Meta's PDQ hash of one image's uint8 RGB pixels [H, W, 3] as 256 float32 values ±1."""
    import pdqhash

    bits, _quality = pdqhash.compute(np.ascontiguousarray(pixels))
    return (bits * 2 - 1).astype(np.float32)


class PdqHash:
    """The :class:`isc.models.array_model.ArrayNet` of PDQ: each image hashed alone, on the CPU."""

    uint8 = True
    takes_pixels = True
    gpu_capable = False
    per_image = staticmethod(pdq_descriptor)

    def embed(self, pixels: np.ndarray, device: str = "cpu") -> np.ndarray:
        return np.stack([pdq_descriptor(image) for image in pixels])


def build_pdq(name: str, pretrained: bool, *, image_size: int = 128) -> ArrayModel:
    # PDQ reduces the luminance to 64x64 itself (Jarosz box filters); a square resize is what it sees of a whole
    # image. 128 px, not 512: the bits differ from 512's by ~6-9 of 256 (PDQ's own noise: 512 differs as much
    # from the full image), the µAP of edited copies is the same, and a JPEG decodes in draft mode at 1/2 or 1/4
    # scale, faster in all (docs/BENCHMARKS.md)
    return ArrayModel(PdqHash(), name=name, options={"image_size": image_size}, dim=256, image_size=image_size,
                      resize="square", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), normalized=False)
