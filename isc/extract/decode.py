"""How one image is read: decoded with Pillow (EXIF rotation, more than 8 bits, transparency), resized, cut
into crop views; and :func:`nvjpeg_size`, which says from the markers alone whether nvJPEG can decode it.

Decoded images are numpy uint8 [3, H, W] (views of Pillow's [H, W, 3] pixels, laid out as the torch pipeline's
tensors) and are resized by :func:`isc.extract.resample.resize_pixels`, torch's resize in numpy: reading an image
never imports torch. :func:`decode_with_pillow` and :func:`resize_image` are the torch pipeline's twins.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from isc.core.images import BrokenImage, broken_reason, on_white
from isc.extract.resample import resize_pixels, resized_shape

if TYPE_CHECKING:
    import torch

    ImageArray = np.ndarray | torch.Tensor  # an image [3, H, W] of either pipeline

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb threshold
# we enforce our own pixel limit (max_pixels)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


# ----------------------------------------------------------------------------------- preprocessing


def resize_image(image: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize [3, H, W] (uint8 on the CPU, or float) to size x size, or short edge = size (antialiased)."""
    import torch
    import torch.nn.functional as F

    height, width = image.shape[-2:]
    target = resized_shape(height, width, size, mode)
    if target == (height, width):
        return image
    if image.dtype == torch.uint8 and image.device.type != "cpu":
        image = image.float()  # uint8 interpolation exists on the CPU only
    return F.interpolate(image[None], size=target, mode="bilinear", antialias=True, align_corners=False)[0]


