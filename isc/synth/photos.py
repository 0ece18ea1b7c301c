"""Base images cut from a folder of real photos, and drawings on plain backgrounds, for ``isc-synth --photos``.

Procedural images are too easy to tell apart to judge a copy detector. Here every base image (reference,
training image, distractor query) is one of:

- a tile of a photo: photos are cut into a grid of non-overlapping ``tile_size`` squares; only detailed
  tiles are kept (:func:`detail`: flat sky, gradients and blur are near-copies of each other in effect),
  at most ``max_tiles_per_photo`` of them, and each photo feeds one split only, so that no query has an
  unlabelled match among the references and no training image copies a reference;
- a whole drawing (clip art, transparent background) composed on a plain background, each used once.

Photos come first; drawings fill what the photos cannot give, each split getting the same mix. The plan
depends only on the sorted file lists, the options and the seed."""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from isc.core.files import IMAGE_SUFFIXES, InputError
from isc.synth.draw import natural_colour, random_image_size, to_rgb

SPLITS = ("reference", "training", "query")  # in the order ties between them are broken
DETAIL_SIDE = 64  # side of the grey thumbnail whose JPEG size measures detail
PLAN_SEED_WORD = 4  # second word of the planning generator's seed (1-3 are the splits' image seeds)


@dataclass(frozen=True)
class PhotoOptions:
    """Where base images come from and how photos are cut (``isc-synth --photos/--drawings``)."""

    photos: Path | None = None
    drawings: Path | None = None
    tile_size: int = 512
    max_tiles_per_photo: int = 12
    min_detail: int = 300

    def check(self) -> None:
        """InputError, before any work, for a missing folder or an impossible setting."""
        if self.photos is None and self.drawings is None:
            raise InputError("base images from photos need a photos folder, a drawings folder or both")
        for folder, what in ((self.photos, "photos"), (self.drawings, "drawings")):
            if folder is not None and not Path(folder).is_dir():
                raise InputError(f"{what} folder {folder}: not a folder")
        if self.tile_size < DETAIL_SIDE:
            raise InputError(f"tile size must be at least {DETAIL_SIDE} pixels, got {self.tile_size}")
        if self.max_tiles_per_photo < 1 or self.min_detail < 0:
            raise InputError(f"need max tiles per photo >= 1 and min detail >= 0, got {self.max_tiles_per_photo} "
                             f"and {self.min_detail}")

    def params(self) -> dict[str, object]:
        """The options as recorded in the manifest."""
        return {"photos": None if self.photos is None else str(self.photos),
                "drawings": None if self.drawings is None else str(self.drawings),
                "tile_size": self.tile_size, "max_tiles_per_photo": self.max_tiles_per_photo,
                "min_detail": self.min_detail}


@dataclass(frozen=True)
class BaseSource:
    """One base image: the ``box`` tile of a photo, or a whole drawing (``box`` None)."""

    path: str  # the file, as opened
    name: str  # the file relative to its folder, as recorded
    box: tuple[int, int, int, int] | None = None

    def record(self) -> dict[str, object]:
        """The manifest's entry: ``{"photo": name, "box": [x0, y0, x1, y1]}`` or ``{"drawing": name}``."""
        return {"drawing": self.name} if self.box is None else {"photo": self.name, "box": list(self.box)}


# ------------------------------------------------------------------------------------------ reading


