"""Fetch a folder of distinct photos and one of distinct drawings for ``isc-synth --photos DIR --drawings DIR``.

Free offline sources: Debian's wallpaper packages and its openclipart-png package, fetched with the
ordinary client (``apt-get download``, so a Debian or Ubuntu machine with its package lists) and unpacked
with ``dpkg -x``; nothing is installed. The wallpapers hold under a hundred distinct scenes once cleaned:

1. candidates: raster files of the wallpaper packages, short side >= --min-photo-side, opaque;
2. one file per scene: the same picture at several resolutions or aspect ratios and its light, dark or
   logo variants are grouped by name (``Flow/contents/images_dark/..``, ``adwaita-d``, ``Elephants_3840x2160``)
   and by the descriptor model (whole pictures, also against the colour-inverted picture, and tiles), and
   the variant with the most detailed tiles is kept;
3. patterns dropped: a picture whose detailed tiles look alike to the model (tiled wood, hexagons, a field
   of flowers, a sea of ripples: a tenth of its tile pairs at --pattern-similarity or more) would give
   references that copy each other in effect;
4. written as JPEGs (quality 95) with the long side at most --long-side, so that ``isc-synth --tile-size``
   means the same everywhere.

Drawings: openclipart PNGs whose visible part is at least --min-drawing-side and detailed enough, then the
near-duplicates (the same clip art in several colours, families of stars, flags) dropped by the model,
keeping the first in path order. ``OUT/sources.csv`` says where every output file comes from (the
packages' licences apply: see each package's ``usr/share/doc/PKG/copyright`` under CACHE/unpacked).

    python scripts/fetch_photos.py photocache photos     # -> photos/{photos,drawings}/
    isc-synth photoset --photos photos/photos --drawings photos/drawings

``--source games`` takes a disjoint pool from game packages instead (Endless Sky's planet-side photographs,
Wesnoth's portraits, Tux Paint's stamps, Endless Sky's sprites), for a second, held-out benchmark set:

    python scripts/fetch_photos.py gamescache games --source games --min-photo-side 300 --tile-size 256

Needs the network (Debian's mirrors) once; the cache makes a rerun offline. Not run by the tests.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from isc.cli.common import finite_float, positive_int
from isc.core.descriptors import read_descriptors
from isc.extract.extraction import extract, extraction_config, is_complete
from isc.models import create_model, default_model
from isc.synth.photos import detail, drawing_detail, grid_boxes

WALLPAPER_PACKAGES = ("gnome-backgrounds", "plasma-workspace-wallpapers", "mate-backgrounds", "ukui-wallpapers",
                      "sway-backgrounds", "lomiri-wallpapers", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04",
                      "lxqt-themes", "desktop-base", "xfdesktop4-data")
DRAWING_PACKAGE = "openclipart-png"
# a second, disjoint pool for a held-out benchmark set: Endless Sky's planet-side photographs (720 x 360, so
# cut with --tile-size 256 --min-photo-side 300), Wesnoth's portraits, Tux Paint's stamps and Endless Sky's
# rendered ships and planets as drawings
GAMES = "usr/share/games"
SOURCES = {
    "wallpapers": {"photos": {p: "" for p in WALLPAPER_PACKAGES},
                   "drawings": {DRAWING_PACKAGE: "usr/share/openclipart/png"}},
    "games": {"photos": {"endless-sky-data": f"{GAMES}/endless-sky/images/land"},
              "drawings": {"wesnoth-1.16-data": f"{GAMES}/wesnoth/1.16/data/core/images/portraits",
                           "tuxpaint-stamps-default": "usr/share/tuxpaint/stamps",
                           "endless-sky-data": f"{GAMES}/endless-sky/images"}},
}
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_PIXELS = 60_000_000  # a few clip-art PNGs are over 100 megapixels: not worth decoding
VARIANT_WORDS = re.compile(r"\d+x\d+|portrait|landscape|light|dark|bright|no-logo|logo|(?<=[-_])[ld]$")


# -------------------------------------------------------------------------------------------- fetch


def fetch(packages: list[str], cache: Path) -> dict[str, Path]:
    """``apt-get download`` the packages missing from CACHE/debs, ``dpkg -x`` each into CACHE/unpacked/PKG."""
    debs, unpacked = cache / "debs", cache / "unpacked"
    debs.mkdir(parents=True, exist_ok=True)
    unpacked.mkdir(exist_ok=True)
    missing = [p for p in packages if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    roots = {}
    for package in packages:
        root = unpacked / package
        if not root.is_dir():
            partial = unpacked / f".{package}.part"
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run(["dpkg", "-x", str(sorted(debs.glob(f"{package}_*.deb"))[-1]), str(partial)], check=True)
            partial.rename(root)
        roots[package] = root
    return roots


# ------------------------------------------------------------------------------------- descriptors


def embed(images: dict[str, Image.Image], work: Path, name: str, model_name: str, quiet: bool) -> dict[str, np.ndarray]:
    """Unit descriptors of in-memory images, by the toolkit's own extraction (files under ``work``); a rerun
    extracts again only what changed."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, image in images.items():
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=92)
        paths[key] = folder / f"{key}.jpg"
        if not paths[key].is_file() or paths[key].read_bytes() != buffer.getvalue():
            paths[key].write_bytes(buffer.getvalue())
    for stale in set(folder.iterdir()) - set(paths.values()):
        stale.unlink()
    output = work / f"{name}_{model_name.replace(':', '_').replace('/', '_')}.h5"
    model = create_model(model_name)
    if not is_complete(output, paths, extraction_config(model)):
        extract(paths, output, model, quiet=quiet)
    ids, descriptors, _ = read_descriptors(output)
    descriptors /= np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    return dict(zip(ids, descriptors, strict=True))


