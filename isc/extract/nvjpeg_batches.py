"""The ``torchvision`` decoder's batches: files read (:func:`read_for_decode`: bytes for nvJPEG, Pillow for what
it cannot take), JPEGs of a batch decoded together by ``torchvision.io.decode_jpeg`` (nvJPEG on a GPU), views cut
and resized on the device (:func:`views_of_batch`); in this process with reading threads
(:func:`torchvision_batches`) or in worker processes (:mod:`isc.extract.decode_workers`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from isc.core.images import BrokenImage, broken_reason
from isc.extract.decode import (
    crop_views,
    cut_views,
    decode_for_views,
    nvjpeg_size,
    resize_image,
)
from isc.extract.plan import ExtractionPlan
from isc.models import DescriptorModel

# torchvision's decoders still work, deprecated in favour of torchcodec
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)



def read_for_decode(path: Path, max_pixels: int, sizes: Sequence[int],
                    crops: bool = False, grid: int = 0) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Read a file: its bytes (uint8 1-d) when nvJPEG can decode it, else Pillow-decoded images
    (:func:`isc.extract.decode.decode_for_views`: the full view's, the crops')."""
    data = path.read_bytes()
    if not data:
        raise BrokenImage("empty file (0 bytes)")
    size = nvjpeg_size(data)
    # CMYK, PNG, alpha, palettes, EXIF rotations (nvJPEG ignores them) and size errors go through Pillow
    if size is not None and 0 < size[0] * size[1] <= max_pixels:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    full, crop_source = decode_for_views(data, max_pixels, sizes, crops, grid)
    image = torch.from_numpy(full)
    return image, image if crop_source is full else torch.from_numpy(crop_source)


def decode_jpegs(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | str]:
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


def _to_device(image: torch.Tensor, crop_source: torch.Tensor,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, crop source) on ``device``, one copy when they are the same tensor."""
    moved = image.to(device, non_blocking=True)
    return moved, moved if crop_source is image else crop_source.to(device, non_blocking=True)


def views_of_batch(reads: Iterable[tuple[int, Future]], sizes: Sequence[int], resize: str, device: torch.device,
                   crops: bool, grid: int = 0, cut: bool = False,
                   ) -> tuple[list[int], list[list[torch.Tensor]], dict[int, str]]:
    """(positions decoded, their views per scale, broken: position -> reason) of a batch from its files'
    :func:`read_for_decode` futures: JPEGs decoded together on ``device``, views cut and resized (``cut``: cut
    from the resized full view, :func:`isc.extract.decode.cut_views`)."""
    images: dict[int, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}
    broken: dict[int, str] = {}
    for position, future in reads:
        try:
            images[position] = future.result()
        except (BrokenImage, OSError) as e:
            broken[position] = broken_reason(e)
    jpegs = [p for p, t in images.items() if isinstance(t, torch.Tensor)]
    for position, decoded in zip(jpegs, decode_jpegs([images[p] for p in jpegs], device), strict=True):
        if isinstance(decoded, str):
            del images[position]
            broken[position] = decoded
        else:
            images[position] = decoded, decoded  # decoded whole: the full view and the crops alike
    ok = sorted(images)
    on_device = {p: _to_device(*images[p], device) for p in ok}
    if crops and cut:
        return ok, [[view for p in ok for view in cut_views(resize_image(on_device[p][0], size, resize), grid)]
                    for size in sizes], broken
    per_scale = [[resize_image(view, size, resize) for p in ok
                  for view in crop_views(on_device[p][0], crops, on_device[p][1], grid)] for size in sizes]
    return ok, per_scale, broken


def torchvision_batches(paths: Sequence[Path], model: DescriptorModel, plan: ExtractionPlan) -> Iterator[tuple]:
    """(positions, views per scale, broken) per batch: ``plan.workers`` reading threads a few batches ahead,
    each batch decoded by :func:`views_of_batch` in this process."""
    sizes, batch_size, max_pixels, crops = plan.sizes, plan.batch_size, plan.max_pixels, plan.crops
    device = torch.device(plan.device)
    readers = ThreadPoolExecutor(max(1, plan.workers), thread_name_prefix="isc-read")
    batches = [range(start, min(start + batch_size, len(paths))) for start in range(0, len(paths), batch_size)]
    def submit(batch: range) -> list:
        # views cut from the full view need no second decoding for the crops
        return [readers.submit(read_for_decode, paths[i], max_pixels, sizes, crops and not plan.cut, plan.grid)
                for i in batch]

    # keep a few batches of reads in flight ahead of decoding
    pending = [submit(batch) for batch in batches[:4]]
    try:
        for k, batch in enumerate(batches):
            if k + 4 < len(batches):
                pending.append(submit(batches[k + 4]))
            yield views_of_batch(zip(batch, pending.pop(0), strict=True), sizes, model.resize, device, crops,
                                 plan.grid, plan.cut)
    finally:
        readers.shutdown(wait=True, cancel_futures=True)