def crop_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Boxes (left, top, right, bottom) of a query's crops: the four corners and the centre, each 2/3 of the
    image in both directions (so the corner crops overlap), for a copy that fills only part of the query."""
    w, h = round(width * 2 / 3), round(height * 2 / 3)
    corners = [(0, 0), (width - w, 0), (0, height - h), (width - w, height - h), ((width - w) // 2, (height - h) // 2)]
    return [(x, y, x + w, y + h) for x, y in corners]


def grid_boxes(width: int, height: int, fraction: float, per_side: int) -> list[tuple[int, int, int, int]]:
    """Boxes (left, top, right, bottom) of a grid of views, row by row: ``per_side`` x ``per_side`` windows of
    ``fraction`` of the image in both directions, evenly spaced from one edge to the other (overlapping where
    ``fraction * per_side > 1``), for a copy pasted into a corner or cut off-centre, which the 2/3 crops miss."""
    if not 0 < fraction <= 1 or per_side < 1:
        raise ValueError(f"a grid needs 0 < fraction <= 1 and at least 1 window a side, got {fraction}, {per_side}")
    w, h = max(1, round(width * fraction)), max(1, round(height * fraction))
    # one window a side: centred
    xs = [round(i * (width - w) / (per_side - 1)) for i in range(per_side)] if per_side > 1 else [(width - w) // 2]
    ys = [round(i * (height - h) / (per_side - 1)) for i in range(per_side)] if per_side > 1 else [(height - h) // 2]
    return [(x, y, x + w, y + h) for y in ys for x in xs]


CROP_VIEWS = 1 + len(crop_boxes(3, 3))  # with crops: the full image, then each crop
GRID_FRACTION = 0.5  # a grid view's side, of the image's: a copy pasted into a quarter of the query
GRID_SIDES = (0, 2)  # windows a side of the grid views extraction offers (0: none; docs/BENCHMARKS.md)


def view_count(crops: bool, grid: int = 0) -> int:
    """The rows an image gives: 1, or with ``crops`` its full view, its crops and ``grid`` x ``grid`` grid views."""
    return CROP_VIEWS + grid * grid if crops else 1


def view_boxes(width: int, height: int, grid: int = 0) -> list[tuple[int, int, int, int]]:
    """The boxes of an image's views beyond the full one: its :func:`crop_boxes`, then its ``grid`` x ``grid``
    :func:`grid_boxes` of :data:`GRID_FRACTION` of the side (none for 0)."""
    return crop_boxes(width, height) + (grid_boxes(width, height, GRID_FRACTION, grid) if grid else [])


def crop_views(image: ImageArray, crops: bool, crop_source: ImageArray | None = None,
               grid: int = 0) -> list[ImageArray]:
    """The views of a decoded image [3, H, W] (numpy or torch): itself, then with ``crops`` each of its
    :func:`view_boxes` (the crops, then ``grid`` x ``grid`` grid views), cut from ``crop_source`` (the same image
    decoded with more pixels; default: ``image``)."""
    if not crops:
        return [image]
    source = image if crop_source is None else crop_source
    return [image, *(source[:, top:bottom, left:right]
                     for left, top, right, bottom in view_boxes(source.shape[-1], source.shape[-2], grid))]


def cut_views(full_view: ImageArray, grid: int = 0) -> list[ImageArray]:
    """An image's views cut from its full view as resized [3, h, w] (its crops, then ``grid`` x ``grid`` grid
    views, each at the full view's scale: a crop of 2/3 of the side has 2/3 of its pixels a side), where
    :func:`crop_views` resizes each to the view size: no second decoding, one resize, and 0.44 of the model's work
    a crop (docs/BENCHMARKS.md, "Crops cut from the full view")."""
    return crop_views(full_view, True, grid=grid)


def draft_size(sizes: Sequence[int], crops: bool, grid: int = 0) -> int:
    """The smallest side to decode a JPEG at: a crop (2/3 of the image), or a grid view (1/2) where there are,
    still at least the largest view size."""
    if not crops:
        return max(sizes)
    return 2 * max(sizes) if grid else -(-max(sizes) * 3 // 2)



def _to_8_bits(image: Image.Image) -> Image.Image:
    """A single-channel image of more than 8 bits (Pillow modes I;16*, I, F) scaled to 8-bit grey.

    Pillow's own conversion clips every value above 255 to white. 16-bit modes, and 32-bit integers
    within 0-65535, are scaled from 0-65535; floats within 0-1 from 0-1; any other range is stretched
    from its minimum to its maximum. The range is that of the finite pixels (+inf is white, -inf and NaN black);
    an image without one is broken.
    """
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    if values.size and not finite.any():
        raise BrokenImage(f"no finite pixel value ({image.mode} image of NaN or infinite values only)")
    low, high = (float(values[finite].min()), float(values[finite].max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and high <= 65535):
        low, high = 0.0, 65535.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.round(scaled).clip(0, 255).astype(np.uint8))


def _image_to_array(image: Image.Image) -> np.ndarray:
    """An opened Pillow image as uint8 RGB [3, H, W]: EXIF rotation applied, more than 8 bits scaled down,
    transparency over white."""
    ImageOps.exif_transpose(image, in_place=True)  # in place: otherwise a copy of every unrotated image
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8_bits(image)
    image = on_white(image)
    # asarray is read-only, hence the copy (torch takes writable arrays only); convert copies even an RGB image
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB")).copy().transpose(2, 0, 1)


def _open_image(source: Path | bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check the size; BrokenImage with the reason otherwise."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as e:
        raise BrokenImage(f"too large ({e})") from None
    except UnidentifiedImageError:
        raise BrokenImage("not an image (unidentified format)") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise BrokenImage(f"too large ({width}x{height} pixels, limit {max_pixels})")
    if width < 1 or height < 1:
        raise BrokenImage(f"empty image ({width}x{height})")
    return image


def decode_pixels(source: Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                  draft_size: int | None = None) -> np.ndarray:
    """Decode an image file with Pillow to uint8 RGB [3, H, W]; JPEGs in draft mode down to ``draft_size``."""
    if isinstance(source, Path) and source.stat().st_size == 0 or source == b"":
        raise BrokenImage("empty file (0 bytes)")
    with _open_image(source, max_pixels) as image:
        if draft_size and image.format == "JPEG":
            # DCT scaling by 1/2, 1/4 or 1/8 while both sides stay >= draft_size
            image.draft("RGB", (draft_size, draft_size))
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise BrokenImage(f"cannot decode ({e})") from None
        return _image_to_array(image)


def decode_with_pillow(source: Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                       draft_size: int | None = None) -> torch.Tensor:
    """:func:`decode_pixels` as a torch tensor."""
    import torch

    return torch.from_numpy(decode_pixels(source, max_pixels, draft_size))


def _draft_pixels(source: Path | bytes, max_pixels: int, draft_size: int) -> tuple[int, int]:
    """The (short, long) side of what :func:`decode_with_pillow` decodes at ``draft_size``, from the header."""
    with _open_image(source, max_pixels) as image:
        if image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        return min(image.size), max(image.size)


def decode_for_views(source: Path | bytes, max_pixels: int, sizes: Sequence[int],
                     crops: bool, grid: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(the full view's image, the image its crops and ``grid`` views are cut from), uint8 [3, H, W], decoded with
    Pillow.

    The full view is decoded at the draft size of an extraction without crops, so that its descriptor is
    exactly that extraction's (a file's plain descriptors are its crops file's first views); the crops,
    which need 1.5 times more pixels (the grid views 2), come from a second decode when a larger draft size
    decodes more.
    """
    full = decode_pixels(source, max_pixels, draft_size(sizes, False))
    larger = draft_size(sizes, True, grid)
    if not crops or _draft_pixels(source, max_pixels, larger) == tuple(sorted(full.shape[-2:])):
        return full, full
    return full, decode_pixels(source, max_pixels, larger)


