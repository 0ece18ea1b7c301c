"""Every file format of the toolkit, read and written in one place.

- image ids: any text (a file's stem or its path relative to a folder), stored as UTF-8; the competition's
  rules (queries ``Q`` + 5 digits, references ``R`` + 6, training ``T`` + 6, ASCII) apply only where the
  competition needs them (a phase, a submission, a competition data root);
- descriptor files (HDF5, one per split): datasets ``ids`` and ``descriptors`` plus provenance attributes
  (optionally ``classes``, one class name per row); the organisers' layout ``image_names`` and ``vectors``
  is read too;
- the competition's descriptor-track file: ``query``, ``reference``, ``query_ids``, ``reference_ids``;
- predictions CSV ``query_id,reference_id,score`` (read with or without its header row, as the organisers
  write it); ground-truth CSV ``query_id,reference_id``;
  metadata CSV ``image_id,s3_uri,md5_checksum``.

Readers raise :class:`InputError` naming the file and the first bad row; writers go through
:func:`atomic_path` so that a crash never leaves a half-written file under the real name.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import secrets
import stat
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

import isc

if TYPE_CHECKING:
    import pandas as pd  # imported where used: descriptor files and extraction work without pandas


class InputError(ValueError):
    """Bad input from the user: the CLI prints it as one line and exits non-zero."""


def shown(value: object, limit: int = 100) -> str:
    """A value quoted in a message: its repr (non-printable characters escaped), cut after ``limit`` characters."""
    text = str(value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


SNIFF_BYTES = 1 << 16  # what is read of a text file before parsing it
# byte-order marks of the encodings a text editor may save a CSV in, UTF-32 before UTF-16 (whose marks begin theirs)
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))


def check_text_file(path: str | Path, what: str) -> None:
    """InputError, from its first 64 KiB and before any parsing, for a file that is not UTF-8 text: UTF-16 or
    UTF-32 (by the byte-order mark, or by NULs beside ASCII letters), or binary (a NUL byte); a sparse or
    binary file of gigabytes is then refused at once, without being read whole."""
    check_file(path, "file")
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    encoding = next((name for bom, name in _BOMS if head.startswith(bom)), None)
    if encoding is None and b"\0" in head:
        even_nuls, odd_nuls = head[0::2].count(0), head[1::2].count(0)
        if max(even_nuls, odd_nuls) > 0.9 * (len(head) // 2) and min(even_nuls, odd_nuls) < 0.1 * (len(head) // 2):
            encoding = "UTF-16"
        else:
            raise InputError(f"{path}: not a text {what} (binary content: a NUL byte at offset {head.index(0)})")
    if encoding:
        raise InputError(f"{path}: {encoding} text, a {what} must be UTF-8 (save it as UTF-8)")


SPLITS = ("query", "reference", "training")
ID_PREFIX = {"query": "Q", "reference": "R", "training": "T"}
ID_DIGITS = {"query": 5, "reference": 6, "training": 6}  # Q00000, R000000, T000000
# [0-9], not \d: \d also matches non-ASCII digits (full-width "０"), which no competition id holds
ID_PATTERNS = {split: re.compile(rf"{ID_PREFIX[split]}[0-9]{{{ID_DIGITS[split]}}}") for split in SPLITS}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # files taken as images
PHASE_QUERY_RANGES = {1: (0, 49_999), 2: (50_000, 99_999)}
DESCRIPTOR_TRACK_MAX_DIM = 256
MATCHING_TRACK_MAX_ROWS = 500_000


def metadata_file(root: str | Path, split: str) -> Path:
    """Where a dataset folder keeps a split's metadata CSV (``image_id,s3_uri,md5_checksum``):
    ``root/<split>_metadata.csv``."""
    return Path(root) / f"{split}_metadata.csv"


def split_folder(root: str | Path, split: str) -> Path:
    """Where a dataset folder keeps a split's images: ``root/<split>_images/`` (isc-download's and isc-synth's
    layout, the buckets' ``all/<split>_images/``)."""
    return Path(root) / f"{split}_images"


# ---------------------------------------------------------------------------------------------- ids


def image_id(split: str, number: int) -> str:
    """The competition's id of image ``number`` of a split: ``image_id("query", 7) == "Q00007"``."""
    return f"{ID_PREFIX[split]}{number:0{ID_DIGITS[split]}d}"


