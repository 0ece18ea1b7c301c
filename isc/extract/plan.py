"""How one process runs an extraction, every default resolved: :func:`plan_extraction` turns an
:class:`isc.extract.extraction.ExtractOptions` and the model into an :class:`ExtractionPlan`, the one object
the batch pipelines (:mod:`isc.extract.torch_batches`, :mod:`isc.extract.pixel_batches`,
:mod:`isc.extract.decode_workers`) read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from isc.core.distributed import device_name
from isc.core.files import SettingError
from isc.models import DescriptorModel

if TYPE_CHECKING:
    from isc.extract.extraction import ExtractOptions


@dataclass(frozen=True)
class ExtractionPlan:
    """An extraction's settings as this process runs them (no None left)."""

    device: str  # as torch names it: cpu or cuda:N
    decoder: str  # torchvision or pil
    pixels: bool  # the pixel path: uint8 pixels to a model that takes them, without torch
    workers: int  # reading threads (torchvision), or decoding processes (pil, the pixel path)
    half: bool  # float16 inference
    decode_processes: int  # torchvision decoder: processes reading and decoding beside inference (0: threads)
    sizes: tuple[int, ...]  # the side each view is resized to, one per scale
    batch_size: int
    max_pixels: int
    flip: bool
    crops: bool


def plan_extraction(options: ExtractOptions, model: DescriptorModel, sizes: tuple[int, ...]) -> ExtractionPlan:
    """``options``' defaults resolved for ``model`` on this machine; ``sizes``: the views' sides
    (:func:`isc.extract.extraction.view_sizes`). SettingError for decode processes without the torchvision decoder."""
    # a model no GPU runs (PDQ; ONNX without onnxruntime's CUDA provider) stays on the CPU unless told: on the
    # pixel path it then runs without torch
    device = device_name(options.device if options.device or model.gpu_capable else "cpu")
    on_gpu = device.startswith("cuda")
    decoder = options.decoder or ("torchvision" if on_gpu and not model.takes_pixels else "pil")
    if options.decode_processes and decoder != "torchvision":  # refused, not ignored: pil decodes in its workers
        raise SettingError("decode_processes", f"needs the torchvision decoder, and this run decodes with {decoder} "
                           "(whose decoding runs in the worker processes)")
    pixels = decoder == "pil" and model.takes_pixels
    workers = options.workers
    if workers is None:
        cores = os.cpu_count() or 1
        # the pixel path's processes do all the decoding (and PDQ's hashing): every core, shared by local ranks
        workers = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if pixels \
            else min(16 if decoder == "torchvision" else 8, cores)
    return ExtractionPlan(
        device=device, decoder=decoder, pixels=pixels, workers=workers,
        half=on_gpu if options.half is None else options.half,
        decode_processes=options.decode_processes if decoder == "torchvision" and not pixels else 0,
        sizes=tuple(sizes), batch_size=options.batch_size, max_pixels=options.max_pixels, flip=options.flip,
        crops=options.crops)
