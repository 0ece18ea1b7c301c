"""Region evidence of verified pairs: the part of each image that the other one maps onto, described by the
descriptor model (the global–local verification of ISC 2021's matching-track winners).

A pair whose fitted transform has at least ``VerifyOptions.region_inliers`` inliers maps the query's corners into
the reference and the reference's corners back into the query: each image is cut to the box of the other's
corners (clipped to the image, widened by :data:`REGION_MARGIN` of the box on each side) and both cuts are
described by the model that searched. Their cosine is the pair's ``region_similarity``; 0 where the pair has no
region (too few inliers, no transform, a cut under :data:`REGION_MIN_SIDE` pixels, an unreadable image). A copy
pasted into a larger image, overlaid or strongly cropped is then judged on the part that matches.

The cuts are PNG files named by the pair, the images' stamps and the box under ``CACHE/regions/`` (kept: a later
run with the same evidence reuses them, and their descriptors while ``CACHE/regions/<output's stem>.h5`` holds
exactly these cuts; a cut's id there is the same in every run). They are described in one batched extraction (:func:`isc.extract.extraction.extract`) in the calling
process, after the SIFT pool has returned: verification's worker processes never load torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from isc.core.files import InputError, atomic_path
from isc.core.images import BrokenImage
from isc.extract.extraction import ExtractOptions, extract, extraction_config, is_complete
from isc.verify.local_features import cache_stamp, decode_image

if TYPE_CHECKING:
    import pandas as pd

    from isc.models.base import DescriptorModel

REGION_MARGIN = 0.05  # of the box's side, on each side: the transform's corners are only as exact as RANSAC
REGION_MIN_SIDE = 32  # pixels: a smaller cut says too little for a global descriptor
REGION_COLUMN = "region_similarity"
# the cuts are lossless whatever the level; zlib's fastest writes them 4x quicker than Pillow's default, 8% larger
PNG_COMPRESS_LEVEL = 1
DECODED_IMAGES = 64  # decoded images kept at once: the evidence is sorted by query, whose images come together
Box = tuple[int, int, int, int]  # left, top, right, bottom in decoded pixels


def parse_transform(text: str) -> np.ndarray | None:
    """The 3 x 3 matrix of a transform as the evidence writes it (6 or 9 numbers, query pixels to reference
    pixels); None for '' (no model). InputError for anything else."""
    if not text:
        return None
    try:
        values = np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError:
        raise InputError(f"transform {text!r} is not a list of numbers") from None
    if len(values) not in (6, 9) or not np.isfinite(values).all():
        raise InputError(f"transform {text!r}: 6 or 9 finite numbers are needed")
    return np.vstack([values.reshape(2, 3), [0, 0, 1]]) if len(values) == 6 else values.reshape(3, 3)


def _mapped_box(transform: np.ndarray, source_size: tuple[int, int], target_size: tuple[int, int]) -> Box | None:
    """The box in the target image of the source image's corners mapped by ``transform``, widened by the margin and
    clipped to the target; None when a corner falls behind the projection or the box is under the minimum side."""
    width, height = source_size
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], dtype=np.float64)
    mapped = corners @ transform.T
    if (mapped[:, 2] <= 1e-9).any():
        return None
    points = mapped[:, :2] / mapped[:, 2:]
    low, high = points.min(axis=0), points.max(axis=0)
    pad = (high - low) * REGION_MARGIN
    left, top = np.maximum(np.floor(low - pad), 0)
    right, bottom = np.minimum(np.ceil(high + pad), target_size)
    if right - left < REGION_MIN_SIDE or bottom - top < REGION_MIN_SIDE:
        return None
    return int(left), int(top), int(right), int(bottom)


def region_boxes(transform: np.ndarray, query_size: tuple[int, int],
                 reference_size: tuple[int, int]) -> tuple[Box, Box] | None:
    """(query box, reference box): the query cut to the reference's corners mapped back, the reference cut to the
    query's corners mapped; sizes are (width, height); None when either box is degenerate or too small."""
    try:
        inverse = np.linalg.inv(transform)
    except np.linalg.LinAlgError:
        return None
    query_box = _mapped_box(inverse, reference_size, query_size)
    reference_box = _mapped_box(transform, query_size, reference_size)
    return None if query_box is None or reference_box is None else (query_box, reference_box)