def image_files(folder: str | Path, what: str) -> list[Path]:
    """The image files under ``folder`` (recursively, hidden ones skipped), sorted; refuses none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise InputError(f"{what} folder {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except Image.DecompressionBombError:
        raise InputError(f"{path}: too large for Pillow (a decompression bomb?)") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: not an image Pillow can read ({e})") from None


def _load(image: Image.Image, path: Path) -> Image.Image:
    """The decoded image in RGB (RGBA when it has transparency); InputError when the data is broken."""
    try:
        has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        return image.convert("RGBA" if has_alpha else "RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: cannot decode ({e})") from None


# ------------------------------------------------------------------------------------------- detail


def _jpeg_size(grey: Image.Image) -> int:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(grey)).save(buffer, "JPEG", quality=75)  # fromarray: no metadata carried over
    return len(buffer.getvalue())


FLAT_JPEG_SIZE = _jpeg_size(Image.new("L", (DETAIL_SIDE, DETAIL_SIDE), 128))


def detail(image: Image.Image) -> int:
    """Bytes a 64 x 64 grey JPEG (quality 75) of ``image`` takes beyond a flat one: ~0 for a plain colour or a
    smooth gradient, a few hundred for a landscape, over a thousand for foliage or a crowd."""
    grey = to_rgb(image).convert("L").resize((DETAIL_SIDE, DETAIL_SIDE), Image.Resampling.BOX)
    return _jpeg_size(grey) - FLAT_JPEG_SIZE


def grid_boxes(width: int, height: int, tile_size: int) -> list[tuple[int, int, int, int]]:
    """The non-overlapping ``tile_size`` squares of a centred grid over a width x height image, row by row."""
    columns, rows = width // tile_size, height // tile_size
    left, top = (width - columns * tile_size) // 2, (height - rows * tile_size) // 2
    return [(left + c * tile_size, top + r * tile_size, left + (c + 1) * tile_size, top + (r + 1) * tile_size)
            for r in range(rows) for c in range(columns)]


def detailed_tiles(path: Path, tile_size: int, min_detail: int) -> list[tuple[int, int, int, int]]:
    """The grid squares of a photo whose :func:`detail` is at least ``min_detail``."""
    with _open(path) as image:
        width, height = image.size
        boxes = grid_boxes(width, height, tile_size)
        if not boxes:
            return []
        # JPEGs decode at 1/2, 1/4 or 1/8 scale while a tile stays >= the thumbnail: far less work
        factor = DETAIL_SIDE / tile_size
        image.draft("RGB", (math.ceil(width * factor), math.ceil(height * factor)))
        small = _load(image, path)
    scale = small.width / width
    return [box for box in boxes if detail(small.crop(tuple(round(v * scale) for v in box))) >= min_detail]


def _visible_part(image: Image.Image) -> Image.Image:
    """A drawing cropped to its non-transparent part (the whole image when it has no transparency)."""
    if image.mode == "RGBA":
        box = image.getchannel("A").getbbox()
        if box is not None:
            return image.crop(box)
    return image


def drawing_detail(path: Path) -> int:
    """:func:`detail` of a drawing's visible part on white, centred in a square (as thin as it is)."""
    with _open(path) as image:
        drawing = _visible_part(_load(image, path))
    if drawing.mode == "RGBA" and drawing.getchannel("A").getbbox() is None:
        return 0  # fully transparent
    side = max(drawing.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(drawing, ((side - drawing.width) // 2, (side - drawing.height) // 2),
                 drawing if drawing.mode == "RGBA" else None)
    return detail(square)


# --------------------------------------------------------------------------------------------- plan


def _neediest(remaining: dict[str, int], needs: dict[str, int]) -> str:
    """The split furthest from its count, as a fraction of it (so every split gets the same mix)."""
    return max((s for s in SPLITS if remaining[s] > 0), key=lambda s: remaining[s] / needs[s])


def plan_base_images(options: PhotoOptions, needs: dict[str, int], seed: int,
                     quiet: bool = False) -> dict[str, list[BaseSource]]:
    """``needs[split]`` base images per split (reference, training, query): tiles of photos, then drawings.

    Photos are taken in a seeded random order, each whole to the split that lacks the most (as a fraction of
    its count), at most ``max_tiles_per_photo`` of its detailed tiles chosen at random; then drawings of
    :func:`drawing_detail` >= ``min_detail``, one each. InputError when both together fall short.
    """
    needs = {s: needs.get(s, 0) for s in SPLITS}
    remaining = dict(needs)
    plan: dict[str, list[BaseSource]] = {s: [] for s in SPLITS}
    rng = np.random.default_rng([seed, PLAN_SEED_WORD])
    counts = Counter()
    for kind, folder in (("photo", options.photos), ("drawing", options.drawings)):
        if folder is None:
            continue
        files = image_files(folder, kind + "s")
        order = rng.permutation(len(files))
        with tqdm(total=sum(remaining.values()), desc=f"isc-synth: {kind}s", unit="img", disable=quiet) as bar:
            for position in order:
                if not any(remaining.values()):
                    break
                path = files[int(position)]
                counts[kind + "s read"] += 1
                if kind == "photo":
                    boxes = detailed_tiles(path, options.tile_size, options.min_detail)
                    chosen = [boxes[int(i)] for i in rng.permutation(len(boxes))[:options.max_tiles_per_photo]]
                else:
                    chosen = [None] if drawing_detail(path) >= options.min_detail else []
                if not chosen:
                    continue
                split = _neediest(remaining, needs)
                taken = chosen[:remaining[split]]  # a photo's other tiles are used nowhere
                name = path.relative_to(folder).as_posix()
                plan[split] += [BaseSource(os.fspath(path), name, box) for box in taken]
                remaining[split] -= len(taken)
                counts[kind + " images"] += len(taken)
                bar.update(len(taken))
    if any(remaining.values()):
        given = ", ".join(f"{counts[k + ' images']} from {counts[k + 's read']} {k}s" for k, f in
                          (("photo", options.photos), ("drawing", options.drawings)) if f is not None)
        raise InputError(
            f"not enough base images: {needs['reference']} references + {needs['training']} training images + "
            f"{needs['query']} distractor queries wanted, {given} (detail >= {options.min_detail}); add photos or "
            "drawings, lower the minimum detail or the tile size, raise the tiles per photo, or ask for fewer images")
    return plan


T = TypeVar("T")


def with_base_images(tasks: Sequence[T], options: PhotoOptions, seed: int, quiet: bool = False) -> list[T]:
    """isc-synth's tasks with a ``base`` each where they draw one: references, training images, and queries
    that copy no reference (``source`` None)."""
    drawn = [t.split != "query" or t.source is None for t in tasks]
    plan = plan_base_images(options, Counter(t.split for t, d in zip(tasks, drawn, strict=True) if d), seed, quiet)
    queues = {split: iter(sources) for split, sources in plan.items()}
    return [dataclasses.replace(t, base=next(queues[t.split])) if d else t for t, d in zip(tasks, drawn, strict=True)]


# ------------------------------------------------------------------------------------------- render


def render_base(source: BaseSource, rng: np.random.Generator, min_size: int, max_size: int) -> Image.Image:
    """The base image of ``source``, RGB, long side in [min_size, max_size], aspect ratio as isc-synth's own.

    A photo tile: the largest rectangle of the drawn aspect inside the tile, at a random place. A drawing:
    scaled to 55-95% of a plain canvas of a muted random colour, at a random place.
    """
    width, height = random_image_size(rng, min_size, max_size)
    path = Path(source.path)
    with _open(path) as image:
        if source.box is not None:
            image = _load(image, path).crop(source.box)
            side = image.width
            scale = min(side / width, side / height)
            crop_w, crop_h = min(side, round(width * scale)), min(side, round(height * scale))
            x, y = int(rng.integers(0, side - crop_w + 1)), int(rng.integers(0, side - crop_h + 1))
            return to_rgb(image.crop((x, y, x + crop_w, crop_h + y)).resize((width, height), Image.Resampling.LANCZOS))
        drawing = _visible_part(_load(image, path))
    canvas = Image.new("RGB", (width, height), natural_colour(rng))
    scale = rng.uniform(0.55, 0.95) * min(width / drawing.width, height / drawing.height)
    drawing = drawing.resize((max(1, round(drawing.width * scale)), max(1, round(drawing.height * scale))),
                             Image.Resampling.LANCZOS)
    xy = (int(rng.integers(0, width - drawing.width + 1)), int(rng.integers(0, height - drawing.height + 1)))
    canvas.paste(drawing, xy, drawing if drawing.mode == "RGBA" else None)
    return canvas
