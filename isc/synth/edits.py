"""The kinds of edits DISC21 applied to its queries, written with Pillow: crops, rotations, flips, scaling,
aspect changes, padding, colour changes, blur, noise, pixelisation, JPEG re-compression, text and emoji
overlays, pasting onto another image, screenshot and meme frames (:data:`EDITS`, :func:`random_edit`).

isc-synth edits its queries with them and isc-train its augmented views."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from isc.synth.draw import default_font, draw_emoji, draw_text, random_colour, random_words, texture, to_rgb

Edit = Callable[[Image.Image, np.random.Generator, Sequence[Image.Image]], Image.Image]
EDITS: dict[str, Edit] = {}
EDIT_WEIGHTS: dict[str, float] = {}
PHOTOMETRIC_EDITS: set[str] = set()  # edits that keep every pixel where it was (cheap similarity checks rely on it)


def register_edit(name: str, weight: float = 1.0, photometric: bool = False) -> Callable[[Edit], Edit]:
    """Add an edit to :data:`EDITS`; the registered function accepts any mode and size and returns RGB."""

    def wrap(edit: Edit) -> Edit:
        def run(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
            return to_rgb(edit(to_rgb(image), rng, overlays))

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
                        fillcolor=random_colour(rng))


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
    canvas = Image.new("RGB", (w + left + right, h + top + bottom), random_colour(rng))
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
    draw_text(image, rng, int(rng.integers(1, 5)), scale=rng.uniform(0.06, 0.16))
    return image


@register_edit("emoji", weight=1.5)
def emoji(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """One to five emoji-like stickers (smiley, heart, star, badge), 5-25% of the short side in radius."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 6))):
        radius = max(2.0, rng.uniform(0.05, 0.25) * min(image.size))
        draw_emoji(draw, rng, rng.uniform(0, image.width), rng.uniform(0, image.height), radius)
    return image


def _background(rng: np.random.Generator, overlays: Sequence[Image.Image], width: int, height: int) -> Image.Image:
    """One of the overlay images cropped to (width, height), or a fresh texture when none is given."""
    if not overlays:
        return Image.fromarray(texture(rng, width, height))
    other = to_rgb(overlays[int(rng.integers(0, len(overlays)))])
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
    draw.ellipse([unit, unit, 3 * unit, 3 * unit], fill=random_colour(rng))
    draw.text((4 * unit, unit), random_words(rng, 2), font=default_font(unit * 1.1), fill=ink)
    y = header + h + footer * 0.12
    for i in range(3):
        draw.ellipse([unit + i * 3 * unit, y, 2.6 * unit + i * 3 * unit, y + 1.6 * unit], outline=ink, width=max(1, int(unit / 6)))
    draw.text((unit, y + 2.2 * unit), random_words(rng, int(rng.integers(2, 7))), font=default_font(unit), fill=ink)
    return canvas


@register_edit("meme")
def meme(image: Image.Image, rng: np.random.Generator, overlays: Sequence[Image.Image] = ()) -> Image.Image:
    """A white band above the image with a centred caption in black."""
    w, h = image.size
    band = max(4, round(h * rng.uniform(0.15, 0.35)))
    canvas = Image.new("RGB", (w, h + band), (255, 255, 255))
    canvas.paste(image, (0, band))
    ImageDraw.Draw(canvas).text((w / 2, band / 2), random_words(rng, int(rng.integers(1, 4))), font=default_font(band * 0.4),
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
                           fillcolor=random_colour(rng))


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
