"""Descriptor extraction: image files in, one HDF5 descriptor file out (datasets ``ids``, ``descriptors``).

Two input pipelines feed the model; both resize with :func:`resize_image`, so their descriptors agree:

- ``torchvision`` (the fast path, default on a GPU): background threads read the files, JPEGs of a batch
  are decoded together by ``torchvision.io.decode_jpeg`` (nvJPEG on a GPU), resized and normalised on the
  device, in half precision and channels-last; a producer thread prepares batch k+1 (on its own CUDA
  stream) while the model runs on batch k.
- ``pil`` (default on the CPU): a DataLoader whose worker processes decode with Pillow, in JPEG draft
  mode when downscaling.

A model that takes uint8 pixels (PDQ, uint8 ONNX graphs: :attr:`DescriptorModel.takes_pixels`) gets them on
the ``pil`` decoder, its default on every device, without torch batches or a float round trip: worker
processes (all cores) decode and resize each image exactly as above and send back numpy pixels [H, W, 3],
which this process stacks for onnxruntime; PDQ hashes in the workers, so only its 256 values come back.
The pixels, hence the descriptors, are the same as on the torch pipelines.

Rows are appended to a log per rank (``OUT.rank0-of-1.partial``, :class:`PartialLog`), one checksummed
record per batch, so that even a kill -9 leaves every finished batch readable; a killed run restarts
from it (its model attributes must match; images whose size or modification time changed since are
extracted again), and the logs are merged into ``OUT`` in id order. Under ``torchrun`` each rank
extracts a contiguous shard of the sorted ids.

``OUT`` holds the datasets ``ids`` (ASCII), ``descriptors`` (float32 [n, d]), ``file_stamps`` (int64
[n, 2]: size in bytes and st_mtime_ns of each image file when it was read, what :func:`is_complete`
checks) and, for a class-per-folder tree (``ROOT/<class>/<image>``), ``classes`` (ASCII, one per row).
Unreadable images are skipped and listed, with their reasons, in the ``broken`` attribute (JSON; their
file stamps in ``broken_stamps``). Non-finite descriptors are refused, never written. With ``crops`` (query
files of the matching track) each image gives several adjacent rows with its id, the full view then each
crop of :func:`crop_boxes`, cut from the decoded image; the attribute ``views_per_id`` says how many.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import itertools
import json
import multiprocessing
import os
import queue
import struct
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from isc.io import InputError, atomic_path, provenance, query_phase, validate_ids
from isc.models import DescriptorModel

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's decompression-bomb threshold
DECODERS = ("torchvision", "pil")
# attributes that must be equal for two runs' descriptors to share a file
COMPATIBILITY_KEYS = ("model", "model_options", "model_fingerprint", "dimension", "image_size", "resize",
                      "mean", "std", "scales", "flip")
VIEW_KEYS = ("views_per_id",)  # must be equal too, but recorded only by files of several rows per image (crops)
H5_LIBVER = ("v108", "latest")  # dense attribute storage: the broken-image list can exceed 64 KB
MERGE_ROWS = 8192
PIXEL_CHUNK = 16  # images per task of a pixel-path decoding process: small, so that a short run uses them all
# we enforce our own pixel limit (max_pixels); torchvision's decoders still work, deprecated in favour of torchcodec
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


class BrokenImage(Exception):
    """An image that cannot be turned into a descriptor; the message is the reason recorded."""


class NoImageRead(InputError):
    """Not one of the images could be read: no descriptor file is written."""


# --------------------------------------------------------------------------------------- listings


def list_split_images(root: str | Path, split: str) -> dict[str, Path]:
    """``{id: path}`` of a split's images under ``ROOT/<split>_images/`` (the isc-download layout), by id."""
    folder = Path(root) / f"{split}_images"
    if Path(root).exists() and not Path(root).is_dir():
        raise InputError(f"{root}: is not a directory (the dataset root holding {split}_images/ is needed)")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: is not a directory (a folder of {split} images is needed)")
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (expected the {split} images under --data {root})")
    images = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() == ".jpg"
              and not p.name.startswith(".")}
    if not images:
        raise InputError(f"{folder}: no .jpg images")
    validate_ids(list(images), split, folder, what="image")
    return dict(sorted(images.items()))


def list_images(source: str | Path) -> dict[str, Path]:
    """``{id: path}`` of the images in a folder (searched recursively) or a list file (one path a line).

    In a folder an id is the path relative to it without its suffix (``cat/001``), and every entry with an
    image suffix counts: a directory named ``x.jpg``, a dangling link or a symlink loop is then listed as
    broken by the extraction, not skipped unseen. In a list file an id is the file's stem, a relative path
    is relative to the list file's folder, and a listed file that is missing is listed as broken.
    Two images with the same id are refused.
    """
    source = Path(source)
    if source.is_dir():
        paths = [(p.relative_to(source).with_suffix("").as_posix(), p) for p in sorted(source.rglob("*"))
                 if p.suffix.lower() in IMAGE_SUFFIXES
                 and not any(part.startswith(".") for part in p.relative_to(source).parts)]
    elif source.is_file():
        try:
            lines = [line.strip() for line in source.read_text().splitlines()]
        except UnicodeDecodeError:
            raise InputError(f"{source}: not a text file listing image paths (one a line)") from None
        paths = [(path.stem, path) for path in (source.parent / line for line in lines if line)]
    else:
        raise InputError(f"{source}: no such folder or list file")
    if not paths:
        raise InputError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)})")
    images: dict[str, Path] = {}
    for image_id, path in paths:
        if image_id in images:
            raise InputError(f"{source}: {images[image_id]} and {path} would both have id {image_id!r}")
        images[image_id] = path
    return dict(sorted(images.items()))