# ------------------------------------------------------------------------------- an image's views


def decode_views(path: Path, sizes: Sequence[int], resize: str, max_pixels: int, crops: bool = False,
                 resizer: Callable[[np.ndarray, int, str], ImageArray] = resize_pixels, grid: int = 0,
                 cut: bool = False) -> tuple[list[ImageArray] | None, str | None]:
    """(the uint8 views [3, h, w], None) of an image file: of each of its :func:`crop_views` (``grid``: with its
    grid views), one per size (view v at size s is item ``v * len(sizes) + s``), resized by ``resizer`` (the
    torch pipeline passes torch's own, whose pixels are the same), or with ``cut`` cut from the resized full
    view (:func:`cut_views`); or (None, why it cannot be read)."""
    try:
        image, crop_source = decode_for_views(path, max_pixels, sizes, crops and not cut, grid)
    except (BrokenImage, OSError) as e:
        return None, broken_reason(e)
    if crops and cut:
        per_size = [cut_views(resizer(image, size, resize), grid) for size in sizes]
        return [views[v] for v in range(len(per_size[0])) for views in per_size], None
    return [resizer(view, size, resize) for view in crop_views(image, crops, crop_source, grid)
            for size in sizes], None


def views_by_size(views_of_images: Sequence[Sequence], n_sizes: int) -> list[list]:
    """Per size, the views of every image (image-major: an image's crop views adjacent) from
    :func:`decode_views`' lists."""
    return [[views[k] for views in views_of_images for k in range(s, len(views), n_sizes)] for s in range(n_sizes)]


def positions_by_shape(views: Sequence, views_per_image: int = 1) -> list[list[int]]:
    """The positions of ``views`` (tensors or arrays) grouped by shape, groups in the order of their first view.

    With ``views_per_image`` (image-major views: each image's full view then its crops), full views and crops
    are never grouped together: the full views of a batch then run through the model exactly as they do
    without crops, so that their descriptors are the same bit for bit.
    """
    shapes: dict[tuple, list[int]] = {}
    for i, view in enumerate(views):
        shapes.setdefault((tuple(view.shape), i % views_per_image == 0), []).append(i)
    return list(shapes.values())


# ----------------------------------------------------------------------------------------- nvJPEG


# start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic), not DHT/JPG/DAC
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _exif_orientation(exif: bytes) -> int | None:
    """The orientation tag (0x0112) of an EXIF block's first IFD, 0 without one; None when it cannot be read."""
    order = {b"II": "<", b"MM": ">"}.get(exif[:2])
    if order is None or len(exif) < 8:
        return None
    (offset,) = struct.unpack_from(order + "I", exif, 4)
    if offset + 2 > len(exif):
        return None
    (entries,) = struct.unpack_from(order + "H", exif, offset)
    for entry in range(offset + 2, min(offset + 2 + 12 * entries, len(exif) - 11), 12):
        tag, kind, _ = struct.unpack_from(order + "HHI", exif, entry)
        if tag == 0x0112:
            return struct.unpack_from(order + "H", exif, entry + 8)[0] if kind == 3 else None
    return 0


def nvjpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG that nvJPEG decodes as Pillow would: 8-bit, grey or 3-channel, not a
    multi-picture file, no EXIF rotation; None for any other file (Pillow decodes those). Reads the markers
    only: Pillow's header parse costs more than the nvJPEG decode itself and would bound the GPU path."""
    if data[:2] != b"\xff\xd8":
        return None
    position, size = 2, None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers carry no length
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        segment = data[position + 4:position + 2 + length]
        if marker == 0xDA:  # start of scan: the header is over
            return size
        if marker in _SOF_MARKERS:
            if len(segment) < 6 or segment[0] != 8 or segment[5] not in (1, 3):
                return None
            height, width = struct.unpack_from(">HH", segment, 1)
            size = (width, height)
        elif marker == 0xE1 and segment[:6] == b"Exif\x00\x00" and _exif_orientation(segment[6:]) not in (0, 1):
            return None
        elif marker == 0xE2 and segment[:4] == b"MPF\x00":
            return None
        position += 2 + length
    return None