def _open_not_huge(path: Path) -> Image.Image | None:
    """The opened image (header only), or None when it is over MAX_PIXELS."""
    try:
        image = Image.open(path)
    except Image.DecompressionBombError:
        return None
    if image.width * image.height > MAX_PIXELS:
        image.close()
        return None
    return image


def _thumbnail(image: Image.Image, side: int) -> Image.Image:
    image = image.copy()
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image


# ------------------------------------------------------------------------------------------- photos


def scene_name(path: Path) -> str:
    """The scene a wallpaper file shows, by its name: plasma's folder, or the stem without variant words."""
    parts = path.parts
    if "contents" in parts:  # plasma: wallpapers/NAME/contents/images{,_dark}/WxH.ext
        return parts[parts.index("contents") - 1].lower()
    stem = VARIANT_WORDS.sub("", path.stem.lower())
    return re.sub(r"[-_ ]+", "-", stem).strip("-") or path.stem.lower()


def photo_candidates(folders: list[Path], min_side: int, long_side: int,
                     quiet: bool) -> dict[str, tuple[Path, Image.Image]]:
    """Opaque raster photos under ``folders`` with the short side >= min_side, read and scaled to long side
    <= long_side."""
    found, seen = {}, set()
    files = [p for folder in folders for p in sorted(folder.rglob("*"))
             if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()]
    for path in tqdm(files, desc="wallpapers", unit="file", disable=quiet):
        if path.resolve() in seen:  # plasma links every resolution's name to one file
            continue
        seen.add(path.resolve())
        image = _open_not_huge(path)
        if image is None:
            continue
        with image:
            if min(image.size) < min_side:
                continue
            image = image.convert("RGBA")
        if np.asarray(image.getchannel("A")).mean() < 0.99 * 255:  # meant to lie over a colour of the user's
            continue
        image = image.convert("RGB")
        if max(image.size) > long_side:
            factor = long_side / max(image.size)
            image = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.LANCZOS)
        found[f"p{len(found):04d}"] = (path, image)
    return found


def _find(groups: dict[str, str], x: str) -> str:
    while groups[x] != x:
        x = groups[x]
    return x


