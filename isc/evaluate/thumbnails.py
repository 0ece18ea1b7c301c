"""The images a page shows: where the dataset keeps each one, its thumbnail (a grey tile when it cannot be
read), and images as data URIs, so that a page embeds them."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from isc.core.competition import split_folder
from isc.core.files import IMAGE_SUFFIXES
from isc.evaluate.pairs import Gallery

THUMBNAIL_SIZE = 160
PLACEHOLDER_COLOR = (200, 200, 200)
SIDES = ("query", "reference")  # the two columns of a pair, each shown by its own image
ImageLocator = Callable[[str, str], Path]  # (side, id) -> the image file


def image_path(data_root: str | Path, image_id: str, side: str | None = None) -> Path:
    """Where the dataset folder keeps an image: ``ROOT/<side>_images/<id><suffix>``, else ``ROOT/<id><suffix>``,
    for any suffix the extractor reads (the ``.jpg`` path when there is none); ``side`` (query or reference)
    defaults to the competition's, from the id (``Q``: query)."""
    side = side or ("query" if image_id.startswith("Q") else "reference")
    for folder in (split_folder(data_root, side), Path(data_root)):
        for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
            # the id as text, not Path.with_suffix: an id may hold dots and folders
            if (candidate := folder / f"{image_id}{suffix}").is_file():
                return candidate
    return split_folder(data_root, side) / f"{image_id}.jpg"


def placeholder_tile(text: str, size: int = THUMBNAIL_SIZE) -> Image.Image:
    """A grey square saying why there is no picture."""
    tile = Image.new("RGB", (size, size), PLACEHOLDER_COLOR)
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default(size=max(10, size // 10))
    box = draw.multiline_textbbox((0, 0), text, font=font, align="center")
    xy = ((size - (box[2] - box[0])) / 2, (size - (box[3] - box[1])) / 2)
    draw.multiline_text(xy, text, fill=(90, 90, 90), font=font, align="center")
    return tile


def load_thumbnail(path: str | Path, size: int = THUMBNAIL_SIZE) -> Image.Image | None:
    """The image shrunk to fit ``size`` x ``size``, or None when it is missing or unreadable."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster for big images
            thumbnail = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    thumbnail.thumbnail((size, size))
    return thumbnail


def jpeg_data_uri(image: Image.Image, quality: int = 80) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def load_thumbnails(
    galleries: list[Gallery], locate: ImageLocator, size: int = THUMBNAIL_SIZE, quiet: bool = False,
    more: Iterable[tuple[str, str]] = (),
) -> tuple[dict[tuple[str, str], Image.Image], list[str]]:
    """Thumbnails of every image the galleries show and of ``more`` (side, id), by (side, id), each read from
    ``locate(side, id)`` (placeholders for missing ones), and the missing ids."""
    keys = sorted({(side, i) for g in galleries for side in SIDES for i in g.pairs[f"{side}_id"]} | set(more))
    thumbnails, missing = {}, []
    for side, image_id in tqdm(keys, desc="thumbnails", unit="img", disable=quiet):
        thumbnail = load_thumbnail(locate(side, image_id), size)
        if thumbnail is None:
            missing.append(image_id)
            thumbnail = placeholder_tile(f"{image_id[:20]}\nmissing", size)
        thumbnails[side, image_id] = thumbnail
    return thumbnails, missing
