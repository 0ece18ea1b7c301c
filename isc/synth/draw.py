"""Procedural images drawn from a seed: colours, noise fields, textures, shapes, text and emoji, and
:func:`base_image`, a photo-like picture (textured background, shapes, text, lens softness, sensor noise).

Every function draws from the generator it is given, in a fixed order, so an image is the same bytes for a seed."""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from isc.core.images import on_white

ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16, 5 / 4)
WORDS = (
    "copy detection sale today breaking news summer holiday best friends love this photo look wow cat dog "
    "lunch beach city night party game score win follow share like new old original fake real meme omg lol"
).split()


# ------------------------------------------------------------------------------------------ helpers


def random_colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    """A uniformly random RGB colour, each channel in [lo, hi)."""
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def natural_colour(rng: np.random.Generator, hue: float | None = None) -> tuple[int, int, int]:
    """A colour as photos have them: mostly muted, sometimes vivid, near ``hue`` when given."""
    hue = rng.random() if hue is None else (hue + rng.normal(0, 0.06)) % 1.0
    saturation, value = rng.beta(1.8, 2.2), rng.uniform(0.12, 0.97)
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, transparent parts on white, at least 2 px a side (so every edit has room to work)."""
    image = on_white(image).convert("RGB")
    if min(image.size) < 2:
        image = image.resize((max(2, image.width), max(2, image.height)), Image.Resampling.NEAREST)
    return image


def default_font(size: float) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at ``size`` pixels (at least 6): no font file needed."""
    return ImageFont.load_default(size=max(6, int(size)))


def random_words(rng: np.random.Generator, n: int) -> str:
    """``n`` words of social-media captions, drawn with repetition."""
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
    colours = np.array(sorted((natural_colour(rng, h) for h in hues), key=sum), np.float32)
    levels = np.linspace(0, 1, 256)
    table = np.stack([np.interp(levels, stops, colours[:, c]) for c in range(3)], axis=-1).astype(np.uint8)
    return table[(np.clip(values, 0, 1) * 255).astype(np.uint8)]  # a lookup table: far cheaper than interp per pixel


def texture(rng: np.random.Generator, width: int, height: int, hue: float | None = None) -> np.ndarray:
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


def draw_text(image: Image.Image, rng: np.random.Generator, n_lines: int, scale: float) -> None:
    """Write ``n_lines`` captions on ``image`` in place, font height about ``scale`` of the image's height."""
    draw = ImageDraw.Draw(image)
    for _ in range(n_lines):
        font = default_font(scale * image.height * rng.uniform(0.5, 1.5))
        xy = (float(rng.uniform(-0.1, 0.7) * image.width), float(rng.uniform(-0.05, 0.9) * image.height))
        stroke = int(rng.integers(0, 3))
        draw.text(xy, random_words(rng, int(rng.integers(1, 5))), font=font, fill=random_colour(rng),
                  stroke_width=stroke, stroke_fill=random_colour(rng))


def draw_emoji(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, r: float) -> None:
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
        colour = random_colour(rng, 150, 256)[:1] + (int(rng.integers(0, 80)), int(rng.integers(40, 120)))
        draw.ellipse([cx - r, cy - r * 0.8, cx, cy + r * 0.1], fill=colour)
        draw.ellipse([cx, cy - r * 0.8, cx + r, cy + r * 0.1], fill=colour)
        draw.polygon([(cx - r * 0.97, cy - r * 0.2), (cx + r * 0.97, cy - r * 0.2), (cx, cy + r)], fill=colour)
    elif kind == 2:
        points = [(cx + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
                   cy - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5)) for i in range(10)]
        draw.polygon(points, fill=random_colour(rng, 100), outline=(30, 30, 30))
    else:
        draw.ellipse(box, fill=random_colour(rng), outline=random_colour(rng), width=max(1, int(r / 5)))
        draw.text((cx, cy), str(rng.integers(1, 100)), font=default_font(r), fill=(255, 255, 255), anchor="mm")


def random_image_size(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[int, int]:
    """(width, height): long side in [min_size, max_size], one of :data:`ASPECTS` give or take 7%."""
    long_side = int(rng.integers(min_size, max_size + 1))
    aspect = ASPECTS[int(rng.integers(0, len(ASPECTS)))] * float(rng.uniform(0.93, 1.07))
    if aspect >= 1:
        return long_side, max(8, round(long_side / aspect))
    return max(8, round(long_side * aspect)), long_side


# --------------------------------------------------------------------------------------- base image


def base_image(rng: np.random.Generator, min_size: int = 200, max_size: int = 400) -> Image.Image:
    """A procedural photo-like RGB image whose long side is in [min_size, max_size], aspect ratios 9:16 to 16:9."""
    width, height = random_image_size(rng, min_size, max_size)
    hue = rng.random()  # most colours of a picture stay near one hue, as under one light
    canvas = Image.fromarray(texture(rng, width, height, hue))
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
        fill = Image.fromarray(texture(rng, *size, near)) if rng.random() < 0.5 else natural_colour(rng, near)
        opacity = 255 if rng.random() < 0.7 else int(rng.integers(120, 230))
        canvas.paste(fill, box, mask.crop(box).point([v * opacity // 255 for v in range(256)]))
    if rng.random() < 0.5:
        draw_text(canvas, rng, int(rng.integers(1, 3)), scale=0.08)
    if rng.random() < 0.6:  # lens softness
        canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    pixels = np.asarray(canvas, np.float32)
    y, x = np.mgrid[-1:1:height * 1j, -1:1:width * 1j].astype(np.float32)
    vignette = 1 - rng.uniform(0, 0.45) * (x**2 + y**2) / 2
    tint = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    sensor_noise = rng.standard_normal(pixels.shape, dtype=np.float32) * np.float32(rng.uniform(2, 10))
    pixels = pixels * vignette[..., None] * tint + sensor_noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