@dataclass(frozen=True)
class RegionDescriber:
    """The descriptor model that describes the cuts (the one the candidates were searched with) and how it is run."""

    model: DescriptorModel
    extraction: ExtractOptions = field(default_factory=ExtractOptions)


def _cut(pixels: np.ndarray, box: Box, key: str, stamps: str, folder: Path) -> tuple[str, Path]:
    """(id, PNG file) of the cut ``box`` of ``pixels``: the id a digest of ``key`` (the same in every run), the file
    named by a digest of ``key`` and the images' ``stamps`` (a changed image is cut again), written once."""
    cut_id = hashlib.sha1(key.encode()).hexdigest()
    target = folder / f"{hashlib.sha1(f'{key}{stamps}'.encode()).hexdigest()}.png"
    if not target.is_file():
        from PIL import Image

        left, top, right, bottom = box
        with atomic_path(target) as tmp:
            Image.fromarray(pixels[top:bottom, left:right]).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return cut_id, target


def region_similarities(evidence: pd.DataFrame, paths: Mapping[str, Path], min_inliers: int,
                        describer: RegionDescriber, folder: Path, output: Path,
                        quiet: bool = False) -> tuple[np.ndarray, int]:
    """(the ``region_similarity`` of each evidence row, how many cuts were described) for the rows with at least
    ``min_inliers`` inliers and a transform; ``paths``: ``{id: image}`` of both sides; the cuts go to ``folder``,
    their descriptors to ``output`` (an HDF5 file, reused while it holds exactly these cuts)."""
    from isc.core.descriptors import read_descriptors

    if min_inliers < 1:
        raise InputError(f"region evidence needs at least 1 inlier per pair, got {min_inliers}")
    similarity = np.zeros(len(evidence), dtype=np.float64)
    chosen = np.flatnonzero((evidence["inliers"].to_numpy() >= min_inliers) & (evidence["transform"] != "").to_numpy())
    if not len(chosen):
        return similarity, 0
    folder.mkdir(parents=True, exist_ok=True)
    decoded: dict[str, np.ndarray | None] = {}  # the current query's image always among them
    cuts: dict[str, Path] = {}
    rows: dict[int, tuple[str, str]] = {}  # evidence row: (query cut id, reference cut id)
    for row in chosen:
        query_id, reference_id = evidence["query_id"].iat[row], evidence["reference_id"].iat[row]
        for image_id in (query_id, reference_id):
            if image_id not in decoded:
                if len(decoded) >= DECODED_IMAGES:
                    decoded = {key: value for key, value in decoded.items() if key == query_id}
                try:
                    decoded[image_id] = decode_image(paths[image_id])
                except BrokenImage:
                    decoded[image_id] = None
        query, reference = decoded[query_id], decoded[reference_id]
        if query is None or reference is None:
            continue
        boxes = region_boxes(parse_transform(evidence["transform"].iat[row]), query.shape[1::-1],
                             reference.shape[1::-1])
        if boxes is None:
            continue
        pair = f"{query_id}\0{reference_id}\0{boxes}"
        stamps = f"\0{cache_stamp(paths[query_id])}\0{cache_stamp(paths[reference_id])}"
        names = (_cut(query, boxes[0], f"query\0{pair}", stamps, folder),
                 _cut(reference, boxes[1], f"reference\0{pair}", stamps, folder))
        cuts.update(names)
        rows[int(row)] = names[0][0], names[1][0]
    if not cuts:
        return similarity, 0
    options = describer.extraction
    config = extraction_config(describer.model, options.scales, options.flip)
    if not is_complete(output, cuts, config):
        extract(cuts, output, describer.model, options, crops=False, quiet=quiet, resume=False,
                attrs={"source": str(folder)})
    ids, vectors, _ = read_descriptors(output)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    position = {image_id: i for i, image_id in enumerate(ids)}
    for row, (query_cut, reference_cut) in rows.items():
        if query_cut in position and reference_cut in position:  # a cut extraction could not read stays at 0
            similarity[row] = float(vectors[position[query_cut]] @ vectors[position[reference_cut]])
    if not np.isfinite(similarity).all():
        raise InputError(f"{output}: non-finite region descriptors")
    return similarity, len(cuts)