def distinct_photos(candidates: dict[str, tuple[Path, Image.Image]], args: argparse.Namespace, work: Path,
                    log: list[list[str]]) -> list[str]:
    """The candidates kept: one per scene, patterns dropped (each decision logged)."""
    tiles = {key: [box for box in grid_boxes(*image.size, args.tile_size) if detail(image.crop(box)) >= args.min_detail]
             for key, (_, image) in candidates.items()}
    wholes = {key: _thumbnail(image, 512) for key, (_, image) in candidates.items()}
    wholes |= {f"{key}i": ImageOps.invert(image) for key, image in wholes.items()}
    tile_images = {f"{key}t{k:02d}": _thumbnail(candidates[key][1].crop(box), 384)
                   for key, boxes in tiles.items() for k, box in enumerate(boxes)}
    whole = embed(wholes, work, "wallpapers", args.model, args.quiet)
    tile = embed(tile_images, work, "wallpaper_tiles", args.model, args.quiet)
    keys = list(candidates)
    tile_vectors = {key: np.array([tile[f"{key}t{k:02d}"] for k in range(len(tiles[key]))]) for key in keys}
    groups = {key: key for key in keys}
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            same_name = scene_name(candidates[a][0]) == scene_name(candidates[b][0])
            similar = max(whole[a] @ whole[b], whole[a] @ whole[f"{b}i"]) >= args.duplicate_similarity
            # a crop of the scene at another aspect ratio: some tile of one is a copy of some tile of the other
            shared_tile = (len(tile_vectors[a]) and len(tile_vectors[b])
                           and float((tile_vectors[a] @ tile_vectors[b].T).max()) >= args.tile_copy_similarity)
            if same_name or similar or shared_tile:
                groups[_find(groups, a)] = _find(groups, b)
    kept = []
    for key in keys:
        members = [k for k in keys if _find(groups, k) == _find(groups, key)]
        best = max(members, key=lambda k: (len(tiles[k]), candidates[k][1].width * candidates[k][1].height))
        if best != key:
            log.append(["", str(candidates[key][0]), f"variant of {candidates[best][0].name}"])
            continue
        vectors = tile_vectors[key]
        if not len(vectors):
            log.append(["", str(candidates[key][0]), f"no tile with detail >= {args.min_detail}"])
            continue
        # one pair of alike tiles is a detail of the scene (two patches of sea); a tenth of them, a pattern
        alike = float(np.quantile((vectors @ vectors.T)[np.triu_indices(len(vectors), 1)], 0.9)) if len(vectors) > 1 else 0.0
        if alike >= args.pattern_similarity:
            log.append(["", str(candidates[key][0]), f"pattern: 10% of its tile pairs at similarity >= {alike:.2f}"])
            continue
        kept.append(key)
    return kept



# ----------------------------------------------------------------------------------------- drawings