def split_of_id(image_id: str) -> str:
    """The split an id belongs to (``query``, ``reference`` or ``training``); InputError if malformed."""
    for split, pattern in ID_PATTERNS.items():
        if pattern.fullmatch(image_id):
            return split
    raise InputError(f"malformed image id {image_id!r} (expected Q+5 digits, R+6 digits or T+6 digits)")


def id_numbers(ids: pd.Series | Sequence[str] | np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(numbers, valid): the integer of each id (``R000042`` -> 42) and whether it is a well-formed ``split`` id.

    Vectorised over the ids' bytes, because a regular expression per row is too slow for 500,000 rows.
    """
    values = ids.to_numpy() if hasattr(ids, "to_numpy") else np.asarray(ids, dtype=object)
    digits = ID_DIGITS[split]
    try:
        # one byte more than an id holds, so that a longer value cannot pass for a valid id
        raw = np.asarray(values).astype(f"S{digits + 2}").view(np.uint8).reshape(len(values), digits + 2)
    except UnicodeEncodeError:
        ok = np.array([bool(ID_PATTERNS[split].fullmatch(str(v))) for v in values], dtype=bool)
        numbers = np.array([int(str(v)[1:]) if good else -1 for v, good in zip(values, ok, strict=True)])
        return numbers.astype(np.int64), ok
    numerals = raw[:, 1 : digits + 1].astype(np.int64) - ord("0")
    ok = (raw[:, 0] == ord(ID_PREFIX[split])) & ((numerals >= 0) & (numerals <= 9)).all(axis=1) & (raw[:, -1] == 0)
    numbers = numerals @ (10 ** np.arange(digits - 1, -1, -1, dtype=np.int64))
    return np.where(ok, numbers, -1), ok


def first_bad_id(ids: pd.Series | Sequence[str], split: str) -> int | None:
    """Position of the first id that is not a well-formed id of ``split``, or None when all are."""
    _, ok = id_numbers(ids, split)
    return None if ok.all() else int(np.flatnonzero(~ok)[0])


def validate_ids(
    ids: pd.Series | Sequence[str], split: str, source: str | Path, what: str = "id", why: str = ""
) -> None:
    """Raise InputError naming ``source`` and the first id that does not belong to ``split``; ``why``: what
    applies the competition's id rules here, said at the end of the message."""
    bad = first_bad_id(ids, split)
    if bad is not None:
        value = ids.iloc[bad] if hasattr(ids, "iloc") else list(ids)[bad]
        raise InputError(
            f"{source}: {what} #{bad} is {shown(value)}, not a {split} id ({ID_PREFIX[split]} + "
            f"{ID_DIGITS[split]} ASCII digits){f'; {why}' if why else ''}"
        )


def encode_ids(ids: Sequence[str]) -> np.ndarray:
    """Ids as fixed-length UTF-8 bytes, as descriptor files store them (plain ASCII for the competition's ids)."""
    return np.array([str(i).encode("utf-8") for i in ids], dtype="S")


def decode_id(raw: bytes | str) -> str:
    """An id stored by :func:`encode_ids`."""
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def parse_id_range(text: str, split: str) -> tuple[str, str]:
    """``Q00000-Q00999`` (inclusive) or a single id ``Q00042`` -> (first, last); InputError if malformed."""
    first, _, last = text.strip().partition("-")
    last = last or first
    for value in (first, last):
        if not ID_PATTERNS[split].fullmatch(value):
            raise InputError(f"id range {text!r}: {value!r} is not a {split} id (e.g. Q00000-Q00999)")
    if first > last:
        raise InputError(f"id range {text!r} is empty (first id after the last)")
    return first, last


def query_phase(query_id: str) -> int:
    """1 for Q00000–Q49999, 2 for Q50000–Q99999."""
    number = int(query_id[1:])
    return 1 if number < PHASE_QUERY_RANGES[2][0] else 2


def phase_query_ids(phase: int) -> list[str]:
    """Every query id of a competition phase, in order."""
    lo, hi = PHASE_QUERY_RANGES[phase]
    return [image_id("query", i) for i in range(lo, hi + 1)]


# ------------------------------------------------------------------------------------- atomic write


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    check_parent_folders(path)
    tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                # mode 0o666 less the umask, as for any new file (mkstemp would make it private)
                os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                tmp_path = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        named = os_error_at(e, path, tmp_path)
        if named is e:
            raise
        raise named from e
    finally:
        with contextlib.suppress(OSError):  # a read-only or vanished folder: nothing was left there
            tmp_path.unlink(missing_ok=True)


def check_parent_folders(path: str | Path) -> None:
    """InputError when a folder that ``path`` would be written in is an existing file (``afile/out.csv``):
    creating the folders would fail with a bare "File exists"."""
    for parent in Path(path).parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InputError(f"{path}: {parent} is {'a file' if parent.is_file() else 'not a folder'}, "
                                 "it cannot hold the output")
            return


def os_error_at(error: OSError, path: str | Path, tmp_path: str | Path | None = None) -> OSError:
    """``error`` as the OSError of the same kind naming ``path``, the user's file, when it names ``tmp_path`` (the
    temporary twin of ``path``) or no file at all, or says the disk is full (shutil's copy names its source then);
    errno and reason are dug out of h5py's text, which alone holds them."""
    disk_full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    if error.filename is not None and (tmp_path is None or str(error.filename) != str(tmp_path)) and not disk_full:
        return error
    number, reason = error.errno, error.strerror
    if number is None:
        found = re.search(r"errno = (\d+)", str(error))
        number = int(found.group(1)) if found else None
        reason = os.strerror(number) if number else str(error)
    return OSError(number, reason, str(path))


def write_json(path: str | Path, content: object, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``content`` as JSON (non-JSON values as their str), atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=indent, sort_keys=sort_keys, default=str) + "\n",
                       encoding="utf-8")
    return Path(path)


