"""Descriptor arrays as the search takes them: finite, float32, L2-normalised without overflow.
"""

from __future__ import annotations

import warnings

import numpy as np

from isc.core.files import InputError

NORM_TOLERANCE = 1e-3  # |‖x‖ − 1| above this counts as "not L2-normalised"
# rows checked and normalised at a time: the temporaries take a few MB, not three copies of 1,000,000 descriptors
ROWS_PER_BLOCK = 1 << 14


# -------------------------------------------------------------------------------- descriptor checks


def prepare_descriptors(descriptors: np.ndarray, name: str) -> np.ndarray:
    """float32, L2-normalised: the array itself when it already is, else a normalised copy with a warning (zero
    vectors stay zero)."""
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if descriptors.ndim != 2:
        raise InputError(f"{name} descriptors must be a 2-d array [n, d], got shape {descriptors.shape}")
    if descriptors.shape[0] == 0:
        raise InputError(f"no {name} descriptors (empty file or array)")
    norms = row_norms(descriptors)
    # the norm of a row is NaN exactly where the row holds a NaN or an infinity (scaled by an infinite maximum)
    finite = np.isfinite(norms)
    if not finite.all():
        raise InputError(f"{name} descriptor #{int(np.flatnonzero(~finite)[0])} has NaN or infinite values")
    off = np.abs(norms - 1) > NORM_TOLERANCE
    if off.any():
        warnings.warn(f"{int(off.sum())} of {len(norms)} {name} descriptors are not L2-normalised "
                      f"(norms {norms.min():.4g}..{norms.max():.4g}): normalising them", stacklevel=2)
        descriptors = l2_normalise_rows(descriptors)[0]
    return descriptors


def row_norms(x: np.ndarray) -> np.ndarray:
    """The L2 norm of each row of float32 ``x`` [n] float64, in one pass without a copy; the rows whose squares
    overflow or underflow float32 (or hold NaN or an infinity: NaN) measured again as
    :func:`_normalised_block` measures them."""
    with np.errstate(over="ignore", invalid="ignore"):
        squares = np.einsum("ij,ij->i", x, x)
        norms = np.sqrt(squares.astype(np.float64))
        # squares beyond float32's range, or so small that they lost precision, are measured exactly
        again = np.flatnonzero(~(squares < np.float32(1e30)) | (squares < np.float32(1e-30)))
        for start in range(0, len(again), ROWS_PER_BLOCK):
            rows = again[start:start + ROWS_PER_BLOCK]
            norms[rows] = _normalised_block(x[rows])[1]
    return norms


def l2_normalise_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each row of float32 ``x`` L2-normalised, zero rows left zero; the rows' norms in float64), without
    overflow (:func:`_normalised_block`), :data:`ROWS_PER_BLOCK` rows at a time."""
    normalised, norms = np.empty_like(x), np.empty(len(x))
    for start in range(0, len(x), ROWS_PER_BLOCK):
        rows = slice(start, start + ROWS_PER_BLOCK)
        normalised[rows], norms[rows] = _normalised_block(x[rows])
    return normalised, norms


def _normalised_block(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`l2_normalise_rows` of a block of rows: each row is divided by its largest magnitude first (the norm
    of a row of 1e37 is past float32)."""
    scale = np.abs(x).max(axis=1, initial=0)
    scale = np.where(scale > 0, scale, 1).astype(x.dtype)
    scaled = x / scale[:, None]
    scaled_norms = np.linalg.norm(scaled, axis=1)
    return scaled / np.where(scaled_norms > 0, scaled_norms, 1)[:, None], scaled_norms.astype(np.float64) * scale
