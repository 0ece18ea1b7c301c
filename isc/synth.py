"""A synthetic mini DISC21, made from a seed with no network.

- :func:`base_image`: a procedural "photo" (textured background, shapes, text, lens softness, sensor noise);
- :data:`EDITS` and :func:`random_edit`: the kinds of edits DISC21 applied to its queries, written with Pillow
  (crops, rotations, flips, scaling, aspect changes, padding, colour changes, blur, noise, pixelisation, JPEG
  re-compression, text and emoji overlays, pasting onto another image, screenshot and meme frames);
- :func:`generate_dataset`: the competition's layout, ``{query,reference,training}_images/<id>.jpg``, the
  metadata CSVs with true MD5s and the phase-1 and phase-2 ground truths.

Every image is drawn from its own generator seeded by (seed, split, index), so a dataset is the same bytes
whatever the number of worker processes.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import json
import math
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps
from tqdm import tqdm

import isc
from isc.io import (
    ID_PATTERNS,
    REGION_BUCKETS,
    InputError,
    atomic_path,
    images_prefix,
    write_ground_truth,
    write_metadata,
)

if TYPE_CHECKING:
    from isc.photos import BaseSource, PhotoOptions

MANIFEST = "isc_synth.json"
SPLIT_CODES = {"reference": 1, "training": 2, "query": 3}  # the second word of every image's seed
ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16, 5 / 4)
WORDS = (
    "copy detection sale today breaking news summer holiday best friends love this photo look wow cat dog "
    "lunch beach city night party game score win follow share like new old original fake real meme omg lol"
).split()

Edit = Callable[[Image.Image, np.random.Generator, Sequence[Image.Image]], Image.Image]
EDITS: dict[str, Edit] = {}
EDIT_WEIGHTS: dict[str, float] = {}
PHOTOMETRIC_EDITS: set[str] = set()  # edits that keep every pixel where it was (cheap similarity checks rely on it)


# ------------------------------------------------------------------------------------------ helpers


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _natural_colour(rng: np.random.Generator, hue: float | None = None) -> tuple[int, int, int]:
    """A colour as photos have them: mostly muted, sometimes vivid, near ``hue`` when given."""
    hue = rng.random() if hue is None else (hue + rng.normal(0, 0.06)) % 1.0
    saturation, value = rng.beta(1.8, 2.2), rng.uniform(0.12, 0.97)
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def _rgb(image: Image.Image) -> Image.Image:
    """RGB, transparent parts on white, at least 2 px a side (so every edit has room to work)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert("RGB")
    if min(image.size) < 2:
        image = image.resize((max(2, image.width), max(2, image.height)), Image.Resampling.NEAREST)
    return image


def _font(size: float) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, int(size)))


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