def distinct_drawings(folders: list[Path], args: argparse.Namespace, work: Path) -> list[tuple[Path, Image.Image]]:
    """Detailed, large enough drawings (visible part of the PNGs under ``folders``), near-duplicates dropped in
    path order."""
    candidates = []
    files = sorted({p for folder in folders for p in folder.rglob("*.png")})
    for path in tqdm(files, desc="drawings", unit="file", disable=args.quiet):
        image = _open_not_huge(path)
        if image is None:
            continue
        with image:
            image = image.convert("RGBA")
        box = image.getchannel("A").getbbox()
        if box is None or max(box[2] - box[0], box[3] - box[1]) < args.min_drawing_side:
            continue
        if drawing_detail(path) < args.min_detail:
            continue
        candidates.append((path, _thumbnail(image.crop(box), 1024)))
    on_white = {}
    for i, (_, drawing) in enumerate(candidates):
        side = max(drawing.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(drawing, ((side - drawing.width) // 2, (side - drawing.height) // 2), drawing)
        on_white[f"d{i:05d}"] = _thumbnail(square, 384)
    vectors = embed(on_white, work, "drawings", args.model, args.quiet)
    kept: list[int] = []
    kept_vectors = np.zeros((0, next(iter(vectors.values())).shape[0]), np.float32)
    for i in range(len(candidates)):
        v = vectors[f"d{i:05d}"]
        if len(kept) and float((kept_vectors @ v).max()) >= args.drawing_similarity:
            continue
        kept.append(i)
        kept_vectors = np.vstack([kept_vectors, v])
    return [candidates[i] for i in kept]


# --------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache", type=Path, help="folder for the .deb files, their unpacked trees and work files")
    parser.add_argument("out", type=Path, help="folder to write photos/, drawings/ and sources.csv into (must not exist)")
    parser.add_argument("--source", choices=sorted(SOURCES), default="wallpapers",
                        help="Debian packages to take the images from: wallpapers and openclipart, or (a disjoint "
                        "pool for a second set) games' photos, portraits, stamps and sprites (default: %(default)s)")
    parser.add_argument("--model", default=default_model()[0], help="descriptor model judging duplicates (default: %(default)s)")
    parser.add_argument("--long-side", type=positive_int, default=2560, help="photos' long side at most (default: %(default)s)")
    parser.add_argument("--min-photo-side", type=positive_int, default=1000, help="smallest short side of a photo (default: %(default)s)")
    parser.add_argument("--tile-size", type=positive_int, default=512, help="the tiles isc-synth will cut (default: %(default)s)")
    parser.add_argument("--min-detail", type=positive_int, default=300, help="isc-synth's --min-detail (default: %(default)s)")
    parser.add_argument("--duplicate-similarity", type=finite_float, default=0.5,
                        help="two wallpapers this similar (or one and the other's negative) show one scene (default: %(default)s)")
    parser.add_argument("--tile-copy-similarity", type=finite_float, default=0.75,
                        help="two wallpapers with tiles this similar show one scene (default: %(default)s)")
    parser.add_argument("--pattern-similarity", type=finite_float, default=0.6,
                        help="a wallpaper with a tenth of its tile pairs this similar is a pattern (default: %(default)s)")
    parser.add_argument("--min-drawing-side", type=positive_int, default=200, help="smallest drawing, long side (default: %(default)s)")
    parser.add_argument("--drawing-similarity", type=finite_float, default=0.45,
                        help="a drawing this similar to one kept is a duplicate (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # such files are skipped by size
    if args.out.exists():
        parser.error(f"{args.out} exists: choose a new folder")
    work = args.cache / "work"
    source = SOURCES[args.source]
    roots = fetch(sorted({*source["photos"], *source["drawings"]}), args.cache)
    drawing_folders = {roots[package] / folder: package for package, folder in source["drawings"].items()}
    log: list[list[str]] = []

    candidates = photo_candidates([roots[package] / folder for package, folder in source["photos"].items()],
                                  args.min_photo_side, args.long_side, args.quiet)
    photos = distinct_photos(candidates, args, work, log)
    drawings = distinct_drawings(list(drawing_folders), args, work)

    partial = args.out.with_name(f".{args.out.name}.part")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "photos").mkdir(parents=True)
    (partial / "drawings").mkdir()
    for key in photos:
        path, image = candidates[key]
        name = f"photos/{path.relative_to(args.cache / 'unpacked').parts[0]}__{scene_name(path)}.jpg"
        image.save(partial / name, quality=95)
        log.append([name, str(path), "kept"])
    for path, drawing in drawings:
        folder = next(f for f in drawing_folders if path.is_relative_to(f))
        # one package: names as they were; several: the package first, so two packages' files never clash
        parts = path.relative_to(folder).parts if len(drawing_folders) == 1 else (drawing_folders[folder], *path.relative_to(folder).parts)
        name = f"drawings/{'__'.join(parts)}"
        drawing.save(partial / name)
        log.append([name, str(path), "kept"])
    with open(partial / "sources.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "source", "decision"], *log])
    partial.rename(args.out)
    print(f"{args.out}: {len(photos)} photos of {len(candidates)} wallpaper files, {len(drawings)} drawings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
