"""Pictures of verified pairs: the two images side by side with lines between their inlier matches, the
matches found again here with isc-verify's local features (its evidence keeps no keypoints)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from isc.evaluate.pairs import Gallery
from isc.evaluate.thumbnails import SIDES, THUMBNAIL_SIZE, image_path

if TYPE_CHECKING:
    from isc.verify.local_features import VerifyOptions

MATCH_COLOR = (0, 255, 0)  # the lines between matched keypoints
MAX_DRAWN_MATCHES = 60  # more lines hide the images
MATCH_GAP = 6  # pixels between the two images of a match picture


def match_picture(query: np.ndarray, reference: np.ndarray, options: VerifyOptions,
                  size: int = THUMBNAIL_SIZE) -> tuple[Image.Image, int]:
    """(the two images side by side, each shrunk to fit ``size``, with lines between their inlier matches (at
    most :data:`MAX_DRAWN_MATCHES`, evenly chosen), the number of inliers) of uint8 RGB pixels [h, w, 3]; the
    query mirrored too where ``options.mirror`` says, as verification matched it."""
    from isc.verify.local_features import best_match, describe_pixels

    mirrored = describe_pixels(query, options, mirrored=True) if options.mirror else None
    match = best_match(describe_pixels(query, options), mirrored, describe_pixels(reference, options), options)
    thumbnails = []
    for pixels in (query, reference):
        thumbnail = Image.fromarray(pixels)
        thumbnail.thumbnail((size, size))
        thumbnails.append(thumbnail)
    left, right = thumbnails
    picture = Image.new("RGB", (left.width + MATCH_GAP + right.width, max(left.height, right.height)), "white")
    picture.paste(left, (0, 0))
    picture.paste(right, (left.width + MATCH_GAP, 0))
    query_factor, reference_factor = left.width / query.shape[1], right.width / reference.shape[1]
    draw = ImageDraw.Draw(picture)
    step = -(-match.inliers // MAX_DRAWN_MATCHES) or 1
    for (qx, qy), (rx, ry) in zip(match.query_points[::step], match.reference_points[::step], strict=True):
        start = (qx * query_factor, qy * query_factor)
        end = (left.width + MATCH_GAP + rx * reference_factor, ry * reference_factor)
        draw.line([start, end], fill=MATCH_COLOR, width=1)
        for x, y in (start, end):
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=MATCH_COLOR)
    return picture, match.inliers


def match_pictures(galleries: list[Gallery], data_root: str | Path, options: VerifyOptions | None = None,
                   size: int = THUMBNAIL_SIZE, quiet: bool = False) -> dict[tuple[str, str], Image.Image]:
    """:func:`match_picture` of every verified pair the galleries show whose images can be read."""
    from isc.core.images import BrokenImage
    from isc.verify.local_features import VerifyOptions, decode_image

    options = options or VerifyOptions()
    pairs = sorted({(q, r) for g in galleries for q, r, verified in
                    zip(g.pairs["query_id"], g.pairs["reference_id"], g.pairs["verified"], strict=True) if verified})
    pictures = {}
    for query_id, reference_id in tqdm(pairs, desc="matches", unit="pair", disable=quiet):
        try:
            pixels = [decode_image(image_path(data_root, i, side)) for side, i in zip(SIDES, (query_id, reference_id), strict=True)]
        except BrokenImage:
            continue  # drawn as two thumbnails, a grey tile for the missing one
        pictures[query_id, reference_id] = match_picture(*pixels, options, size)[0]
    return pictures