def _noise_field(rng: np.random.Generator, width: int, height: int, octaves: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1], [height, width] float32: clouds, terrain, fabric."""
    field = np.zeros((height, width), np.float32)
    cells, amplitude = int(rng.integers(2, 6)), 1.0
    for _ in range(octaves):
        grid = rng.random((cells, cells), dtype=np.float32)
        field += amplitude * np.asarray(Image.fromarray(grid, "F").resize((width, height), Image.Resampling.BICUBIC))
        cells, amplitude = cells * 2, amplitude * float(rng.uniform(0.4, 0.65))
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def _palette(rng: np.random.Generator, values: np.ndarray, n_colours: int, hue: float) -> np.ndarray:
    """Map values in [0, 1] through a gradient of related colours, dark to light: uint8 [h, w, 3]."""
    stops = np.linspace(0, 1, n_colours)
    hues = [hue if rng.random() < 0.75 else (hue + 0.5) % 1.0 for _ in range(n_colours)]
    colours = np.array(sorted((_natural_colour(rng, h) for h in hues), key=sum), np.float32)
    levels = np.linspace(0, 1, 256)
    table = np.stack([np.interp(levels, stops, colours[:, c]) for c in range(3)], axis=-1).astype(np.uint8)
    return table[(np.clip(values, 0, 1) * 255).astype(np.uint8)]  # a lookup table: far cheaper than interp per pixel


def _texture(rng: np.random.Generator, width: int, height: int, hue: float | None = None) -> np.ndarray:
    """A background or fill: gradients, noise, stripes, a landscape-like split; uint8 [h, w, 3]."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x / max(width - 1, 1), y / max(height - 1, 1)
    kind = rng.integers(0, 5)
    if kind == 0:  # linear gradient
        angle = rng.uniform(0, 2 * np.pi)
        t = x * np.cos(angle) + y * np.sin(angle)
        values = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    elif kind == 1:  # radial gradient
        cx, cy = rng.uniform(0, 1, 2)
        values = np.clip(np.hypot(x - cx, y - cy) / rng.uniform(0.4, 1.2), 0, 1)
    elif kind == 2:  # clouds / terrain
        values = _noise_field(rng, width, height, octaves=int(rng.integers(3, 6)))
    elif kind == 3:  # stripes or checks, modulated by noise
        angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 25)
        t = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)))
        if rng.random() < 0.4:
            t = t * np.sin(2 * np.pi * freq * (-x * np.sin(angle) + y * np.cos(angle)))
        values = np.clip(0.5 + 0.35 * t + 0.3 * (_noise_field(rng, width, height, 3) - 0.5), 0, 1)
    else:  # sky over ground
        horizon = rng.uniform(0.3, 0.7) + 0.08 * (_noise_field(rng, width, 1, 3)[0] - 0.5)
        ground = _noise_field(rng, width, height, 5)
        values = np.where(y < horizon[None, :], 0.45 * y / horizon[None, :], 0.55 + 0.45 * ground)
    return _palette(rng, values, int(rng.integers(2, 5)), rng.random() if hue is None else hue)


def _shape_mask(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """One filled shape (ellipse, box, polygon, slice, thick line) as an 'L' mask."""
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    size = rng.uniform(0.1, 0.6) * min(width, height)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    box = [cx - size * rng.uniform(0.5, 1.5), cy - size * rng.uniform(0.5, 1.5), cx + size, cy + size]
    box = [min(box[0], box[2] - 1), min(box[1], box[3] - 1), box[2], box[3]]
    kind = rng.integers(0, 6)
    if kind == 0:
        draw.ellipse(box, fill=255)
    elif kind == 1:
        draw.rectangle(box, fill=255)
    elif kind == 2:
        draw.rounded_rectangle(box, radius=size * 0.2, fill=255)
    elif kind == 3:
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = size * rng.uniform(0.4, 1.0, n)
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii, strict=True)], fill=255)
    elif kind == 4:
        start = rng.uniform(0, 360)
        draw.pieslice(box, start, start + rng.uniform(60, 300), fill=255)
    else:
        points = [(float(rng.uniform(0, width)), float(rng.uniform(0, height))) for _ in range(int(rng.integers(2, 5)))]
        draw.line(points, fill=255, width=max(1, int(size * rng.uniform(0.05, 0.2))))
    return mask


def _draw_text(image: Image.Image, rng: np.random.Generator, n_lines: int, scale: float) -> None:
    draw = ImageDraw.Draw(image)
    for _ in range(n_lines):
        font = _font(scale * image.height * rng.uniform(0.5, 1.5))
        xy = (float(rng.uniform(-0.1, 0.7) * image.width), float(rng.uniform(-0.05, 0.9) * image.height))
        stroke = int(rng.integers(0, 3))
        draw.text(xy, _words(rng, int(rng.integers(1, 5))), font=font, fill=_colour(rng),
                  stroke_width=stroke, stroke_fill=_colour(rng))