def file_digest(path: str | Path, algorithm: str = "md5") -> str:
    """The hex digest of a file's bytes, read in 1 MiB blocks: MD5 by default (the competition's metadata
    checksum), or any :mod:`hashlib` algorithm (models fingerprint their files with sha256)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- descriptor files


def provenance(**attrs: object) -> dict[str, object]:
    """Attributes recorded in every descriptor file: what produced it, plus the toolkit version."""
    return {"isc_version": isc.__version__, **{k: v for k, v in attrs.items() if v is not None}}


def _check_descriptors(ids: Sequence[str], descriptors: np.ndarray, source: str | Path) -> None:
    if descriptors.ndim != 2:
        raise InputError(f"{source}: descriptors must be a 2-d array [n, d], got shape {descriptors.shape}")
    if len(ids) != descriptors.shape[0]:
        raise InputError(f"{source}: {len(ids)} ids but {descriptors.shape[0]} descriptors")
    finite = np.isfinite(descriptors).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InputError(f"{source}: descriptor #{row} ({ids[row]}) has NaN or infinite values")


def write_descriptors(
    path: str | Path, ids: Sequence[str], descriptors: np.ndarray, attrs: dict[str, object] | None = None
) -> None:
    """Write one split's descriptors: datasets ``ids`` (ASCII) and ``descriptors`` (float32 [n, d])."""
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    ids = [str(i) for i in ids]
    _check_descriptors(ids, descriptors, path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("ids", data=encode_ids(ids))
        f.create_dataset("descriptors", data=descriptors, chunks=True if len(ids) else None)
        for key, value in {**provenance(), **(attrs or {}), "dimension": descriptors.shape[1]}.items():
            f.attrs[key] = value


def _decode_ids(dataset: h5py.Dataset) -> list[str]:
    values = dataset[()]
    try:
        return [decode_id(x) for x in values]
    except UnicodeDecodeError:
        row = next(i for i, x in enumerate(values) if isinstance(x, bytes) and not _is_utf8(x))
        raise InputError(f"{dataset.file.filename}: dataset {dataset.name.lstrip('/')} row {row} is not "
                         f"UTF-8 text ({values[row]!r})") from None


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def check_file(path: str | Path, what: str, here: bool = False) -> None:
    """InputError unless ``path`` is an existing file: ``PATH: is a directory (a WHAT is needed[ here])`` for a
    folder, ``PATH: no such WHAT`` otherwise."""
    article = "an" if what[:1].lower() in "aeio" or what.startswith(("ONNX", "HDF5")) else "a"
    if Path(path).is_dir():
        raise InputError(f"{path}: is a directory ({article} {what} is needed{' here' if here else ''})")
    if not Path(path).is_file():
        kind = special_file_kind(path)
        raise InputError(f"{path}: is a {kind}, not a file ({article} {what} is needed)" if kind
                         else f"{path}: no such {what}")


def special_file_kind(path: str | Path) -> str | None:
    """What an existing path that is neither a file nor a folder is (``named pipe (FIFO)``, ``socket``, ...);
    None when there is nothing there."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    kinds = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"))
    return next((kind for test, kind in kinds if test(mode)), "special file")


def _open_h5(path: str | Path) -> h5py.File:
    check_file(path, "file", here=True)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: not an HDF5 file ({e})") from None


# (ids, descriptors) dataset names of each per-split layout, told apart by name: this toolkit's, and the
# organisers' (isc2021's write_hdf5_descriptors: ids as image names, possibly with folder and extension)
DESCRIPTOR_LAYOUTS = {"isc-extract": ("ids", "descriptors"), "isc2021": ("image_names", "vectors")}


def check_links(f: h5py.File, names: Sequence[str], path: str | Path) -> None:
    """InputError when one of the datasets ``names`` is a link that cannot be followed (an HDF5 external link to
    a missing file, a dangling soft link): ``name in f`` holds for it, ``f[name]`` raises KeyError."""
    for name in names:
        try:
            f[name]
        except KeyError as e:
            link = f.get(name, getlink=True)
            if link is None:
                raise InputError(f"{path}: no dataset {name}") from None
            target = f" to {link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else \
                f" to {link.path}" if isinstance(link, h5py.SoftLink) else ""
            raise InputError(f"{path}: dataset {name} is a link{target} that cannot be followed ({e})") from None


def _descriptor_layout(f: h5py.File, path: str | Path) -> str:
    """The layout whose datasets the file holds; InputError naming the datasets expected otherwise."""
    for layout, names in DESCRIPTOR_LAYOUTS.items():
        if all(name in f for name in names):
            check_links(f, names, path)
            return layout
    closest = max(DESCRIPTOR_LAYOUTS.values(), key=lambda names: sum(name in f for name in names))
    missing = ", ".join(name for name in closest if name not in f)
    expected = " or ".join(f"{a} and {b} ({layout})" for layout, (a, b) in DESCRIPTOR_LAYOUTS.items())
    raise InputError(f"{path}: not a descriptor file (missing datasets {missing}; expected {expected}, "
                     f"found {', '.join(sorted(f)) or 'no dataset'})")


def _isc2021_id(name: str) -> str:
    """An image name as the organisers' reader turns it into an id: folder and .jpg/.png dropped."""
    name = name.rsplit("/", 1)[-1]
    return name[:-4] if name.endswith((".jpg", ".png")) else name


def _attrs(f: h5py.File) -> dict[str, object]:
    attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    names = DESCRIPTOR_LAYOUTS["isc2021"]
    if "dimension" not in attrs and all(name in f for name in names) and f[names[1]].ndim == 2:
        attrs["dimension"] = f[names[1]].shape[1]  # the organisers' files carry no attributes: only this is known
    return attrs


# the one rule of "same model" for descriptor files, used by isc-search, isc-pca and isc-submit
# attributes that describe one run or one split, not the descriptor function: never compared
# (decoder and device: the Pillow and GPU decoders agree within a small tolerance, by isc-extract's tests)
PER_FILE_ATTRIBUTES = frozenset({
    "split", "isc_version", "n_images", "broken", "n_broken", "decoder", "device", "batch_size", "workers",
    "world_size", "rank", "processed", "resumed", "seconds", "images_per_second", "output", "source",
    "data_root", "images", "command", "created", "created_utc", "timestamp", "host", "hostname",
    "phase", "ids", "broken_stamps",  # which images of the split a file holds, not how they were described
    "checkpoint",  # where the weights were read from: model_fingerprint says whether they are the same
})
PROVENANCE_SUFFIX = ".provenance.json"


def provenance_path(predictions: str | Path) -> Path:
    """The optional sidecar of a predictions CSV (how isc-search made it), recorded in its manifest."""
    return Path(str(predictions) + PROVENANCE_SUFFIX)


def model_attributes(attrs: dict[str, object], ignore: Sequence[str] = ()) -> dict[str, object]:
    """The attributes that define the descriptor function (model, weights, size, whitening, ...)."""
    skip = PER_FILE_ATTRIBUTES | set(ignore)
    return {k: v for k, v in attrs.items() if k not in skip}


def _same_value(a: object, b: object) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return a == b


def model_differences(a: dict[str, object], b: dict[str, object], ignore: Sequence[str] = ()) -> list[str]:
    """The one rule of "same model" for two descriptor files' attributes: ``key: A != B`` for each model
    attribute (:func:`model_attributes`, less ``ignore``) that differs or exists on one side only; [] when
    the same model made both."""
    a, b = model_attributes(a, ignore), model_attributes(b, ignore)
    absent = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, absent), b.get(key, absent)
        if va is absent or vb is absent or not _same_value(va, vb):
            out.append(f"{key}: {_short(va, absent)} != {_short(vb, absent)}")
    return out


