"""Which image files an extraction reads: a split's folder, any folder or list file, a phase or an id range;
ids are file stems or relative paths, and a class-per-folder tree gives each image its class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from isc.core.competition import parse_id_range, query_phase, split_folder, validate_ids
from isc.core.files import IMAGE_SUFFIXES, InputError, special_file_kind

# --------------------------------------------------------------------------------------- listings


def list_split_images(root: str | Path, split: str) -> dict[str, Path]:
    """``{id: path}`` of a split's images under ``ROOT/<split>_images/`` (the isc-download layout), by id."""
    folder = split_folder(root, split)
    if Path(root).exists() and not Path(root).is_dir():
        raise InputError(f"{root}: is not a directory (the dataset root holding {split}_images/ is needed)")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: is not a directory (a folder of {split} images is needed)")
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (expected the {split} images under the data root {root})")
    images = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() == ".jpg"
              and not p.name.startswith(".")}
    if not images:
        raise InputError(f"{folder}: no .jpg images")
    validate_ids(list(images), split, folder, what="image",
                 why="a competition data root holds the competition's ids (a folder of your own images takes any file names)")
    return dict(sorted(images.items()))


def list_images(source: str | Path, suffix_on_clash: bool = False) -> dict[str, Path]:
    """``{id: path}`` of the images in a folder (searched recursively) or a list file (one path a line).

    In a folder an id is the path relative to it without its suffix (``cat/001``), and every entry with an
    image suffix counts: a directory named ``x.jpg``, a dangling link or a symlink loop is then listed as
    broken by the extraction, not skipped unseen. In a list file an id is the file's stem, a relative path
    is relative to the list file's folder, and a listed file that is missing is listed as broken.
    Two images with the same id are refused, unless ``suffix_on_clash``: then the ids that two files would
    share keep the file's suffix (``beach.jpg`` beside ``beach.png``, as RAW+JPEG exports are), the others stay.
    """
    source = Path(source)
    if source.is_dir():
        paths = [(p.relative_to(source).with_suffix("").as_posix(), p) for p in sorted(source.rglob("*"))
                 if p.suffix.lower() in IMAGE_SUFFIXES
                 and not any(part.startswith(".") for part in p.relative_to(source).parts)]
    elif source.is_file():
        try:
            lines = [line.strip() for line in source.read_text().splitlines()]
        except UnicodeDecodeError:
            raise InputError(f"{source}: not a text file listing image paths (one a line)") from None
        paths = [(path.stem, path) for path in (source.parent / line for line in lines if line)]
    else:
        kind = special_file_kind(source)
        raise InputError(f"{source}: is a {kind}, not a folder or list file" if kind
                         else f"{source}: no such folder or list file")
    if not paths:
        raise InputError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)})")
    if suffix_on_clash:
        paths = ids_keeping_suffixes(paths)
    images: dict[str, Path] = {}
    for image_id, path in paths:
        if image_id in images:
            raise InputError(f"{source}: {images[image_id]} and {path} would both have id {image_id!r}")
        images[image_id] = path
    return dict(sorted(images.items()))


def ids_keeping_suffixes(paths: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """``paths`` (id without suffix, path) where every id that two paths share keeps its suffix, repeated until
    none is shared (``a.jpg.png``'s id ``a.jpg`` then keeps its own too); the same answer in any order."""
    named = [(image_id, path, False) for image_id, path in paths]  # (id, path, suffix kept)
    while True:
        counts = Counter(image_id for image_id, _, _ in named)
        renamed = [(f"{image_id}{path.suffix}", path, True) if counts[image_id] > 1 and not kept
                   else (image_id, path, kept) for image_id, path, kept in named]
        if renamed == named:  # no shared id left, or only the same name listed twice: refused by the caller
            return [(image_id, path) for image_id, path, _ in named]
        named = renamed


def image_classes(images: Mapping[str, Path]) -> dict[str, str] | None:
    """The class of each image of a class-per-folder tree (every id is ``<class>/<name>``), else None."""
    parts = {image_id: image_id.split("/") for image_id in images}
    if not parts or any(len(p) != 2 for p in parts.values()):
        return None
    return {image_id: p[0] for image_id, p in parts.items()}


def select_split_images(images: Mapping[str, Path], split: str, phase: int | None = None,
                        id_ranges: Sequence[str] = ()) -> dict[str, Path]:
    """The images of a split whose ids are in a competition phase (queries only) and in any of ``id_ranges``."""
    if phase is not None:
        if split != "query":
            raise InputError(f"a phase selects query images (Q00000-Q49999 or Q50000-Q99999), not {split} images")
        images = {i: path for i, path in images.items() if query_phase(i) == phase}
    if id_ranges:
        ranges = [parse_id_range(text, split) for text in id_ranges]
        images = {i: path for i, path in images.items() if any(lo <= i <= hi for lo, hi in ranges)}
    if not images:
        wanted = " and ".join(filter(None, [f"phase {phase}" if phase else "", ", ".join(id_ranges)]))
        raise InputError(f"no {split} images in {wanted}")
    return dict(images)