def _draw_emoji(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, r: float) -> None:
    """A smiley, heart, star or badge made of Pillow primitives (no emoji font needed)."""
    kind = rng.integers(0, 4)
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == 0:
        draw.ellipse(box, fill=(255, 204, 30), outline=(120, 80, 0), width=max(1, int(r / 12)))
        for ex in (cx - r * 0.35, cx + r * 0.35):
            draw.ellipse([ex - r * 0.1, cy - r * 0.4, ex + r * 0.1, cy - r * 0.05], fill=(40, 30, 20))
        draw.arc([cx - r * 0.55, cy - r * 0.3, cx + r * 0.55, cy + r * 0.6], 20, 160, fill=(40, 30, 20),
                 width=max(1, int(r / 8)))
    elif kind == 1:
        colour = _colour(rng, 150, 256)[:1] + (int(rng.integers(0, 80)), int(rng.integers(40, 120)))
        draw.ellipse([cx - r, cy - r * 0.8, cx, cy + r * 0.1], fill=colour)
        draw.ellipse([cx, cy - r * 0.8, cx + r, cy + r * 0.1], fill=colour)
        draw.polygon([(cx - r * 0.97, cy - r * 0.2), (cx + r * 0.97, cy - r * 0.2), (cx, cy + r)], fill=colour)
    elif kind == 2:
        points = [(cx + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
                   cy - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5)) for i in range(10)]
        draw.polygon(points, fill=_colour(rng, 100), outline=(30, 30, 30))
    else:
        draw.ellipse(box, fill=_colour(rng), outline=_colour(rng), width=max(1, int(r / 5)))
        draw.text((cx, cy), str(rng.integers(1, 100)), font=_font(r), fill=(255, 255, 255), anchor="mm")


