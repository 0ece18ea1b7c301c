"""torch's antialiased bilinear resize of uint8 images (``F.interpolate(..., mode="bilinear", antialias=True)``
on the CPU), computed in numpy integer for integer: the pixel path, which runs without torch, sees the very
pixels of the torch pipeline, hence gives the very same descriptors.

torch (like Pillow-SIMD) resamples the width, then the height, rounding each pass to uint8. Each output is a
weighted sum of a window of inputs: triangle-filter weights normalised in float64, then rounded to integers at
the precision that keeps the largest in int16 (``_compute_index_ranges_int16_weights`` of ATen's
``UpSampleKernel.cpp``), the sum plus half a unit shifted down by that precision. Here the sums run as
block-banded matrix products in float32, exact because every product and partial sum is an integer below
2^24 (float64 where the weights are too fine for that).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

BLOCK = 16  # outputs per matrix product
ONE_THREAD = 1 << 18  # OpenBLAS computes a product of m*n*k up to this on the calling thread alone


def resized_shape(height: int, width: int, size: int, mode: str) -> tuple[int, int]:
    """(height, width) of an image resized to size x size (``square``), or with its short edge at size."""
    if mode == "square":
        return size, size
    scale = size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(first input, taps used, integer weights [out, taps], precision) of each output along one axis, as torch
    computes them (``_compute_indices_min_size_weights_aa``, bilinear: support 1 input, times the scale)."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    taps = math.ceil(support) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size) + 0.5)
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.clip(np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - first, 0, taps)
    tap = np.arange(taps)
    distance = np.abs(((first[:, None] + tap) - center[:, None] + 0.5) * invscale)
    weights = np.where((tap < count[:, None]) & (distance < 1.0), 1.0 - distance, 0.0)
    total = np.zeros(out_size)
    for k in range(taps):  # in torch's order: a float sum depends on it
        total += weights[:, k]
    np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0)
    largest = weights.max()
    precision = 0
    while precision < 22 and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    return first, count, np.trunc(0.5 + weights * (1 << precision)), precision


@functools.lru_cache(maxsize=64)
def _axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The weights of one axis as dense blocks of :data:`BLOCK` outputs: (first input of each block, end,
    weights [blocks, BLOCK, widest span] in the float type whose products are exact, precision)."""
    first, count, weights, precision = _weights(in_size, out_size)
    exact32 = 255 * weights.sum(axis=1).max() + (1 << (precision - 1)) < (1 << 24)
    starts = np.arange(0, out_size, BLOCK)
    low, high = np.minimum.reduceat(first, starts), np.maximum.reduceat(first + count, starts)
    block = np.arange(out_size) // BLOCK
    matrices = np.zeros((len(starts) * BLOCK, max(int((high - low).max()), 0)), np.float32 if exact32 else np.float64)
    for k in range(weights.shape[1]):
        used = np.flatnonzero(k < count)
        matrices[used, first[used] + k - low[block[used]]] = weights[used, k]
    return low, high, matrices.reshape(len(starts), BLOCK, -1), precision


def _resample(rows: np.ndarray, out_size: int) -> np.ndarray:
    """Axis 0 of ``rows`` [n, m] (integers 0-255) resampled to [out_size, m], rounded as torch rounds (floats)."""
    lows, highs, matrices, precision = _axis(rows.shape[0], out_size)
    rows = rows.astype(matrices.dtype, copy=False)
    out = np.empty((out_size, rows.shape[1]), matrices.dtype)
    for start, low, high, matrix in zip(range(0, out_size, BLOCK), lows, highs, matrices, strict=True):
        stop = min(start + BLOCK, out_size)
        matrix = matrix[:stop - start, :high - low]
        step = max(1, ONE_THREAD // max(1, matrix.size))  # columns per product: more would start BLAS threads
        for column in range(0, rows.shape[1], step):
            np.matmul(matrix, rows[low:high, column:column + step], out=out[start:stop, column:column + step])
    out += 1 << (precision - 1)
    out *= 1.0 / (1 << precision)  # a power of two: exact
    np.floor(out, out=out)
    return np.clip(out, 0, 255, out=out)


def resize_pixels(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize uint8 [3, H, W] (a view of [H, W, 3] pixels) to size x size, or short edge = size: the pixels
    torch's antialiased bilinear resize gives (``isc.extract.decode.resize_image``), as a [3, h, w] view."""
    height, width = image.shape[-2:]
    target_height, target_width = resized_shape(height, width, size, mode)
    if (target_height, target_width) == (height, width):
        return image
    pixels = np.ascontiguousarray(image.transpose(1, 2, 0))
    if target_width != width:  # the width first, as torch does: each pass rounds
        columns = _transposed(pixels).reshape(width, -1)
        resized = _resample(columns, target_width).astype(np.uint8).reshape(target_width, height, 3)
        pixels = _transposed(resized)
    if target_height != height:
        resized = _resample(pixels.reshape(height, -1), target_height)
        pixels = resized.astype(np.uint8).reshape(target_height, target_width, 3)
    return pixels.transpose(2, 0, 1)


def _transposed(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] as [W, H, 3], by Pillow: several times faster than numpy's copy of a transposed view."""
    return np.asarray(Image.fromarray(pixels).transpose(Image.Transpose.TRANSPOSE))
