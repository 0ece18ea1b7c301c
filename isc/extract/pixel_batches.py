"""The pixel path: descriptors of a model that takes uint8 pixels (PDQ, uint8 ONNX graphs:
:attr:`isc.models.DescriptorModel.takes_pixels`), without torch: no torch batches, no float round trip.

Worker processes (all cores) decode and resize each image as the torch pipelines do
(:func:`isc.extract.decode.decode_views`, whose numpy resize gives torch's pixels) and send back numpy pixels
[H, W, 3], which this process stacks for onnxruntime; PDQ hashes in the workers, so only its 256 values come
back. The pixels, hence the descriptors, are the same as on the torch pipelines."""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from isc.core.processes import worker_context
from isc.extract.decode import decode_views, positions_by_shape, view_count, views_by_size
from isc.extract.plan import ExtractionPlan
from isc.models import DescriptorModel

PIXEL_CHUNK = 16  # images per task of a pixel-path decoding process: small, so that a short run uses them all


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
                   crops: bool = False, grid: int = 0, cut: bool = False,
                   ) -> list[tuple[list[np.ndarray] | np.ndarray | None, str | None]]:
    """Per image file: (uint8 pixels [h, w, 3] of each view and size, ordered as :func:`isc.extract.decode.decode_views`, None),
    or with ``describe`` (the descriptors it makes of them, one per crop view averaged over sizes and flips,
    concatenated, None), or (None, why it cannot be read)."""
    results = []
    for path in paths:
        views, reason = decode_views(path, sizes, resize, max_pixels, crops, grid=grid, cut=cut)
        if views is None:
            results.append((None, reason))
            continue
        pixels = [view.transpose(1, 2, 0) for view in views]
        if describe is not None:
            per_crop = [pixels[start:start + len(sizes)] for start in range(0, len(pixels), len(sizes))]
            pixels = np.concatenate([
                _mean_of_views([describe(v) for view in crop for v in ((view, view[:, ::-1]) if flip else (view,))],
                               normalized) for crop in per_crop], axis=-1)
        results.append((pixels, None))
    return results


def _in_order(function: Callable, chunks: Sequence, workers: int, ahead: int) -> Iterator:
    """``function(chunk)`` of each chunk, in order, computed by ``workers`` processes at most ``ahead`` chunks
    ahead (0 workers: in this process, on one thread decoding ahead of the caller)."""
    if not chunks:
        return
    if workers == 0:
        from concurrent.futures import ThreadPoolExecutor

        # Pillow's decoder and numpy's products release the GIL: the next images are decoded while the model
        # runs (a second thread gained no time and grew the peak by its own malloc arena; docs/BENCHMARKS.md)
        pool = ThreadPoolExecutor(1, thread_name_prefix="isc-decode")
    else:
        # here: it loads multiprocessing, which a folder decoded in this process does without
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(min(workers, len(chunks)), mp_context=worker_context([__name__]))
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
                  device: str, views_per_image: int = 1) -> np.ndarray:
    """Descriptors [n, D] of images given as uint8 pixels per scale: images of equal shape stacked into one
    batch (the groups of :func:`isc.extract.torch_batches.normalised_groups`), views averaged as
    :func:`isc.extract.torch_batches._embed` does."""
    outputs = []
    for views in per_scale:
        batches = [(positions, np.stack([views[i] for i in positions]))
                   for positions in positions_by_shape(views, views_per_image)]
        for flipped in (False, True) if flip else (False,):
            out = None
            for positions, batch in batches:
                descriptors = model.embed_pixels(batch[:, :, ::-1] if flipped else batch, device)
                if out is None:
                    out = np.empty((len(views), descriptors.shape[1]), np.float32)
                out[positions] = descriptors
            outputs.append(out)
    return _mean_of_views(outputs, model.normalized)


def pixel_batches(paths: Sequence[Path], model: DescriptorModel,
                  plan: ExtractionPlan) -> Iterator[tuple[list[int], np.ndarray | None, dict[int, str]]]:
    """(positions, descriptors, broken) per batch of a model that takes uint8 pixels: ``plan.workers`` worker
    processes decode (and describe, for a per-image model such as PDQ), this process runs the model on stacked
    pixels. With ``plan.crops`` an image's row is its views' descriptors side by side."""
    describe = model.per_image_descriptor
    sizes, batch_size, workers, flip, crops = plan.sizes, plan.batch_size, plan.workers, plan.flip, plan.crops
    decode = functools.partial(_decode_pixels, sizes=sizes, resize=model.resize, max_pixels=plan.max_pixels,
                               flip=flip, describe=describe, normalized=model.normalized, crops=crops, grid=plan.grid,
                               cut=plan.cut)
    chunk = min(batch_size, PIXEL_CHUNK)
    chunks = [paths[start:start + chunk] for start in range(0, len(paths), chunk)]
    # a few batches decoded ahead, and every process busy (in this process: the next batch, while the model runs)
    decoded = _in_order(decode, chunks, workers, max(2 * workers, 2 * batch_size // chunk) if workers else 1)
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
                per_scale = views_by_size([batch[k][0] for k in ok], len(sizes))
                descriptors = _embed_pixels(model, per_scale, flip, plan.device,
                                            view_count(crops, plan.grid)).reshape(len(ok), -1)
            yield [start + k for k in ok], descriptors, broken