def _image_with_size(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[int, int]:
    long_side = int(rng.integers(min_size, max_size + 1))
    aspect = ASPECTS[int(rng.integers(0, len(ASPECTS)))] * float(rng.uniform(0.93, 1.07))
    if aspect >= 1:
        return long_side, max(8, round(long_side / aspect))
    return max(8, round(long_side * aspect)), long_side


# --------------------------------------------------------------------------------------- base image


def base_image(rng: np.random.Generator, min_size: int = 200, max_size: int = 400) -> Image.Image:
    """A procedural photo-like RGB image whose long side is in [min_size, max_size], aspect ratios 9:16 to 16:9."""
    width, height = _image_with_size(rng, min_size, max_size)
    hue = rng.random()  # most colours of a picture stay near one hue, as under one light
    canvas = Image.fromarray(_texture(rng, width, height, hue))
    for _ in range(int(rng.integers(3, 12))):
        mask = _shape_mask(rng, width, height)
        box = mask.getbbox()
        if box is None:
            continue
        if rng.random() < 0.35:  # a soft shadow lifts the object off the background
            dx, dy = int(rng.integers(-8, 9)), int(rng.integers(2, 10))
            shadow_box = (max(0, box[0] - 12), max(0, box[1] - 12), min(width, box[2] + 12), min(height, box[3] + 12))
            shadow = mask.crop((shadow_box[0] - dx, shadow_box[1] - dy, shadow_box[2] - dx, shadow_box[3] - dy))
            shadow = shadow.filter(ImageFilter.GaussianBlur(4)).point([v // 2 for v in range(256)])
            canvas.paste((0, 0, 0), shadow_box, shadow)
        near = hue if rng.random() < 0.6 else None
        size = (box[2] - box[0], box[3] - box[1])
        fill = Image.fromarray(_texture(rng, *size, near)) if rng.random() < 0.5 else _natural_colour(rng, near)
        opacity = 255 if rng.random() < 0.7 else int(rng.integers(120, 230))
        canvas.paste(fill, box, mask.crop(box).point([v * opacity // 255 for v in range(256)]))
    if rng.random() < 0.5:
        _draw_text(canvas, rng, int(rng.integers(1, 3)), scale=0.08)
    if rng.random() < 0.6:  # lens softness
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    pixels = np.asarray(canvas, np.float32)
    y, x = np.mgrid[-1:1:height * 1j, -1:1:width * 1j].astype(np.float32)
    vignette = 1 - rng.uniform(0, 0.45) * (x**2 + y**2) / 2
    tint = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    sensor_noise = rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(rng.uniform(2, 10))
    pixels = pixels * vignette[..., None] * tint + sensor_noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# -------------------------------------------------------------------------------------------- edits


def register_edit(name: str, weight: float = 1.0, photometric: bool = False) -> Callable[[Edit], Edit]:
    """Add an edit to :data:`EDITS`; the registered function accepts any mode and size and returns RGB."""

    def wrap(edit: Edit) -> Edit:
        def run(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
            return _rgb(edit(_rgb(image), rng, overlays))

        run.__name__, run.__doc__ = edit.__name__, edit.__doc__
        EDITS[name], EDIT_WEIGHTS[name] = run, weight
        if photometric:
            PHOTOMETRIC_EDITS.add(name)
        return run

    return wrap


@register_edit("crop", weight=2.0)
def crop(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Keep a random window of 20-90% of the area."""
    w, h = image.size
    area, aspect = rng.uniform(0.2, 0.9) * w * h, math.exp(rng.uniform(-0.4, 0.4))
    cw, ch = min(w, max(1, round(math.sqrt(area * aspect)))), min(h, max(1, round(math.sqrt(area / aspect))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x0, y0, x0 + cw, y0 + ch))


@register_edit("rotate")
def rotate(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """A quarter turn, or a small tilt with the corners filled."""
    if rng.random() < 0.35:
        return image.transpose((Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                Image.Transpose.ROTATE_270)[int(rng.integers(0, 3))])
    return image.rotate(float(rng.uniform(-35, 35)), Image.Resampling.BILINEAR, expand=rng.random() < 0.6,
                        fillcolor=_colour(rng))


@register_edit("flip")
def flip(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Mirror left-right (mostly) or upside down."""
    return ImageOps.mirror(image) if rng.random() < 0.75 else ImageOps.flip(image)


@register_edit("scale", photometric=True)
def scale(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Resize by 0.3-1.5 times, keeping the aspect ratio."""
    factor = rng.uniform(0.3, 1.5)
    return image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                        Image.Resampling.BILINEAR)


@register_edit("aspect", photometric=True)
def aspect(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Stretch one axis against the other by up to 1.8 times."""
    ratio = math.exp(rng.uniform(-0.6, 0.6))
    return image.resize((max(1, round(image.width * ratio)), max(1, round(image.height / ratio))),
                        Image.Resampling.BILINEAR)


@register_edit("pad")
def pad(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Borders of a flat colour, each side 0-35% of the image."""
    w, h = image.size
    left, right = (int(v) for v in rng.uniform(0, 0.35, 2) * w)
    top, bottom = (int(v) for v in rng.uniform(0, 0.35, 2) * h)
    canvas = Image.new("RGB", (w + left + right, h + top + bottom), _colour(rng))
    canvas.paste(image, (left, top))
    return canvas


@register_edit("colour", weight=1.5, photometric=True)
def colour(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Brightness, contrast, saturation, hue, grayscale, inversion or posterisation."""
    kind = rng.integers(0, 7)
    if kind == 0:
        return ImageEnhance.Brightness(image).enhance(rng.uniform(0.4, 1.7))
    if kind == 1:
        return ImageEnhance.Contrast(image).enhance(rng.uniform(0.3, 1.8))
    if kind == 2:
        return ImageEnhance.Color(image).enhance(rng.uniform(0, 2.5))
    if kind == 3:
        hsv = np.asarray(image.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(20, 236))) % 256
        return Image.fromarray(hsv, "HSV").convert("RGB")
    if kind == 4:
        return ImageOps.grayscale(image)
    if kind == 5:
        return ImageOps.invert(image)
    return ImageOps.posterize(image, int(rng.integers(1, 4)))


@register_edit("blur", photometric=True)
def blur(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Gaussian blur, radius 0.3-2% of the long side."""
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.003, 0.02) * max(image.size)))


@register_edit("noise", photometric=True)
def noise(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Gaussian noise (sigma 4-35) or salt and pepper."""
    pixels = np.asarray(image, np.float32)
    if rng.random() < 0.7:
        pixels = pixels + rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(rng.uniform(4, 35))
    else:
        salt = rng.random(pixels.shape[:2]) < rng.uniform(0.02, 0.1)
        pixels[salt] = rng.choice(np.array([0.0, 255.0]), int(salt.sum()))[:, None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@register_edit("pixelize", photometric=True)
def pixelize(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Blocks of 1-4% of the long side."""
    block = max(1.0, rng.uniform(0.01, 0.04) * max(image.size))
    small = image.resize((max(1, round(image.width / block)), max(1, round(image.height / block))), Image.Resampling.BOX)
    return small.resize(image.size, Image.Resampling.NEAREST)


@register_edit("jpeg", photometric=True)
def jpeg(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Re-compress at JPEG quality 3-40."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(3, 41)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


@register_edit("text", weight=1.5)
def text(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """One to four lines of caption text in random colours and sizes."""
    image = image.copy()
    _draw_text(image, rng, int(rng.integers(1, 5)), scale=rng.uniform(0.06, 0.16))
    return image


@register_edit("emoji", weight=1.5)
def emoji(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """One to five emoji-like stickers (smiley, heart, star, badge), 5-25% of the short side in radius."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 6))):
        radius = max(2.0, rng.uniform(0.05, 0.25) * min(image.size))
        _draw_emoji(draw, rng, rng.uniform(0, image.width), rng.uniform(0, image.height), radius)
    return image


def _background(rng: np.random.Generator, overlays: Sequence[Image.Image], width: int, height: int) -> Image.Image:
    """One of the overlay images cropped to (width, height), or a fresh texture when none is given."""
    if not overlays:
        return Image.fromarray(_texture(rng, width, height))
    other = _rgb(overlays[int(rng.integers(0, len(overlays)))])
    return ImageOps.fit(other, (width, height), Image.Resampling.BILINEAR)


@register_edit("overlay_onto", weight=1.5)
def overlay_onto(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Paste the image, shrunk to 30-80% of the width, onto another image, sometimes half transparent."""
    w, h = image.size
    canvas = _background(rng, overlays, max(2, round(w * rng.uniform(0.9, 1.3))), max(2, round(h * rng.uniform(0.9, 1.3))))
    factor = rng.uniform(0.3, 0.8) * min(canvas.width / w, canvas.height / h)
    small = image.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BILINEAR)
    xy = (int(rng.integers(0, canvas.width - small.width + 1)), int(rng.integers(0, canvas.height - small.height + 1)))
    opacity = 255 if rng.random() < 0.7 else int(rng.integers(150, 240))
    canvas.paste(small, xy, Image.new("L", small.size, opacity))
    return canvas


@register_edit("overlay_image")
def overlay_image(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Cover 10-35% of the image with a patch of another image, opaque or blended."""
    w, h = image.size
    area = rng.uniform(0.1, 0.35) * w * h
    pw, ph = min(w, max(1, round(math.sqrt(area)))), min(h, max(1, round(math.sqrt(area))))
    patch = _background(rng, overlays, pw, ph)
    xy = (int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1)))
    image = image.copy()
    image.paste(patch, xy, Image.new("L", patch.size, 255 if rng.random() < 0.5 else int(rng.integers(90, 200))))
    return image


@register_edit("screenshot")
def screenshot(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """The image inside a social-media post: header with avatar and name, caption, action icons."""
    w, h = image.size
    dark = rng.random() < 0.3
    ink, paper = ((230, 230, 230), (24, 24, 28)) if dark else ((30, 30, 30), (255, 255, 255))
    margin, header, footer = round(w * rng.uniform(0, 0.06)), max(4, round(w * 0.14)), max(4, round(w * 0.2))
    canvas = Image.new("RGB", (w + 2 * margin, h + header + footer), paper)
    canvas.paste(image, (margin, header))
    draw = ImageDraw.Draw(canvas)
    unit = header / 4
    draw.ellipse([unit, unit, 3 * unit, 3 * unit], fill=_colour(rng))
    draw.text((4 * unit, unit), _words(rng, 2), font=_font(unit * 1.1), fill=ink)
    y = header + h + footer * 0.12
    for i in range(3):
        draw.ellipse([unit + i * 3 * unit, y, 2.6 * unit + i * 3 * unit, y + 1.6 * unit], outline=ink, width=max(1, int(unit / 6)))
    draw.text((unit, y + 2.2 * unit), _words(rng, int(rng.integers(2, 7))), font=_font(unit), fill=ink)
    return canvas


@register_edit("meme")
def meme(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """A white band above the image with a centred caption in black."""
    w, h = image.size
    band = max(4, round(h * rng.uniform(0.15, 0.35)))
    canvas = Image.new("RGB", (w, h + band), (255, 255, 255))
    canvas.paste(image, (0, band))
    ImageDraw.Draw(canvas).text((w / 2, band / 2), _words(rng, int(rng.integers(1, 4))), font=_font(band * 0.4),
                                fill=(0, 0, 0), anchor="mm")
    return canvas


@register_edit("perspective")
def perspective(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """Move the corners by up to 15% of the size, as if photographed at an angle."""
    w, h = image.size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    dst = src + rng.uniform(-0.15, 0.15, (4, 2)) * [w, h]
    # coefficients mapping output (dst) points back to input (src) points, as Image.transform wants
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
    coefficients = np.linalg.lstsq(np.array(rows), src.reshape(-1), rcond=None)[0]
    return image.transform((w, h), Image.Transform.PERSPECTIVE, tuple(coefficients), Image.Resampling.BILINEAR,
                           fillcolor=_colour(rng))


EDIT_CHAIN_LENGTHS = (1, 2, 3, 4)
EDIT_CHAIN_PROBABILITIES = (0.35, 0.3, 0.2, 0.15)


def random_edit_chain(
    image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()
) -> tuple[Image.Image, list[str]]:
    """Apply 1-4 distinct random edits in a random order; returns the image and the edits' names."""
    names = list(EDITS)
    weights = np.array([EDIT_WEIGHTS[n] for n in names])
    n = int(rng.choice(EDIT_CHAIN_LENGTHS, p=EDIT_CHAIN_PROBABILITIES))
    chosen = [names[i] for i in rng.choice(len(names), size=n, replace=False, p=weights / weights.sum())]
    for name in chosen:
        image = EDITS[name](image, rng, overlays)
    return image, chosen


def random_edit(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """One or a chain of random DISC21-style edits of ``image`` (any mode); ``overlays`` are images to paste
    it onto or over it (fresh textures when empty). Returns an RGB image."""
    return random_edit_chain(image, rng, overlays)[0]


# ------------------------------------------------------------------------------------------ dataset


@dataclass(frozen=True)
class _Task:
    split: str
    index: int
    image_id: str
    source: str | None = None  # for a query, the reference file it copies (None: a distractor)
    background: str | None = None  # for a query, a training image that edits may paste it onto
    base: BaseSource | None = None  # the photo tile or drawing to draw from (None: a procedural image)


def image_id(split: str, index: int) -> str:
    """The competition's id of the index-th image of a split (queries: phase 2 starts at Q50000)."""
    return {"query": f"Q{index:05d}", "reference": f"R{index:06d}", "training": f"T{index:06d}"}[split]


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _make_image(task: _Task, out_dir: Path, seed: int, min_size: int, max_size: int) -> tuple[str, str, list[str]]:
    """Draw, encode and write one image; returns (id, md5 of the file, edits applied)."""
    rng = _image_rng(seed, task.split, task.index)
    edits: list[str] = []
    if task.split == "query":
        if task.source is None:  # a distractor: an image that is in neither the references nor the training set
            original = _base_image(task, rng, min_size, max_size)
        else:
            with Image.open(task.source) as f:
                original = f.convert("RGB")
        if task.background is None:
            backgrounds = [base_image(rng, min_size, max_size)]
        else:  # as in DISC21, the other image of an overlay edit comes from the dataset
            with Image.open(task.background) as f:
                backgrounds = [f.convert("RGB")]
        image, edits = random_edit_chain(original, rng, backgrounds)
        if max(image.size) > 2 * max_size or min(image.size) < 16:  # keep queries in a sane size range
            factor = min(2 * max_size / max(image.size), max(1.0, 16 / min(image.size)))
            image = image.resize((max(16, round(image.width * factor)), max(16, round(image.height * factor))),
                                 Image.Resampling.BILINEAR)
        quality = int(rng.integers(60, 96))
    else:
        image = _base_image(task, rng, min_size, max_size)
        quality = int(rng.integers(85, 98))  # photos as shared online: high quality, fine grain
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    data = buffer.getvalue()
    _write_atomic(out_dir / f"{task.split}_images" / f"{task.image_id}.jpg", data)
    return task.image_id, hashlib.md5(data).hexdigest(), edits


def _base_image(task: _Task, rng: np.random.Generator, min_size: int, max_size: int) -> Image.Image:
    if task.base is None:
        return base_image(rng, min_size, max_size)
    from isc.photos import render_base  # here only: isc.photos imports this module

    return render_base(task.base, rng, min_size, max_size)


def _run_task(args: tuple[_Task, Path, int, int, int]) -> tuple[str, str, list[str]]:
    return _make_image(*args)


def _match_plan(rng: np.random.Generator, first: int, n_queries: int, n_references: int, match_fraction: float) -> dict[str, str]:
    """Query id -> reference id for the queries that copy a reference, in a shuffled pairing."""
    n_match = min(round(n_queries * match_fraction), n_queries) if n_references else 0
    matched = np.sort(rng.choice(n_queries, size=n_match, replace=False))
    references = rng.choice(n_references, size=n_match, replace=n_match > n_references)
    return {image_id("query", first + int(q)): image_id("reference", int(r)) for q, r in zip(matched, references, strict=True)}


def _check_out_dir(out_dir: Path) -> None:
    """Refuse a non-empty folder that a previous run of isc-synth did not write."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        manifest = out_dir / MANIFEST
        try:
            ok = json.loads(manifest.read_text()).get("generator") == "isc-synth"
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise InputError(f"{out_dir}: folder is not empty and was not written by isc-synth (no {MANIFEST}); "
                             "choose a new or empty folder")


def _write_json(path: Path, content: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")


def generate_dataset(
    out_dir: str | Path,
    seed: int = 0,
    references: int = 600,
    queries: int = 300,
    phase2_queries: int = 100,
    training: int = 600,
    min_size: int = 200,
    max_size: int = 400,
    match_fraction: float = 0.5,
    workers: int | None = None,
    quiet: bool = False,
    base_images: PhotoOptions | None = None,
) -> dict[str, int]:
    """Write a synthetic dataset in the competition's layout under ``out_dir``; returns counts.

    ``match_fraction`` of the queries of each phase are edited copies of random references, the others
    edited images found nowhere else. Images' long sides lie in [min_size, max_size] (queries up to twice).
    ``base_images``: cut the base images from real photos and drawings (:mod:`isc.photos`), not procedural ones.
    """
    import pandas as pd  # here only: isc-train imports this module for its edits, on machines without pandas

    for name, value in (("seed", seed), ("references", references), ("queries", queries),
                        ("phase2_queries", phase2_queries), ("training", training)):
        if value < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if queries > 50_000 or phase2_queries > 50_000 or references > 1_000_000 or training > 1_000_000:
        raise InputError("at most 50,000 queries per phase and 1,000,000 references or training images (the ids' range)")
    if not 8 <= min_size <= max_size:
        raise InputError(f"image sizes need 8 <= min_size <= max_size, got {min_size} and {max_size}")
    if not 0 <= match_fraction <= 1:
        raise InputError(f"match fraction must be in [0, 1], got {match_fraction}")
    if base_images is not None:
        base_images.check()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    for split in ("query", "reference", "training"):
        (out_dir / f"{split}_images").mkdir(parents=True, exist_ok=True)
    params = {"seed": seed, "references": references, "queries": queries, "phase2_queries": phase2_queries,
              "training": training, "min_size": min_size, "max_size": max_size, "match_fraction": match_fraction}
    if base_images is not None:
        params["base_images"] = base_images.params()
    # written first, so that an interrupted run can be overwritten by the next one
    _write_json(out_dir / MANIFEST, {"generator": "isc-synth", "isc_version": isc.__version__, "complete": False, "params": params})

    plan_rng = np.random.default_rng([seed, 0])
    matches = {**_match_plan(plan_rng, 0, queries, references, match_fraction),
               **_match_plan(plan_rng, 50_000, phase2_queries, references, match_fraction)}
    ref_path = {i: str(out_dir / "reference_images" / f"{i}.jpg") for i in matches.values()}
    first_stage = [_Task("reference", i, image_id("reference", i)) for i in range(references)]
    first_stage += [_Task("training", i, image_id("training", i)) for i in range(training)]
    query_ids = [image_id("query", i) for i in range(queries)] + [image_id("query", 50_000 + i) for i in range(phase2_queries)]
    backgrounds = [str(out_dir / "training_images" / f"{image_id('training', int(i))}.jpg")
                   for i in plan_rng.integers(0, training, len(query_ids))] if training else [None] * len(query_ids)
    second_stage = [_Task("query", int(q[1:]), q, ref_path.get(matches.get(q, "")), background)
                    for q, background in zip(query_ids, backgrounds, strict=True)]
    if base_images is not None:  # tiles of photos and drawings, each used once, instead of procedural images
        from isc.photos import with_base_images

        tasks = with_base_images(first_stage + second_stage, base_images, seed, quiet)
        first_stage, second_stage = tasks[:len(first_stage)], tasks[len(first_stage):]

    common = (out_dir, seed, min_size, max_size)
    results: dict[str, tuple[str, list[str]]] = {}
    n_workers = max(1, min(workers or os.cpu_count() or 1, 16))
    with tqdm(total=len(first_stage) + len(second_stage), desc="isc-synth", unit="img", disable=quiet) as bar:
        if n_workers == 1:
            for task in first_stage + second_stage:
                image, md5, edits = _make_image(task, *common)
                results[image] = (md5, edits)
                bar.update()
        else:
            # spawn: safe beside threads (an S3 server, a test runner); every image has its own seed anyway
            with multiprocessing.get_context("spawn").Pool(n_workers) as pool:
                for stage in (first_stage, second_stage):  # queries read the references written by the first stage
                    for image, md5, edits in pool.imap_unordered(_run_task, [(t, *common) for t in stage], chunksize=4):
                        results[image] = (md5, edits)
                        bar.update()

    for split, tasks in (("reference", first_stage[:references]), ("training", first_stage[references:]),
                         ("query", second_stage)):
        ids = [t.image_id for t in tasks]
        uri = f"s3://{REGION_BUCKETS['us-west']}/{images_prefix(split)}"
        write_metadata(out_dir / f"{split}_metadata.csv", pd.DataFrame(
            {"image_id": ids, "s3_uri": [f"{uri}{i}.jpg" for i in ids], "md5_checksum": [results[i][0] for i in ids]}))
        _remove_stale_images(out_dir / f"{split}_images", set(ids), split)
    for name, ids in (("ground_truth.csv", query_ids[:queries]), ("ground_truth_phase2.csv", query_ids[queries:])):
        write_ground_truth(out_dir / name, pd.DataFrame({"query_id": ids, "reference_id": [matches.get(q, "") for q in ids]}))

    summary = {"references": references, "queries": queries, "phase2_queries": phase2_queries, "training": training,
               "matches": sum(1 for q in query_ids[:queries] if q in matches),
               "phase2_matches": sum(1 for q in query_ids[queries:] if q in matches)}
    _write_json(out_dir / MANIFEST, {"generator": "isc-synth", "isc_version": isc.__version__, "complete": True,
                                     "params": params, "summary": summary,
                                     "query_edits": {q: results[q][1] for q in query_ids},
                                     **({"base_images": {t.image_id: t.base.record() for t in first_stage + second_stage
                                                         if t.base is not None}} if base_images else {})})
    return summary


def _remove_stale_images(folder: Path, keep: set[str], split: str) -> None:
    """Drop images a previous, larger run left behind (only files named like this split's ids)."""
    for path in folder.iterdir():
        if path.suffix == ".jpg" and ID_PATTERNS[split].fullmatch(path.stem) and path.stem not in keep:
            path.unlink()


def read_manifest(out_dir: str | Path) -> dict:
    """The parameters, summary and per-query edits that isc-synth recorded in ``out_dir``."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{out_dir}: no {MANIFEST}, not an isc-synth dataset")
    return json.loads(path.read_text())