def image_classes(images: Mapping[str, Path]) -> dict[str, str] | None:
    """The class of each image of a class-per-folder tree (every id is ``<class>/<name>``), else None."""
    parts = {image_id: image_id.split("/") for image_id in images}
    if not parts or any(len(p) != 2 for p in parts.values()):
        return None
    return {image_id: p[0] for image_id, p in parts.items()}


def select_split_images(images: Mapping[str, Path], split: str, phase: int | None = None,
                        id_ranges: Sequence[str] = ()) -> dict[str, Path]:
    """The images of a split whose ids are in a competition phase (queries only) and in any of ``id_ranges``."""
    if phase is not None:
        if split != "query":
            raise InputError(f"a phase selects query images (Q00000-Q49999 or Q50000-Q99999), not {split} images")
        images = {i: path for i, path in images.items() if query_phase(i) == phase}
    if id_ranges:
        from isc.download import parse_id_range  # here: isc.download needs boto3, absent on some GPU machines

        ranges = [parse_id_range(text, split) for text in id_ranges]
        images = {i: path for i, path in images.items() if any(lo <= i <= hi for lo, hi in ranges)}
    if not images:
        wanted = " and ".join(filter(None, [f"phase {phase}" if phase else "", ", ".join(id_ranges)]))
        raise InputError(f"no {split} images in {wanted}")
    return dict(images)


# ----------------------------------------------------------------------------------- preprocessing


