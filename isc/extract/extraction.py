"""Descriptor extraction: image files in, one HDF5 descriptor file out (datasets ``ids``, ``descriptors``).

Two input pipelines feed the model (:mod:`isc.extract.torch_batches`), and both resize with
:func:`isc.extract.decode.resize_image`, so their descriptors agree: ``torchvision`` (the fast path, default on a
GPU: nvJPEG batch decoding, resizing and normalising on the device beside inference; with ``decode_processes``
the reading and decoding run in processes of their own, :mod:`isc.extract.decode_workers`) and ``pil`` (default
on the CPU: a DataLoader whose worker processes decode with Pillow). A model that takes uint8 pixels (PDQ,
uint8 ONNX graphs: :attr:`DescriptorModel.takes_pixels`) gets them on the ``pil`` decoder, its default on
every device, without torch at all (:mod:`isc.extract.pixel_batches`); its pixels, hence its descriptors, are
the same as on the torch pipelines.

Rows are appended to a log per rank (``OUT.rank0-of-1.partial``, :class:`isc.core.partial_log.PartialLog`), one
checksummed record per batch, so that even a kill -9 leaves every finished batch readable; a killed run
restarts from it (its model attributes must match; images whose size or modification time changed since are
extracted again), and the logs are merged into ``OUT`` in id order. Under ``torchrun`` each rank
extracts a contiguous shard of the sorted ids (:mod:`isc.core.distributed`).

``OUT`` holds the datasets ``ids`` (ASCII), ``descriptors`` (float32 [n, d]), ``file_stamps`` (int64
[n, 2]: size in bytes and st_ctime_ns of each image file when it was read, what :func:`is_complete`
checks) and, for a class-per-folder tree (``ROOT/<class>/<image>``), ``classes`` (ASCII, one per row).
Unreadable images are skipped and listed, with their reasons, in the ``broken`` attribute (JSON; their
file stamps in ``broken_stamps``). Non-finite descriptors are refused, never written. With ``crops`` (query
or reference files of the matching track) each image gives several adjacent rows with its id, the full view then each
crop of :func:`isc.extract.decode.crop_boxes`, cut from the decoded image, then with ``grid`` its grid views (attribute
``grid_views``); the attribute ``views_per_id`` says how many.
The full views are those of an extraction without crops, bit for bit: :func:`full_views` makes that file from
them instead of describing every image twice."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from isc.core.descriptors import (
    VIEW_ATTRIBUTES,
    check_links,
    decode_id,
    model_differences,
    provenance,
    read_descriptor_attrs,
)
from isc.core.distributed import barrier, check_device, device_name, join_process_group, leave_process_group
from isc.core.files import InputError, SettingError, atomic_path
from isc.core.partial_log import H5_LIBVER, MERGE_ROWS, PartialWriter, merge_partial_logs, partial_path
from isc.core.progress import progress
from isc.extract.decode import DEFAULT_MAX_PIXELS, GRID_SIDES, view_count
from isc.extract.pixel_batches import pixel_batches
from isc.extract.plan import ExtractionPlan
from isc.models import DescriptorModel

DECODERS = ("torchvision", "pil")

DEFAULT_BATCH_SIZE = 64  # images per model call


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, st_ctime_ns) of an image file, what says it changed; (-1, -1) when it cannot be stat'ed.

    The status-change time, not the modification time: any write, rename or replacement sets it to now, and
    no tool restores it (``touch -r`` and ``cp -p`` restore an mtime)."""
    try:
        stat = path.stat()
    except OSError:
        return -1, -1
    return stat.st_size, stat.st_ctime_ns


def view_sizes(model: DescriptorModel, scales: Sequence[float]) -> list[int]:
    """The image size of each test-time scale."""
    return [max(8, round(model.image_size * s)) for s in scales]


def extraction_config(model: DescriptorModel, scales: Sequence[float] = (1.0,), flip: bool = False,
                      crops: bool = False, grid: int = 0, cut: bool = False) -> dict[str, object]:
    """The attributes that say how a descriptor file was made: the model's, plus test-time augmentation;
    with ``crops``, ``views_per_id``: the rows of each image (its full view, then each crop), with ``grid``
    ``grid_views``: the grid's windows a side, and with ``cut`` ``cut_views``: 1, the views cut from the resized
    full view (each absent where off, as in the files made before it)."""
    return {**model.config(), "scales": json.dumps(list(map(float, scales))), "flip": bool(flip),
            **({"views_per_id": view_count(crops, grid)} if crops else {}),
            **({"grid_views": int(grid)} if crops and grid else {}),
            **({"cut_views": 1} if crops and cut else {})}


