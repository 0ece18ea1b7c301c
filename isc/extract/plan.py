"""How one process runs an extraction, every default resolved: :meth:`isc.extract.extraction.ExtractOptions.plan`
turns the options and the model into an :class:`ExtractionPlan`, the one object the batch pipelines
(:mod:`isc.extract.torch_batches`, :mod:`isc.extract.pixel_batches`, :mod:`isc.extract.decode_workers`) read."""

from __future__ import annotations

from dataclasses import dataclass


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
    grid: int = 0  # with crops: grid views a side (isc.extract.decode.view_boxes)
    cut: bool = False  # with crops: views cut from the resized full view (isc.extract.decode.cut_views)