def resize_image(image: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize [3, H, W] (uint8 on the CPU, or float) to size x size, or short edge = size (antialiased)."""
    height, width = image.shape[-2:]
    if mode == "square":
        target = (size, size)
    else:
        scale = size / min(height, width)
        target = (max(1, round(height * scale)), max(1, round(width * scale)))
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


CROP_VIEWS = 1 + len(crop_boxes(3, 3))  # with crops: the full image, then each crop


def crop_views(image: torch.Tensor, crops: bool) -> list[torch.Tensor]:
    """The views of a decoded image [3, H, W]: itself, then with ``crops`` each of its :func:`crop_boxes`."""
    if not crops:
        return [image]
    return [image, *(image[:, top:bottom, left:right] for left, top, right, bottom in crop_boxes(image.shape[-1],
                                                                                                  image.shape[-2]))]


def draft_size(sizes: Sequence[int], crops: bool) -> int:
    """The smallest side to decode a JPEG at: a crop (2/3 of the image) still at least the largest view size."""
    return -(-max(sizes) * 3 // 2) if crops else max(sizes)


def view_sizes(model: DescriptorModel, scales: Sequence[float]) -> list[int]:
    """The image size of each test-time scale."""
    return [max(8, round(model.image_size * s)) for s in scales]


def _to_8_bits(image: Image.Image) -> Image.Image:
    """A single-channel image of more than 8 bits (Pillow modes I;16*, I, F) scaled to 8-bit grey.

    Pillow's own conversion clips every value above 255 to white. 16-bit modes, and 32-bit integers
    within 0-65535, are scaled from 0-65535; floats within 0-1 from 0-1; any other range is stretched
    from its minimum to its maximum.
    """
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and high <= 65535):
        low, high = 0.0, 65535.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(np.round(scaled).clip(0, 255).astype(np.uint8))


def _image_to_tensor(image: Image.Image) -> torch.Tensor:
    """An opened Pillow image as uint8 RGB [3, H, W]: EXIF rotation applied, more than 8 bits scaled down,
    transparency over white."""
    ImageOps.exif_transpose(image, in_place=True)  # in place: otherwise a copy of every unrotated image
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8_bits(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    # asarray is read-only, hence the copy; convert copies even an RGB image
    return torch.from_numpy(np.asarray(image if image.mode == "RGB" else image.convert("RGB")).copy()).permute(2, 0, 1)


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


def decode_with_pillow(source: Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                       draft_size: int | None = None) -> torch.Tensor:
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
        return _image_to_tensor(image)


# -------------------------------------------------------------------------------- Pillow pipeline


def _decode_views(path: Path, sizes: Sequence[int], resize: str, max_pixels: int,
                  crops: bool = False) -> tuple[list[torch.Tensor] | None, str | None]:
    """(the uint8 views [3, h, w], None) of an image file: of each of its :func:`crop_views`, one per size
    (view v at size s is item ``v * len(sizes) + s``); or (None, why it cannot be read)."""
    try:
        image = decode_with_pillow(path, max_pixels, draft_size=draft_size(sizes, crops))
    except BrokenImage as e:
        return None, str(e)
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"
    return [resize_image(view, size, resize) for view in crop_views(image, crops) for size in sizes], None


def _per_scale(views_of_images: Sequence[Sequence], n_sizes: int) -> list[list]:
    """Per size, the views of every image (image-major: an image's crop views adjacent) from
    :func:`_decode_views`' lists."""
    return [[views[k] for views in views_of_images for k in range(s, len(views), n_sizes)] for s in range(n_sizes)]


class _PillowImages(torch.utils.data.Dataset):
    """Each item: (position, [uint8 view per scale] or None, reason or None), decoded in a worker."""

    def __init__(self, paths: Sequence[Path], sizes: Sequence[int], resize: str, max_pixels: int, crops: bool):
        self.paths, self.sizes, self.resize, self.max_pixels = list(paths), list(sizes), resize, max_pixels
        self.crops = crops

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int):
        return position, *_decode_views(self.paths[position], self.sizes, self.resize, self.max_pixels, self.crops)


def _as_list(batch: list) -> list:
    return batch


def _pillow_batches(paths: Sequence[Path], model: DescriptorModel, sizes: Sequence[int], batch_size: int,
                    workers: int, device: torch.device, max_pixels: int, crops: bool) -> Iterator[tuple]:
    loader = torch.utils.data.DataLoader(
        _PillowImages(paths, sizes, model.resize, max_pixels, crops), batch_size=batch_size, num_workers=workers,
        collate_fn=_as_list, pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    for batch in loader:
        ok = [(position, views) for position, views, _ in batch if views is not None]
        broken = {position: reason for position, _, reason in batch if reason is not None}
        per_scale = [[view.to(device, non_blocking=True) for view in views]
                     for views in _per_scale([views for _, views in ok], len(sizes))]
        yield [p for p, _ in ok], per_scale, broken


# --------------------------------------------------------------------------- torchvision pipeline


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


def _read_for_decode(path: Path, max_pixels: int, draft_size: int) -> torch.Tensor:
    """Read a file: its bytes (uint8 1-d) when nvJPEG can decode it, else a Pillow-decoded image."""
    data = path.read_bytes()
    if not data:
        raise BrokenImage("empty file (0 bytes)")
    size = nvjpeg_size(data)
    # CMYK, PNG, alpha, palettes, EXIF rotations (nvJPEG ignores them) and size errors go through Pillow
    if size is not None and 0 < size[0] * size[1] <= max_pixels:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_with_pillow(data, max_pixels, draft_size)


def _decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | str]:
    """Decode JPEG bytes as one batch; if the batch fails, one by one (a string: why that image failed)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not encoded:
        return []  # a batch without a JPEG: decode_jpeg refuses an empty list
    options = {"mode": ImageReadMode.RGB, "device": device}
    try:
        return list(decode_jpeg(encoded, **options))
    except RuntimeError:
        decoded: list[torch.Tensor | str] = []
        for data in encoded:
            try:
                decoded.append(decode_jpeg(data, **options))
            except RuntimeError as e:
                decoded.append(f"cannot decode ({str(e).splitlines()[0].split(', ')[-1]})")
        return decoded


def _torchvision_batches(paths: Sequence[Path], model: DescriptorModel, sizes: Sequence[int], batch_size: int,
                         workers: int, device: torch.device, max_pixels: int, crops: bool) -> Iterator[tuple]:
    readers = ThreadPoolExecutor(max(1, workers), thread_name_prefix="isc-read")
    batches = [range(start, min(start + batch_size, len(paths))) for start in range(0, len(paths), batch_size)]
    # keep a few batches of reads in flight ahead of decoding
    pending = [[readers.submit(_read_for_decode, paths[i], max_pixels, draft_size(sizes, crops)) for i in batch]
               for batch in batches[:4]]
    try:
        for k, batch in enumerate(batches):
            if k + 4 < len(batches):
                pending.append([readers.submit(_read_for_decode, paths[i], max_pixels, draft_size(sizes, crops))
                                for i in batches[k + 4]])
            images: dict[int, torch.Tensor] = {}
            broken: dict[int, str] = {}
            for position, future in zip(batch, pending.pop(0), strict=True):
                try:
                    images[position] = future.result()
                except BrokenImage as e:
                    broken[position] = str(e)
                except OSError as e:
                    broken[position] = f"cannot read ({e.strerror or e})"
            jpegs = [p for p, t in images.items() if t.ndim == 1]
            for position, decoded in zip(jpegs, _decode_jpegs([images[p] for p in jpegs], device), strict=True):
                if isinstance(decoded, str):
                    del images[position]
                    broken[position] = decoded
                else:
                    images[position] = decoded
            ok = sorted(images)
            per_scale = [[resize_image(view, size, model.resize) for p in ok
                          for view in crop_views(images[p].to(device, non_blocking=True), crops)] for size in sizes]
            yield ok, per_scale, broken
    finally:
        readers.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------ pixel path


def _mean_of_views(outputs: list[np.ndarray], normalized: bool) -> np.ndarray:
    """The average of the descriptors of an image's views (scales, flips), unit length again if ``normalized``."""
    if len(outputs) == 1:
        return outputs[0]
    mean = sum(outputs[1:], outputs[0]) / np.float32(len(outputs))
    if normalized:
        mean = mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), np.float32(1e-12))
    return mean


def _decode_pixels(paths: Sequence[Path], sizes: Sequence[int], resize: str, max_pixels: int, flip: bool,
                   describe: Callable[[np.ndarray], np.ndarray] | None, normalized: bool,
                   crops: bool = False) -> list[tuple[list[np.ndarray] | np.ndarray | None, str | None]]:
    """Per image file: (uint8 pixels [h, w, 3] of each view and size, ordered as :func:`_decode_views`, None),
    or with ``describe`` (the descriptors it makes of them, one per crop view averaged over sizes and flips,
    concatenated, None), or (None, why it cannot be read)."""
    results = []
    for path in paths:
        views, reason = _decode_views(path, sizes, resize, max_pixels, crops)
        if views is None:
            results.append((None, reason))
            continue
        pixels = [view.permute(1, 2, 0).numpy() for view in views]
        if describe is not None:
            per_crop = [pixels[start:start + len(sizes)] for start in range(0, len(pixels), len(sizes))]
            pixels = np.concatenate([
                _mean_of_views([describe(v) for view in crop for v in ((view, view[:, ::-1]) if flip else (view,))],
                               normalized) for crop in per_crop], axis=-1)
        results.append((pixels, None))
    return results


def _single_threaded_torch() -> None:
    torch.set_num_threads(1)  # a forked OpenMP pool would hang, and the processes already fill the cores