def is_complete(output: str | Path, images: Mapping[str, Path], config: Mapping[str, object]) -> bool:
    """Whether ``output`` holds descriptors of exactly ``images`` (or lists them as broken), made as ``config``
    says from the image files as they are now (same size and status-change time; a file without these
    ``file_stamps``, written by an older isc-extract, is never complete)."""
    output = Path(output)
    if not output.is_file() or not h5py.is_hdf5(output):
        return False
    attrs = read_descriptor_attrs(output)
    if model_differences(config, attrs):
        return False  # before reading the ids and stamps: a different model needs none of them
    with h5py.File(output, "r") as f:
        try:
            check_links(f, ("ids", "descriptors", "file_stamps"), output)
        except InputError:  # a dataset missing, or a link that leads nowhere: extracted again, into a file of its own
            return False
        recorded = dict(zip((decode_id(x) for x in f["ids"][()]), map(tuple, f["file_stamps"][()].tolist()),
                            strict=True))
    recorded.update((image_id, tuple(stamp)) for image_id, stamp in json.loads(attrs.get("broken_stamps", "{}")).items())
    return recorded.keys() == images.keys() and all(recorded[i] == file_stamp(path) for i, path in images.items())


@dataclass
class ExtractResult:
    """What :func:`extract` did (the fields in the order of ``isc-extract --json``)."""

    output: str
    images: int  # of every rank
    rank: int
    world_size: int
    processed: int  # images read by this run on this rank
    resumed: int  # images of this rank found in the partial log of a killed run
    seconds: float
    images_per_second: float | None
    model: str
    dimension: int
    device: str
    decoder: str
    decode_processes: int  # of the torchvision decoder (0: reading and decoding in the inference process)
    pixels: bool  # whether the pixel path ran
    views_per_id: int
    extracted: int | None  # images written to the output (None on the ranks other than the first)
    broken: dict[str, str]  # id: reason (of every rank on the first, of its own shard on the others)


def _refuse_non_finite(descriptors: np.ndarray, ids: Sequence[str], half: bool) -> None:
    """InputError naming the images whose descriptors hold NaN or infinity: they are never written."""
    bad = [image_id for image_id, finite in zip(ids, np.isfinite(descriptors).all(axis=1), strict=True) if not finite]
    if bad:
        hint = "; float16 inference overflows more easily, try float32" if half else ""
        raise InputError(f"the model gave NaN or infinite descriptors for {len(bad)} image(s): "
                         f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}{hint}")