def _short(value: object, absent: object, width: int = 60) -> str:
    if value is absent:
        return "(absent)"
    text = repr(value.decode() if isinstance(value, bytes) else value)
    return text if len(text) <= width else text[: width - 3] + "..."


def read_descriptor_attrs(path: str | Path) -> dict[str, object]:
    """The provenance attributes of a descriptor file, without loading the descriptors."""
    with _open_h5(path) as f:
        return _attrs(f)


def read_descriptors(
    path: str | Path, split: str | None = None, views: bool = False
) -> tuple[list[str], np.ndarray, dict[str, object]]:
    """Read a descriptor file: (ids, float32 descriptors [n, d], attributes); ids checked against ``split``.

    Both layouts of :data:`DESCRIPTOR_LAYOUTS` are read; the organisers' has no attributes but ``dimension``.
    An id may repeat only with ``views`` and in a file whose attribute ``views_per_id`` says that its rows
    are several views (crops) of each image; anywhere else a repeated id is an error.
    """
    with _open_h5(path) as f:
        layout = _descriptor_layout(f, path)
        ids_name, descriptors_name = DESCRIPTOR_LAYOUTS[layout]
        ids = _decode_ids(f[ids_name])
        if layout == "isc2021":
            ids = [_isc2021_id(name) for name in ids]
        raw = f[descriptors_name]
        if raw.dtype.kind != "f":
            raise InputError(f"{path}: {descriptors_name} have dtype {raw.dtype}, expected float32")
        descriptors = np.asarray(raw[()], dtype=np.float32)
        attrs = _attrs(f)
    _check_descriptors(ids, descriptors, path)
    if split is not None:
        validate_ids(ids, split, path, why="the competition's id rules apply here")
    import pandas as pd

    duplicated = pd.Index(ids).duplicated()
    if duplicated.any() and not (views and attrs.get("views_per_id")):
        row = int(np.flatnonzero(duplicated)[0])
        raise InputError(f"{path}: id {ids[row]} appears more than once (row {row})")
    return ids, descriptors, attrs