def _in_order(function: Callable, chunks: Sequence, workers: int, ahead: int) -> Iterator:
    """``function(chunk)`` of each chunk, in order, computed by ``workers`` processes at most ``ahead`` chunks
    ahead (0 workers: in this process)."""
    if workers == 0 or not chunks:
        yield from map(function, chunks)
        return
    # fork: the workers start at once, without importing torch again
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    pool = ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context, initializer=_single_threaded_torch)
    try:
        pending = collections.deque(pool.submit(function, chunk) for chunk in chunks[:ahead])
        for chunk in itertools.chain(chunks[ahead:], itertools.repeat(None, len(pending))):
            result = pending.popleft().result()
            if chunk is not None:
                pending.append(pool.submit(function, chunk))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _embed_pixels(model: DescriptorModel, per_scale: list[list[np.ndarray]], flip: bool,
                  device: torch.device) -> np.ndarray:
    """Descriptors [n, D] of images given as uint8 pixels per scale: images of equal shape stacked into one
    batch (the groups of :func:`_normalised_groups`), views averaged as :func:`_embed` does."""
    outputs = []
    for views in per_scale:
        shapes: dict[tuple, list[int]] = {}
        for i, view in enumerate(views):
            shapes.setdefault(view.shape, []).append(i)
        batches = [(positions, np.stack([views[i] for i in positions])) for positions in shapes.values()]
        for flipped in (False, True) if flip else (False,):
            out = None
            for positions, batch in batches:
                descriptors = model.embed_pixels(batch[:, :, ::-1] if flipped else batch, device)
                if out is None:
                    out = np.empty((len(views), descriptors.shape[1]), np.float32)
                out[positions] = descriptors
            outputs.append(out)
    return _mean_of_views(outputs, model.normalized)