@dataclass(frozen=True)
class ExtractOptions:
    """How :func:`extract` describes images; checked once, here.

    ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda when available, for a model a GPU runs); ``decoder``: ``torchvision``
    (default on cuda) or ``pil`` (default on the CPU, and for a model that takes uint8 pixels, which it then
    gets as numpy arrays: the pixel path); ``workers``: reading threads (0 counts as 1) or decoding processes
    (0: decode in this process; default up to 8, all cores on the pixel path); ``decode_processes``
    (torchvision decoder): processes that read and decode beside inference, sharing the reading threads
    (:mod:`isc.extract.decode_workers`; default 0: in this process, until measured on a GPU); ``half``: float16
    inference (default on cuda); ``scales``/``flip``: test-time augmentation, descriptors averaged. ``crops``: each image
    gives :data:`isc.extract.decode.CROP_VIEWS` adjacent rows with its id, its full view then each of its
    :func:`isc.extract.decode.crop_boxes` (a query or reference file for the matching track; the attribute
    ``views_per_id`` says so); ``grid`` (with crops): then ``grid`` x ``grid`` views of half the side
    (:func:`isc.extract.decode.view_boxes`, 0: none; the attribute ``grid_views``); ``cut_views`` (with crops):
    those views cut from the resized full view, at its scale, instead of each resized to the view size
    (:func:`isc.extract.decode.cut_views`: about half the model's work; the attribute ``cut_views``). ``strict``: the first broken
    image raises InputError. ``resume``: continue from the partial file of a killed run, extracting again the
    images changed since; ``update``: when there is no such file, start from the rows the output already holds,
    if the same model made them, so that only images added or changed since are described (isc-find's cache of a
    folder). ``max_pixels``: larger images
    are broken; a warning when more than ``max_broken`` of the images are broken.
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    device: str | None = None
    workers: int | None = None
    decoder: str | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crops: bool = False
    grid: int = 0
    cut_views: bool = False
    half: bool | None = None
    strict: bool = False
    resume: bool = True
    update: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_broken: float = 0.01
    decode_processes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", tuple(self.scales))  # a list given: kept as the frozen tuple
        if self.decoder not in (None, *DECODERS):
            raise InputError(f"unknown decoder {self.decoder!r} (choose from {', '.join(DECODERS)})")
        if not self.scales or min(self.scales) <= 0:
            raise SettingError("scales", f"must be positive, got {list(self.scales)}")
        for name, least in (("batch_size", 1), ("workers", 0), ("max_pixels", 1), ("decode_processes", 0)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise SettingError(name, f"must be at least {least}, got {value}")
        if self.grid not in GRID_SIDES:
            raise SettingError("grid", f"must be one of {', '.join(map(str, GRID_SIDES))}, got {self.grid}")
        if not self.max_broken >= 0:
            raise SettingError("max_broken", f"must be at least 0, got {self.max_broken}")
        check_device(self.device)

    def config(self, model: DescriptorModel) -> dict[str, object]:
        """The attributes of a descriptor file these options make with ``model`` (:func:`extraction_config`)."""
        return extraction_config(model, self.scales, self.flip, self.crops, self.grid, self.cut_views)

    def plan(self, model: DescriptorModel) -> ExtractionPlan:
        """These options' defaults resolved for ``model`` on this machine. SettingError for decode processes
        without the torchvision decoder."""
        # a model no GPU runs (PDQ; ONNX without onnxruntime's CUDA provider) stays on the CPU unless told: on the
        # pixel path it then runs without torch
        device = device_name(self.device if self.device or model.gpu_capable else "cpu")
        on_gpu = device.startswith("cuda")
        decoder = self.decoder or ("torchvision" if on_gpu and not model.takes_pixels else "pil")
        if self.decode_processes and decoder != "torchvision":  # refused, not ignored: pil decodes in its workers
            raise SettingError("decode_processes", f"needs the torchvision decoder, and this run decodes with "
                               f"{decoder} (whose decoding runs in the worker processes)")
        pixels = decoder == "pil" and model.takes_pixels
        workers = self.workers
        if workers is None:
            cores = os.cpu_count() or 1
            # the pixel path's processes do all the decoding (and PDQ's hashing): every core, shared by local ranks
            workers = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if pixels \
                else min(16 if decoder == "torchvision" else 8, cores)
        return ExtractionPlan(
            device=device, decoder=decoder, pixels=pixels, workers=workers, half=on_gpu if self.half is None else self.half,
            decode_processes=self.decode_processes if decoder == "torchvision" and not pixels else 0,
            sizes=tuple(view_sizes(model, self.scales)), batch_size=self.batch_size, max_pixels=self.max_pixels,
            flip=self.flip, crops=self.crops, grid=self.grid if self.crops else 0, cut=self.crops and self.cut_views)


def _seed_resume_log(cache: Path, config: Mapping[str, object]) -> bool:
    """Start the resume log of an extraction into ``cache`` from the rows the cache already holds, when the
    same model made them, so that only images added or changed since are described; returns whether it did."""
    partial = partial_path(cache, 0, 1)
    if partial.exists() or not cache.is_file():
        return False  # a killed run's log is resumed as it is
    try:
        if model_differences(dict(config), read_descriptor_attrs(cache)):
            return False
        with h5py.File(cache, "r") as f:
            ids, descriptors, stamps = f["ids"][()], f["descriptors"][()], f["file_stamps"][()]
    except (InputError, OSError, KeyError):
        return False  # not a cache of this toolkit's: described again, then replaced
    views = int(config.get("views_per_id", 1))
    writer = PartialWriter(partial, dict(config), resume=False)
    try:
        # the log holds one row of all the views per image
        writer.append([decode_id(i) for i in ids[::views]], descriptors.reshape(len(ids) // views, -1),
                      [tuple(s) for s in stamps[::views].tolist()])
    finally:
        writer.close()
    return True


def _image_items(images: Mapping[str, Path] | Sequence[str | Path],
                 classes: Mapping[str, str] | None) -> dict[str, Path]:
    """``images`` as ``{id: path}``; InputError when two share an id, when there are none, or when ``classes``
    does not name the class of each one."""
    items = dict(images) if isinstance(images, Mapping) else {Path(p).stem: Path(p) for p in images}
    if len(items) != len(images):
        raise InputError("two images have the same id (file stem)")
    if not items:
        raise InputError("no images to extract")
    if classes is not None and classes.keys() != items.keys():
        raise InputError("classes must give one class name for every image id")
    return items


def extract(
    images: Mapping[str, Path] | Sequence[str | Path],
    output: str | Path,
    model: DescriptorModel,
    options: ExtractOptions = ExtractOptions(),
    *,
    quiet: bool = False,
    attrs: Mapping[str, object] | None = None,
    classes: Mapping[str, str] | None = None,
    **settings: object,
) -> ExtractResult:
    """Extract the descriptors of ``images`` (``{id: path}``, or paths whose stems are the ids) to ``output``,
    as ``options`` (:class:`ExtractOptions`) says, its fields overridden by ``settings``.

    ``classes``: ``{id: class}``, written as the dataset ``classes``; ``attrs``: more attributes of the output.
    :class:`isc.core.files.NoImageRead` when no image could be read. Returns an :class:`ExtractResult`
    (counts, broken images with reasons, images/s, ``pixels``: whether the pixel path ran).
    """
    options = replace(options, **settings)
    items = _image_items(images, classes)
    output = Path(output)
    ids = sorted(items)
    plan = options.plan(model)
    rank, world, started = join_process_group(plan.device)
    config = options.config(model)
    shards = [ids[r * len(ids) // world:(r + 1) * len(ids) // world] for r in range(world)]
    shard = shards[rank]
    stamps = {i: file_stamp(items[i]) for i in shard}  # before reading: a file changed later is seen as changed
    if options.update and options.resume and world == 1:
        _seed_resume_log(output, config)
    partial = PartialWriter(partial_path(output, rank, world), config, options.resume)
    todo = [i for i in shard if partial.done.get(i) != stamps[i]]
    paths = [items[i] for i in todo]
    if plan.pixels:
        batches = pixel_batches(paths, model, plan)
    else:
        from isc.extract.torch_batches import torch_batches  # torch: this pipeline alone needs it

        batches = torch_batches(paths, model, plan)
    broken: dict[str, str] = {}
    start = time.perf_counter()
    try:
        # closing: a failure stops the decoding processes or threads now, not when its traceback is freed
        with contextlib.closing(batches), progress(total=len(shard), initial=len(shard) - len(todo), unit="img",
                                                   disable=quiet, desc=f"extract {output.name}"
                                                   + (f" [rank {rank}/{world}]" if world > 1 else "")) as bar:
            for positions, descriptors, batch_broken in batches:
                for position, reason in batch_broken.items():
                    if options.strict:
                        raise InputError(f"{items[todo[position]]}: {reason}")
                    broken[todo[position]] = reason
                if positions:
                    batch_ids = [todo[p] for p in positions]
                    _refuse_non_finite(descriptors, batch_ids, plan.half)
                    partial.append(batch_ids, descriptors, [stamps[i] for i in batch_ids])
                if batch_broken:
                    partial.record_broken(broken, stamps)
                bar.update(len(positions) + len(batch_broken))
        partial.record_broken(broken, stamps)
    finally:
        partial.close()
    seconds = time.perf_counter() - start
    extracted = None
    barrier(world)
    try:
        if rank == 0:
            extracted, broken = merge_partial_logs(
                output, world, shards, provenance(**config, **(attrs or {}), n_images=len(ids), decoder=plan.decoder),
                classes, options.max_broken)
    finally:
        barrier(world)  # reached by every rank even when rank 0 fails, so that none waits forever
        leave_process_group(started)
    return ExtractResult(output=str(output), images=len(ids), rank=rank, world_size=world, processed=len(todo),
                         resumed=len(shard) - len(todo), seconds=round(seconds, 3),
                         images_per_second=round(len(todo) / seconds, 1) if seconds else None,
                         model=model.name, dimension=model.dim, device=plan.device, decoder=plan.decoder,
                         decode_processes=plan.decode_processes, pixels=plan.pixels,
                         views_per_id=view_count(options.crops, options.grid),
                         extracted=extracted, broken=broken)



def full_views(crops_file: str | Path, output: str | Path) -> int:
    """Write ``output``, the file an extraction without crops makes, from ``crops_file`` (``extract(...,
    crops=True)``): each image's first row (its full view, described exactly as without crops) of every
    dataset, the attributes less the views' (:data:`isc.core.descriptors.VIEW_ATTRIBUTES`). Returns the rows
    written."""
    with h5py.File(crops_file, "r") as source:
        views = int(source.attrs.get("views_per_id", 0))
        if views < 2 or any(name not in source for name in ("ids", "descriptors", "file_stamps")):
            raise InputError(f"{crops_file}: not a crops file of isc-extract (no views_per_id or file_stamps)")
        n_rows = len(source["ids"]) // views
        with atomic_path(output) as tmp, h5py.File(tmp, "w", libver=H5_LIBVER) as out:
            for name, dataset in source.items():
                if name == "descriptors":
                    target = out.create_dataset(name, shape=(n_rows, dataset.shape[1]), dtype=dataset.dtype,
                                                chunks=dataset.chunks and (min(dataset.chunks[0], max(1, n_rows)),
                                                                           dataset.shape[1]))
                    for start in range(0, n_rows, MERGE_ROWS):
                        stop = min(n_rows, start + MERGE_ROWS)
                        target[start:stop] = dataset[start * views:stop * views][::views]
                else:
                    target = out.create_dataset(name, data=dataset[()][::views])
                target.attrs.update(dataset.attrs)
            out.attrs.update({key: value for key, value in source.attrs.items() if key not in VIEW_ATTRIBUTES})
    return n_rows
