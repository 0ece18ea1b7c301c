"""What every stage that reads an image shares: :class:`BrokenImage` and the reason recorded for an image that
cannot be read (:func:`broken_reason`), and transparency over white (:func:`on_white`), the same for the
descriptors, the local features and the synthetic images.

Imports: the standard library and Pillow.
"""

from __future__ import annotations

from PIL import Image


class BrokenImage(Exception):
    """An image that cannot be turned into a descriptor; the message is the reason recorded."""


def broken_reason(error: Exception) -> str:
    """The reason recorded for an image whose reading raised ``error``: a :class:`BrokenImage`'s message, else
    ``cannot read (...)`` with the OSError's strerror when it has one."""
    if isinstance(error, BrokenImage):
        return str(error)
    return f"cannot read ({getattr(error, 'strerror', None) or error})"


def on_white(image: Image.Image) -> Image.Image:
    """An image with transparency (alpha, or a palette's transparent colour) composited over white, as RGBA;
    any other image as it is."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image
