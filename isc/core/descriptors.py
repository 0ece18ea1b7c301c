"""Descriptor files (HDF5, one per split): datasets ``ids`` (UTF-8) and ``descriptors`` (float32 [n, d]) plus
provenance attributes, optionally ``classes``; the organisers' layout ``image_names`` and ``vectors`` is read
too. Also the competition's descriptor-track file (``query``, ``reference``, ``query_ids``,
``reference_ids``), the provenance sidecar of a predictions CSV, and the same-model rule
(:func:`model_differences`): files whose model attributes differ are never mixed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

import isc
from isc.core.competition import DESCRIPTOR_TRACK_MAX_DIM, validate_ids
from isc.core.files import InputError, atomic_path, check_file


def encode_ids(ids: Sequence[str]) -> np.ndarray:
    """Ids as fixed-length UTF-8 bytes, as descriptor files store them (plain ASCII for the competition's ids)."""
    return np.array([str(i).encode("utf-8") for i in ids], dtype="S")


def decode_id(raw: bytes | str) -> str:
    """An id stored by :func:`encode_ids`."""
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


# ---------------------------------------------------------------------------------- descriptor files


def provenance(**attrs: object) -> dict[str, object]:
    """Attributes recorded in every descriptor file: what produced it, plus the toolkit version."""
    return {"isc_version": isc.__version__, **{k: v for k, v in attrs.items() if v is not None}}


def _check_descriptors(ids: Sequence[str], descriptors: np.ndarray, source: str | Path) -> None:
    if descriptors.ndim != 2:
        raise InputError(f"{source}: descriptors must be a 2-d array [n, d], got shape {descriptors.shape}")
    if len(ids) != descriptors.shape[0]:
        raise InputError(f"{source}: {len(ids)} ids but {descriptors.shape[0]} descriptors")
    with np.errstate(over="ignore", invalid="ignore"):  # a sum past float32's range is checked element by element
        suspect = np.flatnonzero(~np.isfinite(np.einsum("ij->i", descriptors)))
    bad = suspect[~np.isfinite(descriptors[suspect]).all(axis=1)]
    if len(bad):
        row = int(bad[0])
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
        return [decode_id(x) for x in values.tolist()]  # Python's bytes: quicker than numpy's scalars
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


def described_images(path: str | Path) -> int:
    """The images a descriptor file describes, without loading the descriptors: its rows over its views per
    image (attribute ``views_per_id``)."""
    with _open_h5(path) as f:
        ids = DESCRIPTOR_LAYOUTS[_descriptor_layout(f, path)][0]
        return len(f[ids]) // int(_attrs(f).get("views_per_id", 1))


# the attributes that say which views of an image a file's rows are, not how the model describes an image:
# files of other views of the same model may be searched together, never reused one for the other
VIEW_ATTRIBUTES = ("views_per_id", "grid_views", "cut_views")


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
    if len(set(ids)) < len(ids) and not (views and attrs.get("views_per_id")):
        seen: set[str] = set()
        row = next(row for row, i in enumerate(ids) if i in seen or seen.add(i))
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