@dataclass
class DescriptorFile:
    """One split's descriptors as read from a descriptor file (either layout of :data:`DESCRIPTOR_LAYOUTS`)."""

    path: Path
    ids: list[str]
    descriptors: np.ndarray  # float32 [n, d]
    attrs: dict[str, object]

    @classmethod
    def read(cls, path: str | Path, split: str | None = None, views: bool = False) -> DescriptorFile:
        """Read and check a descriptor file, as :func:`read_descriptors` does."""
        ids, descriptors, attrs = read_descriptors(path, split, views)
        return cls(Path(path), ids, descriptors, attrs)


def read_descriptor_classes(path: str | Path) -> list[str] | None:
    """The class name of each row of a descriptor file (dataset ``classes``), or None when it has none."""
    with _open_h5(path) as f:
        if "classes" not in f:
            return None
        check_links(f, ["classes"], path)
        n_rows = len(f[DESCRIPTOR_LAYOUTS[_descriptor_layout(f, path)][0]])
        classes = _decode_ids(f["classes"])
    if len(classes) != n_rows:
        raise InputError(f"{path}: {len(classes)} classes for {n_rows} descriptors")
    return classes


def write_descriptor_track(
    path: str | Path,
    query_ids: Sequence[str],
    query: np.ndarray,
    reference_ids: Sequence[str],
    reference: np.ndarray,
) -> None:
    """Write the competition's descriptor-track HDF5, ids sorted as the official converter does."""
    parts = {}
    for name, ids, descriptors, split in (
        ("query", query_ids, query, "query"),
        ("reference", reference_ids, reference, "reference"),
    ):
        descriptors = np.asarray(descriptors, dtype=np.float32)
        ids = [str(i) for i in ids]
        _check_descriptors(ids, descriptors, f"{path} ({name})")
        validate_ids(ids, split, f"{path} ({name})")
        order = np.argsort(np.array(ids))
        parts[name] = ([ids[i] for i in order], descriptors[order])
    dims = {parts["query"][1].shape[1], parts["reference"][1].shape[1]}
    if len(dims) != 1:
        raise InputError(f"{path}: query and reference descriptors have different dimensions {sorted(dims)}")
    if dims.pop() > DESCRIPTOR_TRACK_MAX_DIM:
        raise InputError(f"{path}: the descriptor track allows at most {DESCRIPTOR_TRACK_MAX_DIM} dimensions")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, (ids, descriptors) in parts.items():
            f.create_dataset(name, data=descriptors)
            f.create_dataset(f"{name}_ids", data=np.array(ids, dtype="S"))