def _pixel_batches(paths: Sequence[Path], model: DescriptorModel, sizes: Sequence[int], batch_size: int,
                   workers: int, device: torch.device, max_pixels: int, flip: bool,
                   crops: bool = False) -> Iterator[tuple[list[int], np.ndarray | None, dict[int, str]]]:
    """(positions, descriptors, broken) per batch of a model that takes uint8 pixels: worker processes decode
    (and describe, for a per-image model such as PDQ), this process runs the model on stacked pixels.
    With ``crops`` an image's row is its views' descriptors side by side."""
    describe = model.per_image_descriptor
    decode = functools.partial(_decode_pixels, sizes=tuple(sizes), resize=model.resize, max_pixels=max_pixels,
                               flip=flip, describe=describe, normalized=model.normalized, crops=crops)
    chunk = min(batch_size, PIXEL_CHUNK)
    chunks = [paths[start:start + chunk] for start in range(0, len(paths), chunk)]
    # a few batches decoded ahead, and every process busy
    decoded = _in_order(decode, chunks, workers, max(2 * workers, 2 * batch_size // chunk))
    with contextlib.closing(decoded):
        results = itertools.chain.from_iterable(decoded)
        for start in range(0, len(paths), batch_size):
            batch = list(itertools.islice(results, batch_size))
            ok = [k for k, (pixels, _) in enumerate(batch) if pixels is not None]
            broken = {start + k: reason for k, (_, reason) in enumerate(batch) if reason is not None}
            if not ok:
                descriptors = None
            elif describe is not None:
                descriptors = np.stack([batch[k][0] for k in ok])
            else:
                per_scale = _per_scale([batch[k][0] for k in ok], len(sizes))
                descriptors = _embed_pixels(model, per_scale, flip, device).reshape(len(ok), -1)
            yield [start + k for k in ok], descriptors, broken


def _torch_batches(paths: Sequence[Path], model: DescriptorModel, sizes: Sequence[int], batch_size: int,
                   workers: int, device: torch.device, max_pixels: int, flip: bool, decoder: str,
                   half: bool, crops: bool = False) -> Iterator[tuple[list[int], np.ndarray | None, dict[int, str]]]:
    """(positions, descriptors, broken) per batch, through a torch pipeline: float batches on ``device``.
    With ``crops`` an image's row is its views' descriptors side by side."""
    pipeline = _torchvision_batches if decoder == "torchvision" else _pillow_batches
    views = pipeline(paths, model, sizes, batch_size, workers, device, max_pixels, crops)
    n_views = CROP_VIEWS if crops else 1
    dtype = torch.float16 if half else torch.float32
    batches = ((positions, _normalised_groups(model, per_scale, dtype, device.type == "cuda"), broken)
               for positions, per_scale, broken in views)
    if decoder == "torchvision":
        batches = _in_background(batches, device)  # decode, resize, normalise beside inference
    for positions, grouped, broken in batches:
        yield positions, (_embed(model, grouped, len(positions) * n_views, flip).reshape(len(positions), -1)
                          if positions else None), broken


# ------------------------------------------------------------------------------------- inference


def _normalised_groups(model: DescriptorModel, per_scale: list[list[torch.Tensor]], dtype: torch.dtype,
                       channels_last: bool) -> list[list[tuple[list[int], torch.Tensor]]]:
    """Per scale, images of equal shape stacked and normalised: [(positions in the batch, [b, 3, h, w])]."""
    if not per_scale or not per_scale[0]:
        return []
    device = per_scale[0][0].device
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1) * 255
    grouped = []
    for views in per_scale:
        shapes: dict[tuple, list[int]] = {}
        for i, view in enumerate(views):
            shapes.setdefault(tuple(view.shape), []).append(i)
        groups = []
        for positions in shapes.values():
            batch = ((torch.stack([views[i] for i in positions]).float() - mean) / std).to(dtype)
            groups.append((positions, batch.contiguous(memory_format=torch.channels_last) if channels_last
                           else batch))
        grouped.append(groups)
    return grouped


@torch.inference_mode()
def _embed(model: DescriptorModel, grouped: list[list[tuple[list[int], torch.Tensor]]], n: int,
           flip: bool) -> np.ndarray:
    """Descriptors [n, D] of a prepared batch, averaged over scales (and flips), float32 on the CPU."""
    total = None
    for groups in grouped:
        for flipped in (False, True) if flip else (False,):
            out = None
            for positions, batch in groups:
                descriptors = model(batch.flip(-1) if flipped else batch).float()
                if out is None:
                    out = descriptors.new_zeros((n, descriptors.shape[1]))
                out[positions] = descriptors
            total = out if total is None else total + out
    if len(grouped) > 1 or flip:
        total = total / (len(grouped) * (2 if flip else 1))
        if model.normalized:
            total = F.normalize(total, dim=1)
    return total.cpu().numpy()


def _in_background(batches: Iterator[tuple], device: torch.device, depth: int = 2) -> Iterator[tuple]:
    """Run a batch generator in a thread (its own CUDA stream on a GPU), ``depth`` batches ahead."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def produce():
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for item in batches:
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                    while not stop.is_set():
                        try:
                            slots.put((item, event), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            slots.put((None, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            slots.put((e, None))

    thread = threading.Thread(target=produce, name="isc-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, event = slots.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            if event is not None:
                consumer = torch.cuda.current_stream(device)
                consumer.wait_event(event)
                for groups in item[1]:
                    for _, batch in groups:
                        batch.record_stream(consumer)  # memory made on the producer's stream, used on ours
            yield item
    finally:
        stop.set()
        thread.join()


# ------------------------------------------------------------------------- partial logs and the merge


class PartialLog:
    """The rows extracted so far by one rank: an append-only log that a kill -9 cannot corrupt.

    A header line (``isc-partial/2`` and the extraction config as JSON), then one record per batch, written
    with a single ``write``: kind (``D`` descriptors, ``B`` the broken images so far), payload length and
    CRC-32, payload. A ``D`` payload is n and the id length (uint32), the n ids (ASCII, NUL-padded), n ×
    (size, st_mtime_ns) of the image files as int64, and n × views × dim float32 (``views_per_id`` of the
    config, 1 without it: one row holds all the views of an image, so that an image is done or not). A ``B`` payload is JSON:
    ``{"reasons": {id: reason}, "stamps": {id: [size, st_mtime_ns]}}``. Reading stops at the first torn
    or damaged record, which a resumed run cuts off and writes again. Format 1 (no file stamps) is refused.
    """

    MAGIC = b"isc-partial/2\n"
    RECORD = struct.Struct("<cQI")  # kind, payload length, CRC-32 of the payload
    COUNTS = struct.Struct("<II")  # rows, id length

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: dict[str, object] = {}
        self.ids: list[str] = []
        self.stamps = np.zeros((0, 2), np.int64)  # (size, st_mtime_ns) of each row's image file
        self.broken: dict[str, str] = {}
        self.broken_stamps: dict[str, list[int]] = {}
        self.size = 0  # bytes of intact header and records
        self._data = np.memmap(path, np.uint8, "r") if path.stat().st_size else np.zeros(0, np.uint8)
        self._blocks: list[tuple[int, int, int]] = []  # (first row, rows, byte offset of the descriptors)
        self._parse()

    @classmethod
    def read(cls, path: str | Path) -> PartialLog:
        return cls(Path(path))

    def _parse(self) -> None:
        data = self._data
        end_of_header = bytes(data[:65536]).find(b"\n", len(self.MAGIC))
        if bytes(data[:len(self.MAGIC)]) != self.MAGIC or end_of_header < 0:
            first_line = bytes(data[:64]).split(b"\n")[0]
            if first_line.startswith(b"isc-partial/"):
                raise InputError(f"{self.path}: format {first_line.decode(errors='replace')} of an older "
                                 f"isc-extract, without file stamps")
            raise InputError(f"{self.path}: not a partial file of isc-extract")
        self.config = json.loads(bytes(data[len(self.MAGIC):end_of_header]))
        position = end_of_header + 1
        stamps = []
        while position + self.RECORD.size <= len(data):
            kind, length, crc = self.RECORD.unpack_from(data, position)
            start, stop = position + self.RECORD.size, position + self.RECORD.size + length
            if stop > len(data) or zlib.crc32(data[start:stop]) != crc:
                break  # torn by a kill: everything before it is intact
            if kind == b"D":
                rows, id_length = self.COUNTS.unpack_from(data, start)
                ids_at = start + self.COUNTS.size
                stamps_at = ids_at + rows * id_length
                ids = np.frombuffer(data, f"S{id_length}", rows, ids_at)
                stamps.append(np.frombuffer(data, np.int64, rows * 2, stamps_at).reshape(rows, 2))
                self._blocks.append((len(self.ids), rows, stamps_at + rows * 16))
                self.ids += [i.decode("ascii") for i in ids]
            elif kind == b"B":
                broken = json.loads(bytes(data[start:stop]))
                self.broken, self.broken_stamps = broken["reasons"], broken["stamps"]
            position = stop
        self.size = position
        self.stamps = np.concatenate(stamps) if stamps else self.stamps

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """The descriptors of the given row numbers, in that order: [rows, views × dim]."""
        dim = int(self.config["dimension"]) * int(self.config.get("views_per_id", 1))
        out = np.empty((len(indices), dim), np.float32)
        firsts = np.array([first for first, _, _ in self._blocks])
        block_of = np.searchsorted(firsts, indices, side="right") - 1
        for block in np.unique(block_of):
            first, rows, offset = self._blocks[block]
            chosen = block_of == block
            values = np.frombuffer(self._data, np.float32, rows * dim, offset).reshape(rows, dim)
            out[chosen] = values[indices[chosen] - first]
        return out


class _PartialWriter:
    """Appends batches to a rank's :class:`PartialLog`; reopens the log of a killed run if its model matches."""

    def __init__(self, path: Path, config: dict[str, object], resume: bool):
        self.path = path
        self.done: dict[str, tuple[int, int]] = {}  # id -> file stamp of its last row
        log = self._reopen(config) if resume and path.exists() else None
        if log is None:
            with atomic_path(path) as tmp:
                tmp.write_bytes(PartialLog.MAGIC + json.dumps(config).encode() + b"\n")
        else:
            self.done = dict(zip(log.ids, map(tuple, log.stamps.tolist()), strict=True))
            os.truncate(path, log.size)  # drop a torn last record
        self.file = open(path, "ab")  # noqa: SIM115 (closed by close())

    def _reopen(self, config: dict[str, object]) -> PartialLog | None:
        try:
            log = PartialLog.read(self.path)
        except (InputError, ValueError) as e:
            warnings.warn(f"unreadable partial file ({e}), starting again", stacklevel=3)
            return None
        for key in (*COMPATIBILITY_KEYS, *VIEW_KEYS):
            if log.config.get(key) != config.get(key):
                raise InputError(f"{self.path}: holds descriptors made with {key}={log.config.get(key)!r}, this run "
                                 f"has {config.get(key)!r}; delete it or rerun with --restart")
        return log

    def _write(self, kind: bytes, payload: bytes) -> None:
        self.file.write(PartialLog.RECORD.pack(kind, len(payload), zlib.crc32(payload)) + payload)
        self.file.flush()

    def append(self, ids: Sequence[str], descriptors: np.ndarray, stamps: Sequence[tuple[int, int]]) -> None:
        encoded = np.array(ids, dtype="S")
        self._write(b"D", PartialLog.COUNTS.pack(len(ids), encoded.itemsize) + encoded.tobytes()
                    + np.array(stamps, np.int64).reshape(len(ids), 2).tobytes()
                    + np.ascontiguousarray(descriptors, np.float32).tobytes())

    def record_broken(self, broken: Mapping[str, str], stamps: Mapping[str, tuple[int, int]]) -> None:
        self._write(b"B", json.dumps({"reasons": dict(broken), "stamps": {i: stamps[i] for i in broken}}).encode())

    def close(self) -> None:
        self.file.close()


def _partial_path(output: Path, rank: int, world: int) -> Path:
    return output.with_name(f"{output.name}.rank{rank}-of-{world}.partial")


def _merge(parts: Sequence[Path], output: Path, shards: Sequence[Sequence[str]], attrs: dict[str, object],
           classes: Mapping[str, str] | None) -> tuple[int, dict[str, str]]:
    """Write each rank's rows of its shard of ids into ``output``, in id order: (rows, broken images).

    A log may hold several rows of an id (its image changed after a killed run): the last is the one made
    from the file as it is now. A log row of several views (``views_per_id``) becomes that many adjacent rows
    of the id (with its file stamp and class). NoImageRead, and nothing written, when every image is broken.
    """
    logs = [PartialLog.read(p) for p in parts]
    broken: dict[str, str] = {}
    broken_stamps: dict[str, list[int]] = {}
    chosen: list[tuple[str, int, int]] = []  # (id, log, row); the shards are consecutive runs of sorted ids
    for k, (log, shard) in enumerate(zip(logs, shards, strict=True)):
        last_row = {image_id: row for row, image_id in enumerate(log.ids)}
        for image_id in shard:
            if image_id in log.broken:
                broken[image_id], broken_stamps[image_id] = log.broken[image_id], log.broken_stamps[image_id]
            elif image_id in last_row:
                chosen.append((image_id, k, last_row[image_id]))
            else:
                raise InputError(f"{parts[k]}: no row of {image_id}; delete the partial files and rerun")
    if not chosen:
        first = next(iter(broken))
        raise NoImageRead(f"none of the {len(broken)} images could be read ({first}: {broken[first]}"
                          f"{', ...' if len(broken) > 1 else ''}); {output} not written")
    views = int(attrs.get("views_per_id", 1))
    ids = np.array([image_id for image_id, _, _ in chosen], dtype="S")
    source = np.array([k for _, k, _ in chosen])
    rows = np.array([row for _, _, row in chosen])
    stamps = np.empty((len(chosen), 2), np.int64)
    for k, log in enumerate(logs):
        stamps[source == k] = log.stamps[rows[source == k]]
    dim = int(attrs["dimension"])
    n_rows = len(ids) * views
    with atomic_path(output) as tmp, h5py.File(tmp, "w", libver=H5_LIBVER) as out:
        out.create_dataset("ids", data=np.repeat(ids, views))
        target = out.create_dataset("descriptors", shape=(n_rows, dim), dtype=np.float32,
                                    chunks=(max(1, min(4096, n_rows, 2 ** 20 // dim)), dim))
        for start in range(0, len(ids), MERGE_ROWS):
            block = np.empty((min(MERGE_ROWS, len(ids) - start), views * dim), np.float32)
            for k, log in enumerate(logs):
                mine = np.flatnonzero(source[start:start + MERGE_ROWS] == k)
                if len(mine):
                    block[mine] = log.rows(rows[start + mine])
            target[start * views:(start + len(block)) * views] = block.reshape(-1, dim)
        out.create_dataset("file_stamps", data=np.repeat(stamps, views, axis=0)).attrs["columns"] = "size,mtime_ns"
        if classes is not None:
            out.create_dataset("classes", data=np.repeat(np.array([classes[image_id] for image_id, _, _ in chosen],
                                                                  dtype="S"), views))
        for key, value in {**attrs, "broken": json.dumps(broken), "n_broken": len(broken),
                           "broken_stamps": json.dumps(broken_stamps)}.items():
            out.attrs[key] = value
    return len(ids), broken


# ------------------------------------------------------------------------------------------ engine


def check_device(device: str | None) -> None:
    """Refuse, as InputError, a device other than cpu, cuda and cuda:N, or a GPU that torch cannot see."""
    if device is None:
        return
    kind, colon, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (colon and (kind == "cpu" or not index.isdigit())):
        raise InputError(f"device {device!r}: not a device (cpu, cuda or cuda:N)")
    visible = torch.cuda.device_count() if kind == "cuda" and torch.cuda.is_available() else 0
    if kind == "cuda" and not visible:
        raise InputError(f"device {device!r}: no GPU is visible to torch (use --device cpu)")
    if kind == "cuda" and colon and int(index) >= visible:
        raise InputError(f"device {device!r}: torch sees {visible} GPU(s), cuda:0 to cuda:{visible - 1}")


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, st_mtime_ns) of an image file, what says it changed; (-1, -1) when it cannot be stat'ed."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _distributed(device: str | None) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, this rank's device, whether we started the process group) under torchrun."""
    import torch.distributed as dist

    check_device(device)
    want_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    started = False
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if want_cuda else "gloo")
        started = True
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() \
        else (0, 1)
    if want_cuda:
        chosen = torch.device(device if device and ":" in device else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device(device or "cpu")
    return rank, world, chosen, started


def extraction_config(model: DescriptorModel, scales: Sequence[float] = (1.0,), flip: bool = False,
                      crops: bool = False) -> dict[str, object]:
    """The attributes that say how a descriptor file was made: the model's, plus test-time augmentation;
    with ``crops``, ``views_per_id``: the rows of each image (its full view, then each crop)."""
    return {**model.config(), "scales": json.dumps(list(map(float, scales))), "flip": bool(flip),
            **({"views_per_id": CROP_VIEWS} if crops else {})}


def is_complete(output: str | Path, images: Mapping[str, Path], config: Mapping[str, object]) -> bool:
    """Whether ``output`` holds descriptors of exactly ``images`` (or lists them as broken), made as ``config``
    says from the image files as they are now (same size and modification time; a file without these
    ``file_stamps``, written by an older isc-extract, is never complete)."""
    output = Path(output)
    if not output.is_file() or not h5py.is_hdf5(output):
        return False
    with h5py.File(output, "r") as f:
        if any(name not in f for name in ("ids", "descriptors", "file_stamps")):
            return False
        attrs = {key: value.item() if isinstance(value, np.generic) else value for key, value in f.attrs.items()}
        recorded = dict(zip((x.decode("ascii") for x in f["ids"][()]), map(tuple, f["file_stamps"][()].tolist()),
                            strict=True))
    if any(attrs.get(key) != config.get(key) for key in (*COMPATIBILITY_KEYS, *VIEW_KEYS)):
        return False
    recorded.update((image_id, tuple(stamp)) for image_id, stamp in json.loads(attrs.get("broken_stamps", "{}")).items())
    return recorded.keys() == images.keys() and all(recorded[i] == file_stamp(path) for i, path in images.items())


def _refuse_non_finite(descriptors: np.ndarray, ids: Sequence[str], half: bool) -> None:
    """InputError naming the images whose descriptors hold NaN or infinity: they are never written."""
    bad = [image_id for image_id, finite in zip(ids, np.isfinite(descriptors).all(axis=1), strict=True) if not finite]
    if bad:
        hint = "; float16 inference overflows more easily, try --fp32" if half else ""
        raise InputError(f"the model gave NaN or infinite descriptors for {len(bad)} image(s): "
                         f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}{hint}")


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def extract(
    images: Mapping[str, Path] | Sequence[str | Path],
    output: str | Path,
    model: DescriptorModel,
    *,
    batch_size: int = 64,
    device: str | None = None,
    workers: int | None = None,
    decoder: str | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crops: bool = False,
    half: bool | None = None,
    strict: bool = False,
    resume: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    quiet: bool = False,
    attrs: Mapping[str, object] | None = None,
    classes: Mapping[str, str] | None = None,
    max_broken: float = 0.01,
) -> dict[str, object]:
    """Extract the descriptors of ``images`` (``{id: path}``, or paths whose stems are the ids) to ``output``.

    ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda when available); ``decoder``: ``torchvision``
    (default on cuda) or ``pil`` (default on the CPU, and for a model that takes uint8 pixels, which it then
    gets as numpy arrays: the pixel path); ``workers``: reading threads (0 counts as 1) or decoding processes
    (0: decode in this process; default up to 8, all cores on the pixel path); ``half``: float16 inference
    (default on cuda);
    ``scales``/``flip``: test-time augmentation, descriptors averaged. ``crops``: each image gives
    :data:`CROP_VIEWS` adjacent rows with its id, its full view then each of its :func:`crop_boxes` (a query
    file for the matching track; the attribute ``views_per_id`` says so). ``strict``: the first broken image
    raises InputError. ``resume``: continue from the partial file of a killed run, extracting again the
    images changed since. ``classes``: ``{id: class}``, written as the dataset ``classes``. A warning when
    more than ``max_broken`` of the images are broken; NoImageRead when all are. Returns a summary
    (counts, broken images with reasons, images/s, ``pixels``: whether the pixel path ran).
    """
    items = dict(images) if isinstance(images, Mapping) else {Path(p).stem: Path(p) for p in images}
    if len(items) != len(images):
        raise InputError("two images have the same id (file stem)")
    if not items:
        raise InputError("no images to extract")
    non_ascii = next((i for i in items if not i.isascii()), None)
    if non_ascii is not None:
        raise InputError(f"image id {non_ascii!r} is not ASCII (descriptor files store ASCII ids)")
    if decoder not in (None, *DECODERS):
        raise InputError(f"unknown decoder {decoder!r} (choose from {', '.join(DECODERS)})")
    if not scales or min(scales) <= 0:
        raise InputError(f"scales must be positive, got {list(scales)}")
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise InputError(f"workers must be 0 or more, got {workers}")
    if max_pixels < 1:
        raise InputError(f"the pixel limit must be at least 1, got {max_pixels}")
    if classes is not None and (classes.keys() != items.keys() or not all(c.isascii() for c in classes.values())):
        raise InputError("classes must give one ASCII class name for every image id")
    output = Path(output)
    ids = sorted(items)
    rank, world, torch_device, started = _distributed(device)
    on_gpu = torch_device.type == "cuda"
    decoder = decoder or ("torchvision" if on_gpu and not model.takes_pixels else "pil")
    pixels = decoder == "pil" and model.takes_pixels
    if workers is None:
        cores = os.cpu_count() or 1
        # the pixel path's processes do all the decoding (and PDQ's hashing): every core, shared by local ranks
        workers = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if pixels \
            else min(16 if decoder == "torchvision" else 8, cores)
    half = on_gpu if half is None else half
    sizes = view_sizes(model, scales)
    config = extraction_config(model, scales, flip, crops)
    shards = [ids[r * len(ids) // world:(r + 1) * len(ids) // world] for r in range(world)]
    shard = shards[rank]
    stamps = {i: file_stamp(items[i]) for i in shard}  # before reading: a file changed later is seen as changed
    partial = _PartialWriter(_partial_path(output, rank, world), config, resume)
    todo = [i for i in shard if partial.done.get(i) != stamps[i]]
    model = model.to(torch_device, memory_format=torch.channels_last if on_gpu else torch.preserve_format)
    model = model.half() if half else model.float()
    model.eval()
    paths = [items[i] for i in todo]
    batches = _pixel_batches(paths, model, sizes, batch_size, workers, torch_device, max_pixels, flip, crops) \
        if pixels else _torch_batches(paths, model, sizes, batch_size, workers, torch_device, max_pixels, flip,
                                      decoder, half, crops)
    broken: dict[str, str] = {}
    start = time.perf_counter()
    try:
        # closing: a failure stops the decoding processes or threads now, not when its traceback is freed
        with contextlib.closing(batches), tqdm(total=len(shard), initial=len(shard) - len(todo), unit="img",
                                               disable=quiet, desc=f"extract {output.name}"
                                               + (f" [rank {rank}/{world}]" if world > 1 else "")) as bar:
            for positions, descriptors, batch_broken in batches:
                for position, reason in batch_broken.items():
                    if strict:
                        raise InputError(f"{items[todo[position]]}: {reason}")
                    broken[todo[position]] = reason
                if positions:
                    batch_ids = [todo[p] for p in positions]
                    _refuse_non_finite(descriptors, batch_ids, half)
                    partial.append(batch_ids, descriptors, [stamps[i] for i in batch_ids])
                if batch_broken:
                    partial.record_broken(broken, stamps)
                bar.update(len(positions) + len(batch_broken))
        partial.record_broken(broken, stamps)
    finally:
        partial.close()
    seconds = time.perf_counter() - start
    summary: dict[str, object] = {"output": str(output), "images": len(ids), "rank": rank, "world_size": world,
                                  "processed": len(todo), "resumed": len(shard) - len(todo),
                                  "seconds": round(seconds, 3),
                                  "images_per_second": round(len(todo) / seconds, 1) if seconds else None,
                                  "model": model.name, "dimension": model.dim, "device": str(torch_device),
                                  "decoder": decoder, "pixels": pixels,
                                  "views_per_id": CROP_VIEWS if crops else 1}
    _barrier(world)
    try:
        if rank == 0:
            summary.update(_finish(output, world, shards, provenance(**config, **(attrs or {}), n_images=len(ids),
                                                                       decoder=decoder), classes, max_broken))
        else:
            summary.update(broken=broken)
    finally:
        _barrier(world)  # reached by every rank even when rank 0 fails, so that none waits forever
        if started:
            torch.distributed.destroy_process_group()
    return summary


def _finish(output: Path, world: int, shards: Sequence[Sequence[str]], attrs: dict[str, object],
            classes: Mapping[str, str] | None, max_broken: float) -> dict[str, object]:
    """Merge the ranks' partial logs into ``output`` and delete them; warn when too many images are broken."""
    parts = [_partial_path(output, r, world) for r in range(world)]
    try:
        extracted, broken = _merge(parts, output, shards, attrs, classes)
    except NoImageRead:
        for part in parts:
            part.unlink()  # they hold nothing but the reasons, which the error gives
        raise
    for part in parts:
        part.unlink()
    images = extracted + len(broken)
    if len(broken) > max_broken * images:
        warnings.warn(f"{output}: {len(broken):,} of {images:,} images ({len(broken) / images:.1%}) are broken, "
                      f"more than {max_broken:.1%} (listed in its attribute 'broken')", stacklevel=3)
    return {"extracted": extracted, "broken": broken}
