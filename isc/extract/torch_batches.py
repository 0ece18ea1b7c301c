"""Descriptors of image files through torch: float batches on the device, one model call per shape.

- ``torchvision`` (the fast path, default on a GPU): background threads read the files, JPEGs of a batch
  are decoded together by ``torchvision.io.decode_jpeg`` (nvJPEG on a GPU), resized and normalised on the
  device, in half precision and channels-last; a producer thread prepares batch k+1 (on its own CUDA
  stream) while the model runs on batch k (:mod:`isc.extract.nvjpeg_batches`). With ``decode_processes``, worker processes read, decode and
  resize instead, out of this process's GIL (:mod:`isc.extract.decode_workers`).
- ``pil`` (default on the CPU): a DataLoader whose worker processes decode with Pillow, in JPEG draft
  mode when downscaling.

Both resize with :func:`isc.extract.decode.resize_image`, so their descriptors agree (and agree bit for bit
with the pixel path's, whose numpy resize gives the same pixels)."""

from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from isc.core.processes import worker_context
from isc.extract.decode import (
    decode_views,
    positions_by_shape,
    resize_image,
    view_count,
    views_by_size,
)
from isc.extract.nvjpeg_batches import torchvision_batches
from isc.extract.plan import ExtractionPlan
from isc.models import DescriptorModel

# torchvision's decoders still work, deprecated in favour of torchcodec
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


# -------------------------------------------------------------------------------- Pillow pipeline


class _PillowImages(torch.utils.data.Dataset):
    """Each item: (position, :func:`isc.extract.decode.decode_views`' list of uint8 views or None, reason or None),
    decoded in a worker."""

    def __init__(self, paths: Sequence[Path], sizes: Sequence[int], resize: str, max_pixels: int, crops: bool,
                 grid: int, cut: bool):
        self.paths, self.sizes, self.resize, self.max_pixels = list(paths), list(sizes), resize, max_pixels
        self.crops, self.grid, self.cut = crops, grid, cut

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int):
        return position, *decode_views(self.paths[position], self.sizes, self.resize, self.max_pixels, self.crops,
                                       _resize_tensor, self.grid, self.cut)


def _resize_tensor(view: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """A decoded numpy view resized by torch (the pixels of :func:`isc.extract.resample.resize_pixels`, faster)."""
    return resize_image(torch.from_numpy(view), size, mode)


def _as_list(batch: list) -> list:
    return batch


def _pillow_batches(paths: Sequence[Path], model: DescriptorModel, plan: ExtractionPlan) -> Iterator[tuple]:
    device, sizes, workers = torch.device(plan.device), plan.sizes, plan.workers
    loader = torch.utils.data.DataLoader(
        _PillowImages(paths, sizes, model.resize, plan.max_pixels, plan.crops, plan.grid, plan.cut),
        batch_size=plan.batch_size,
        num_workers=workers,
        collate_fn=_as_list, pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
        multiprocessing_context=worker_context([__name__]) if workers else None)
    for batch in loader:
        ok = [(position, views) for position, views, _ in batch if views is not None]
        broken = {position: reason for position, _, reason in batch if reason is not None}
        per_scale = [[view.to(device, non_blocking=True) for view in views]
                     for views in views_by_size([views for _, views in ok], len(sizes))]
        yield [p for p, _ in ok], per_scale, broken


def torch_batches(paths: Sequence[Path], model: DescriptorModel,
                  plan: ExtractionPlan) -> Iterator[tuple[list[int], np.ndarray | None, dict[int, str]]]:
    """(positions, descriptors, broken) per batch, through ``plan.decoder``'s torch pipeline: float batches on
    ``plan.device`` (the model moved there, in float16 if ``plan.half``). With ``plan.crops`` an image's row is
    its views' descriptors side by side. ``plan.decode_processes`` (torchvision decoder): that many processes
    read and decode beside this one (:mod:`isc.extract.decode_workers`), 0: threads."""
    device, decoder, flip = torch.device(plan.device), plan.decoder, plan.flip
    model = model.prepare(str(device), plan.half)
    if decoder == "torchvision" and plan.decode_processes:
        from isc.extract.decode_workers import (
            process_batches,  # its process machinery only where processes are asked
        )

        views = process_batches(paths, model.resize, plan)
    else:
        pipeline = torchvision_batches if decoder == "torchvision" else _pillow_batches
        views = pipeline(paths, model, plan)
    n_views = view_count(plan.crops, plan.grid)
    dtype = torch.float16 if plan.half else torch.float32
    batches = ((positions, normalised_groups(model, per_scale, dtype, device.type == "cuda", n_views), broken)
               for positions, per_scale, broken in views)
    if decoder == "torchvision":
        batches = _in_background(batches, device)  # decode, resize, normalise beside inference
    # closed now, not when a traceback is freed: the background thread first, then the threads or processes it read
    with contextlib.closing(views), contextlib.closing(batches):
        for positions, grouped, broken in batches:
            yield positions, (_embed(model, grouped, len(positions) * n_views, flip).reshape(len(positions), -1)
                              if positions else None), broken


# ------------------------------------------------------------------------------------- inference


def normalised_groups(model: DescriptorModel, per_scale: list[list[torch.Tensor]], dtype: torch.dtype,
                      channels_last: bool, views_per_image: int = 1) -> list[list[tuple[list[int], torch.Tensor]]]:
    """Per scale, images of equal shape stacked and normalised: [(positions in the batch, [b, 3, h, w])]; the
    full views apart from the crops (:func:`isc.extract.decode.positions_by_shape`)."""
    if not per_scale or not per_scale[0]:
        return []
    device = per_scale[0][0].device
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1) * 255
    grouped = []
    for views in per_scale:
        groups = []
        for positions in positions_by_shape(views, views_per_image):
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