def read_descriptor_track(path: str | Path) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """Read and check a descriptor-track file: (query_ids, query, reference_ids, reference)."""
    with _open_h5(path) as f:
        missing = [n for n in ("query", "reference", "query_ids", "reference_ids") if n not in f]
        if missing:
            raise InputError(f"{path}: not a descriptor-track file (missing datasets {', '.join(missing)})")
        check_links(f, ("query", "reference", "query_ids", "reference_ids"), path)
        out = []
        for name, split in (("query", "query"), ("reference", "reference")):
            if f[name].dtype != np.float32:
                raise InputError(f"{path}: dataset {name} has dtype {f[name].dtype}, the track requires float32")
            descriptors = f[name][()]
            ids = _decode_ids(f[f"{name}_ids"])
            _check_descriptors(ids, descriptors, f"{path} ({name})")
            validate_ids(ids, split, f"{path} ({name}_ids)")
            if descriptors.shape[1] > DESCRIPTOR_TRACK_MAX_DIM:
                raise InputError(
                    f"{path}: {name} has {descriptors.shape[1]} dimensions, the track allows {DESCRIPTOR_TRACK_MAX_DIM}"
                )
            if any(a >= b for a, b in zip(ids, ids[1:], strict=False)):
                row = next(i for i, (a, b) in enumerate(zip(ids, ids[1:], strict=False)) if a >= b) + 1
                raise InputError(f"{path}: {name}_ids not sorted and unique at row {row} ({ids[row]})")
            out += [ids, descriptors]
    if out[1].shape[1] != out[3].shape[1]:
        raise InputError(f"{path}: query and reference descriptors have different dimensions")
    return out[0], out[1], out[2], out[3]


# ------------------------------------------------------------------------------------------- CSVs


def _read_csv(
    path: str | Path, columns: Sequence[str], what: str, dtype: type | dict[str, type] | None = str,
    header: bool = True,
) -> pd.DataFrame:
    """The ``columns`` of a CSV; ``header=False``: the file has no header row, its fields are ``columns`` in order;
    ``dtype``: of every column (str), of some (a dict), or inferred (None)."""
    import pandas as pd

    check_text_file(path, f"{what} CSV")
    options = {"dtype": dtype} if dtype is not None else {}
    if not header:
        options.update(header=None, names=list(columns))
    try:
        with warnings.catch_warnings():
            # a row with more fields than the header must fail, not turn into an index or be cut
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, index_col=False, keep_default_na=False, **options)
    except pd.errors.ParserWarning:  # pandas says neither where nor how many: the first row too long, by line
        line, fields = _first_long_row(path, len(columns) if not header else None)
        raise InputError(f"{path}: line {line}: {fields} fields, more than the header's {len(columns)} "
                         f"(not a valid {what} CSV)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a valid {what} CSV ({str(e).splitlines()[0]})") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file, expected a header {','.join(columns)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)} (header is {shown(','.join(df.columns))}; "
            f"a {what} CSV has {','.join(columns)})"
        )
    return df[list(columns)]


def pair_keys(*frames: pd.DataFrame) -> list[np.ndarray]:
    """One int64 per (query_id, reference_id) row of each frame, equal for equal pairs across all the frames
    (ids of any form), for fast joins and duplicate checks."""
    import pandas as pd

    codes = [pd.factorize(pd.concat([f[column] for f in frames], ignore_index=True))
             for column in ("query_id", "reference_id")]
    keys = codes[0][0].astype(np.int64) * max(len(codes[1][1]), 1) + codes[1][0]
    return np.split(keys, np.cumsum([len(f) for f in frames])[:-1])


