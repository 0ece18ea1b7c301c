"""What every descriptor model is, whatever runs it: :class:`DescriptorModel`, its preprocessing and the
attributes it records in descriptor files. No torch here: the models run outside torch build on it alone."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable

import numpy as np

from isc.core.files import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("square", "short-edge")
POOLINGS = ("gem", "mean", "max")  # of a timm backbone's feature map
MAX_IMAGE_SIZE = 4096  # pixels a side: one 4096² float batch item is 200 MB; 100000 would ask for 120 GB


class DescriptorModel:
    """A model mapping images to descriptors [B, D], with its preprocessing.

    ``resize``: ``"square"`` resizes every image to ``image_size`` x ``image_size``; ``"short-edge"`` keeps
    the aspect ratio with the short edge at ``image_size``. Images are scaled to [0, 1], then normalised
    with ``mean`` / ``std``. ``normalized``: whether descriptors come out L2-normalised.

    Called on a normalised float batch [B, 3, H, W] (a torch tensor) it returns the descriptors as one. A model
    that reads uint8 RGB pixels (:attr:`takes_pixels`) also takes numpy pixels [B, H, W, 3]
    (:meth:`embed_pixels`), which isc-extract feeds it without torch.
    """

    takes_pixels = False
    gpu_capable = True  # whether a GPU would run it (extraction's default device is then a GPU, when there is one)
    per_image_descriptor: Callable[[np.ndarray], np.ndarray] | None = None

    def _set_preprocessing(self, *, name: str, options: dict, dim: int, image_size: int, resize: str = "square",
                           mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD, normalized: bool = True,
                           fingerprint_extra: str = "") -> None:
        if resize not in RESIZE_MODES:
            raise InputError(f"unknown resize mode {resize!r} (choose from {', '.join(RESIZE_MODES)})")
        if image_size < 8:
            raise InputError(f"image size {image_size} is too small (at least 8 pixels)")
        if image_size > MAX_IMAGE_SIZE:
            raise InputError(f"image size {image_size} is too large (at most {MAX_IMAGE_SIZE} pixels)")
        self.name = name
        self.options = dict(options)
        self.dim = int(dim)
        self.image_size = int(image_size)
        self.resize = resize
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.normalized = normalized
        self._fingerprint_extra = fingerprint_extra

    def embed_pixels(self, pixels: np.ndarray, device: str = "cpu") -> np.ndarray:
        """Descriptors [B, D] float32 of uint8 RGB pixels [B, H, W, 3], for a model that :attr:`takes_pixels`."""
        raise InputError(f"model {self.name!r} does not take uint8 pixels")

    def prepare(self, device: str, half: bool) -> DescriptorModel:
        """This model ready for inference on ``device`` (``half``: in float16 where it has weights to convert)."""
        return self

    def _weights(self) -> Iterable[tuple[str, bytes]]:
        """(name, float32 bytes) of each weight tensor: what the fingerprint hashes besides name and options."""
        return ()

    def fingerprint(self) -> str:
        """A hash of the name, options and weights: two files with different fingerprints never mix."""
        digest = hashlib.sha256(json.dumps([self.name, self.options, self._fingerprint_extra],
                                           sort_keys=True).encode())
        for key, data in self._weights():
            digest.update(key.encode())
            digest.update(data)
        return digest.hexdigest()[:16]

    def config(self) -> dict[str, object]:
        """What produced a descriptor file: name, options, preprocessing, weights fingerprint."""
        return {
            "model": self.name,
            "model_options": json.dumps(self.options, sort_keys=True),
            "model_fingerprint": self.fingerprint(),
            "dimension": self.dim,
            "image_size": self.image_size,
            "resize": self.resize,
            "mean": json.dumps(self.mean),
            "std": json.dumps(self.std),
            "normalized": self.normalized,
        }