def _first_long_row(path: str | Path, width: int | None) -> tuple[int, int]:
    """(line number, fields) of the first row with more fields than ``width`` (None: than the header row)."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            if width is None and row:
                width = len(row)
            elif row and len(row) > width:
                return reader.line_num, len(row)
    return reader.line_num, width or 0


def _check_non_empty(df: pd.DataFrame, column: str, path: str | Path, first_line: int = 2) -> None:
    """InputError at the first row whose ``column`` is empty (any other text is an id)."""
    empty = (df[column] == "").to_numpy()
    if empty.any():
        raise InputError(f"{path}: line {int(np.flatnonzero(empty)[0]) + first_line}: {column} is empty")


def _first_repeated(keys: np.ndarray) -> tuple[int, int] | None:
    """(row of the first repeated key, row where it first appeared), or None."""
    import pandas as pd

    repeated = pd.Series(keys).duplicated().to_numpy()
    if not repeated.any():
        return None
    row = int(np.flatnonzero(repeated)[0])
    return row, int(np.flatnonzero(keys == keys[row])[0])


PREDICTION_COLUMNS = ("query_id", "reference_id", "score")


def is_prediction_row(fields: Sequence[str]) -> bool:
    """Whether the fields of a CSV row are a prediction (a query id, a reference id and a third field), not a header.

    The organisers' writer (isc2021 ``write_predictions_from_arrays``) writes no header row, so the first
    row of a predictions file is told apart by its content; the score itself is checked with the others.
    """
    return (
        len(fields) == len(PREDICTION_COLUMNS)
        and bool(ID_PATTERNS["query"].fullmatch(fields[0]))
        and bool(ID_PATTERNS["reference"].fullmatch(fields[1]))
    )


def _first_csv_row(path: str | Path) -> list[str]:
    """The fields of the first non-blank line ([] for an empty file), split as the organisers' reader does."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:  # -sig: pandas skips a BOM too
        for line in f:
            if line.strip():
                return line.rstrip("\r\n").split(",")
    return []


def _has_header_row(path: str | Path) -> bool:
    """True when a predictions file starts with a header row (recognised by its column names), False when it
    starts with a prediction; InputError, quoting the row, when it is neither."""
    check_text_file(path, "predictions CSV")
    first = _first_csv_row(path)
    if not first or any(field.strip().strip('"') in PREDICTION_COLUMNS for field in first):
        return True
    if is_prediction_row(first):
        return False
    raise InputError(
        f"{path}: line 1 is neither the header {','.join(PREDICTION_COLUMNS)} nor a prediction row "
        f"(competition query id, reference id, score; other ids need the header row): {shown(','.join(first))}"
    )


def read_predictions(path: str | Path, duplicates: str = "error", max_rows: int | None = None) -> pd.DataFrame:
    """Read a matching-track CSV ``query_id,reference_id,score``, with or without its header row.

    ``duplicates``: ``"error"`` rejects a repeated (query, reference) pair, as the organisers' scorer
    does; ``"keep-best"`` keeps the highest score of each pair and warns. ``max_rows``: refuse a file of
    more rows (:data:`MATCHING_TRACK_MAX_ROWS`, the track's limit, enforced by the organisers' scorer);
    the message names the ``--no-row-limit`` option of the commands that pass it.
    """
    import pandas as pd

    header = _has_header_row(path)
    first_line = 2 if header else 1  # the file's line number of the first prediction
    # pandas' own type inference is the fast path for the scores; ids stay text ("001" is not 1)
    df = _read_csv(path, PREDICTION_COLUMNS, "predictions", dtype={"query_id": str, "reference_id": str},
                   header=header)
    if max_rows is not None and len(df) > max_rows:
        raise InputError(
            f"{path}: {len(df):,} predictions, more than the {max_rows:,} a matching-track file may hold "
            "(the organisers' scorer refuses it: too many predictions); --no-row-limit reads it anyway"
        )
    for column in ("query_id", "reference_id"):
        _check_non_empty(df, column, path, first_line)
    scores = pd.to_numeric(df["score"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(scores)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = str(df["score"].iloc[row])
        raise InputError(
            f"{path}: line {row + first_line}: score {shown(value) if value else '(empty)'} is not a finite number"
        )
    df = df.assign(score=scores)
    repeat = _first_repeated(pair_keys(df)[0])
    if repeat is not None:
        row, first = repeat
        pair = f"({df['query_id'].iloc[row]}, {df['reference_id'].iloc[row]})"
        if duplicates == "error":
            raise InputError(
                f"{path}: line {row + first_line}: pair {pair} already at line {first + first_line} (duplicated pair)"
            )
        n_before = len(df)
        df = df.sort_values("score", ascending=False, kind="stable").drop_duplicates(["query_id", "reference_id"])
        df = df.sort_index().reset_index(drop=True)
        warnings.warn(
            f"{path}: {n_before - len(df)} duplicated (query, reference) rows dropped, keeping the best score "
            f"(first at line {row + first_line}, {pair})",
            stacklevel=2,
        )
    return df


def write_predictions(path: str | Path, predictions: pd.DataFrame) -> None:
    """Write a matching-track CSV sorted by decreasing score."""
    ordered = predictions[list(PREDICTION_COLUMNS)].sort_values(
        "score", ascending=False, kind="stable"
    )
    with atomic_path(path) as tmp:
        ordered.to_csv(tmp, index=False, float_format="%.7g")


def read_ground_truth(path: str | Path) -> pd.DataFrame:
    """Read a ground-truth CSV: one row per query, ``reference_id`` empty when the query has no match."""
    df = _read_csv(path, ("query_id", "reference_id"), "ground-truth")
    df = df.assign(query_id=df["query_id"].str.strip(), reference_id=df["reference_id"].str.strip())
    _check_non_empty(df, "query_id", path)
    repeat = _first_repeated(pair_keys(df)[0])
    if repeat is not None:
        row, first = repeat
        raise InputError(f"{path}: line {row + 2}: pair ({df['query_id'].iloc[row]}, "
                         f"{df['reference_id'].iloc[row] or 'no match'}) already at line {first + 2}")
    return df


def write_ground_truth(path: str | Path, ground_truth: pd.DataFrame) -> None:
    """Write a ground-truth CSV (``reference_id`` empty for queries without a match)."""
    with atomic_path(path) as tmp:
        ground_truth[["query_id", "reference_id"]].fillna("").to_csv(tmp, index=False)


_MD5 = re.compile(r"[0-9a-f]{32}")


def read_metadata(path: str | Path, split: str | None = None) -> pd.DataFrame:
    """Read a metadata CSV ``image_id,s3_uri,md5_checksum`` (the competition's per-split listing)."""
    df = _read_csv(path, ("image_id", "s3_uri", "md5_checksum"), "metadata")
    df = df.assign(md5_checksum=df["md5_checksum"].str.strip().str.lower())
    ids = df["image_id"]
    ok = ids.str.fullmatch("|".join(p.pattern for p in ID_PATTERNS.values()))
    if split is not None:
        ok &= ids.str.fullmatch(ID_PATTERNS[split].pattern)
    if not ok.all():
        row = int(np.flatnonzero(~ok.to_numpy())[0])
        expected = f"a {split} id" if split else "an image id"
        raise InputError(f"{path}: line {row + 2}: image_id {shown(ids.iloc[row])} is not {expected}")
    bad_md5 = ~df["md5_checksum"].str.fullmatch(_MD5.pattern)
    if bad_md5.any():
        row = int(np.flatnonzero(bad_md5.to_numpy())[0])
        raise InputError(f"{path}: line {row + 2}: md5_checksum {shown(df['md5_checksum'].iloc[row])} is not 32 hex digits")
    bad_uri = ~df["s3_uri"].str.startswith("s3://")
    if bad_uri.any():
        row = int(np.flatnonzero(bad_uri.to_numpy())[0])
        raise InputError(f"{path}: line {row + 2}: s3_uri {shown(df['s3_uri'].iloc[row])} is not an s3:// address")
    dup = ids.duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise InputError(f"{path}: line {row + 2}: image_id {ids.iloc[row]} appears more than once")
    return df


def write_metadata(path: str | Path, metadata: pd.DataFrame) -> None:
    """Write a metadata CSV ``image_id,s3_uri,md5_checksum``."""
    with atomic_path(path) as tmp:
        metadata[["image_id", "s3_uri", "md5_checksum"]].to_csv(tmp, index=False)
