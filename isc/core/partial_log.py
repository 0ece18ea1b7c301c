"""The rows an extraction has made so far, one crash-safe log per rank (:class:`PartialLog`), which a killed
run resumes from, and their merge, in id order, into the descriptor file (HDF5)."""

from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from isc.core.descriptors import decode_id, encode_ids, model_differences
from isc.core.files import InputError, NoImageRead, atomic_path, os_error_at

H5_LIBVER = ("v108", "latest")  # dense attribute storage: the broken-image list can exceed 64 KB
MERGE_ROWS = 8192


class PartialLog:
    """The rows extracted so far by one rank: an append-only log that a kill -9 cannot corrupt.

    A header line (``isc-partial/2`` and the extraction config as JSON), then one record per batch, written
    with a single ``write``: kind (``D`` descriptors, ``B`` the broken images so far), payload length and
    CRC-32, payload. A ``D`` payload is n and the id length (uint32), the n ids (ASCII, NUL-padded), n ×
    (size, st_ctime_ns) of the image files as int64, and n × views × dim float32 (``views_per_id`` of the
    config, 1 without it: one row holds all the views of an image, so that an image is done or not). A ``B`` payload is JSON:
    ``{"reasons": {id: reason}, "stamps": {id: [size, st_ctime_ns]}}``. Reading stops at the first torn
    or damaged record, which a resumed run cuts off and writes again. Format 1 (no file stamps) is refused.
    """

    MAGIC = b"isc-partial/2\n"
    RECORD = struct.Struct("<cQI")  # kind, payload length, CRC-32 of the payload
    COUNTS = struct.Struct("<II")  # rows, id length

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: dict[str, object] = {}
        self.ids: list[str] = []
        self.stamps = np.zeros((0, 2), np.int64)  # (size, st_ctime_ns) of each row's image file
        self.broken: dict[str, str] = {}
        self.broken_stamps: dict[str, list[int]] = {}
        self.size = 0  # bytes of intact header and records
        self._data = np.memmap(path, np.uint8, "r") if path.stat().st_size else np.zeros(0, np.uint8)
        self._blocks: list[tuple[int, int, int]] = []  # (first row, rows, byte offset of the descriptors)
        self._parse()

    @classmethod
    def read(cls, path: str | Path) -> PartialLog:
        return cls(Path(path))

    def _parse(self) -> None:
        data = self._data
        end_of_header = bytes(data[:65536]).find(b"\n", len(self.MAGIC))
        if bytes(data[:len(self.MAGIC)]) != self.MAGIC or end_of_header < 0:
            first_line = bytes(data[:64]).split(b"\n")[0]
            if first_line.startswith(b"isc-partial/"):
                raise InputError(f"{self.path}: format {first_line.decode(errors='replace')} of an older "
                                 f"isc-extract, without file stamps")
            raise InputError(f"{self.path}: not a partial file of isc-extract")
        self.config = json.loads(bytes(data[len(self.MAGIC):end_of_header]))
        position = end_of_header + 1
        stamps = []
        while position + self.RECORD.size <= len(data):
            kind, length, crc = self.RECORD.unpack_from(data, position)
            start, stop = position + self.RECORD.size, position + self.RECORD.size + length
            if stop > len(data) or zlib.crc32(data[start:stop]) != crc:
                break  # torn by a kill: everything before it is intact
            if kind == b"D":
                rows, id_length = self.COUNTS.unpack_from(data, start)
                ids_at = start + self.COUNTS.size
                stamps_at = ids_at + rows * id_length
                ids = np.frombuffer(data, f"S{id_length}", rows, ids_at)
                stamps.append(np.frombuffer(data, np.int64, rows * 2, stamps_at).reshape(rows, 2))
                self._blocks.append((len(self.ids), rows, stamps_at + rows * 16))
                self.ids += [decode_id(i) for i in ids]
            elif kind == b"B":
                broken = json.loads(bytes(data[start:stop]))
                self.broken, self.broken_stamps = broken["reasons"], broken["stamps"]
            position = stop
        self.size = position
        self.stamps = np.concatenate(stamps) if stamps else self.stamps

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """The descriptors of the given row numbers, in that order: [rows, views × dim]."""
        dim = int(self.config["dimension"]) * int(self.config.get("views_per_id", 1))
        out = np.empty((len(indices), dim), np.float32)
        firsts = np.array([first for first, _, _ in self._blocks])
        block_of = np.searchsorted(firsts, indices, side="right") - 1
        for block in np.unique(block_of):
            first, rows, offset = self._blocks[block]
            chosen = block_of == block
            values = np.frombuffer(self._data, np.float32, rows * dim, offset).reshape(rows, dim)
            out[chosen] = values[indices[chosen] - first]
        return out


class PartialWriter:
    """Appends batches to a rank's :class:`PartialLog`; reopens the log of a killed run if its model matches."""

    def __init__(self, path: Path, config: dict[str, object], resume: bool):
        self.path = path
        self.done: dict[str, tuple[int, int]] = {}  # id -> file stamp of its last row
        log = self._reopen(config) if resume and path.exists() else None
        if log is None:
            with atomic_path(path) as tmp:
                tmp.write_bytes(PartialLog.MAGIC + json.dumps(config).encode() + b"\n")
        else:
            self.done = dict(zip(log.ids, map(tuple, log.stamps.tolist()), strict=True))
            os.truncate(path, log.size)  # drop a torn last record
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115 (closed by close())

    def _reopen(self, config: dict[str, object]) -> PartialLog | None:
        try:
            log = PartialLog.read(self.path)
        except (InputError, ValueError) as e:
            warnings.warn(f"unreadable partial file ({e}), starting again", stacklevel=3)
            return None
        differences = model_differences(log.config, config)
        if differences:
            raise InputError(f"{self.path}: holds descriptors made otherwise than this run ({'; '.join(differences)}); "
                             "delete it or start again without resuming")
        return log

    def _write(self, kind: bytes, payload: bytes) -> None:
        end = self.file.tell()
        record = memoryview(PartialLog.RECORD.pack(kind, len(payload), zlib.crc32(payload)) + payload)
        try:
            while record:  # unbuffered: a write may take part of the record
                record = record[self.file.write(record):]
        except OSError as e:
            # a full disk: cut the torn record off now (it would fill what space is freed) and name the file
            os.ftruncate(self.file.fileno(), end)
            named = os_error_at(e, self.path)
            if named is e:
                raise
            raise named from e

    def append(self, ids: Sequence[str], descriptors: np.ndarray, stamps: Sequence[tuple[int, int]]) -> None:
        encoded = encode_ids(ids)
        self._write(b"D", PartialLog.COUNTS.pack(len(ids), encoded.itemsize) + encoded.tobytes()
                    + np.array(stamps, np.int64).reshape(len(ids), 2).tobytes()
                    + np.ascontiguousarray(descriptors, np.float32).tobytes())

    def record_broken(self, broken: Mapping[str, str], stamps: Mapping[str, tuple[int, int]]) -> None:
        self._write(b"B", json.dumps({"reasons": dict(broken), "stamps": {i: stamps[i] for i in broken}}).encode())

    def close(self) -> None:
        self.file.close()


def partial_path(output: Path, rank: int, world: int) -> Path:
    return output.with_name(f"{output.name}.rank{rank}-of-{world}.partial")


def _merge(parts: Sequence[Path], output: Path, shards: Sequence[Sequence[str]], attrs: dict[str, object],
           classes: Mapping[str, str] | None) -> tuple[int, dict[str, str]]:
    """Write each rank's rows of its shard of ids into ``output``, in id order: (rows, broken images).

    A log may hold several rows of an id (its image changed after a killed run): the last is the one made
    from the file as it is now. A log row of several views (``views_per_id``) becomes that many adjacent rows
    of the id (with its file stamp and class). NoImageRead, and nothing written, when every image is broken.
    """
    logs = [PartialLog.read(p) for p in parts]
    broken: dict[str, str] = {}
    broken_stamps: dict[str, list[int]] = {}
    chosen: list[tuple[str, int, int]] = []  # (id, log, row); the shards are consecutive runs of sorted ids
    for k, (log, shard) in enumerate(zip(logs, shards, strict=True)):
        last_row = {image_id: row for row, image_id in enumerate(log.ids)}
        for image_id in shard:
            if image_id in log.broken:
                broken[image_id], broken_stamps[image_id] = log.broken[image_id], log.broken_stamps[image_id]
            elif image_id in last_row:
                chosen.append((image_id, k, last_row[image_id]))
            else:
                raise InputError(f"{parts[k]}: no row of {image_id}; delete the partial files and rerun")
    if not chosen:
        first = next(iter(broken))
        raise NoImageRead(f"none of the {len(broken)} images could be read ({first}: {broken[first]}"
                          f"{', ...' if len(broken) > 1 else ''}); {output} not written")
    views = int(attrs.get("views_per_id", 1))
    ids = encode_ids([image_id for image_id, _, _ in chosen])
    source = np.array([k for _, k, _ in chosen])
    rows = np.array([row for _, _, row in chosen])
    stamps = np.empty((len(chosen), 2), np.int64)
    for k, log in enumerate(logs):
        stamps[source == k] = log.stamps[rows[source == k]]
    dim = int(attrs["dimension"])
    n_rows = len(ids) * views
    with atomic_path(output) as tmp, h5py.File(tmp, "w", libver=H5_LIBVER) as out:
        out.create_dataset("ids", data=np.repeat(ids, views))
        target = out.create_dataset("descriptors", shape=(n_rows, dim), dtype=np.float32,
                                    chunks=(max(1, min(4096, n_rows, 2 ** 20 // dim)), dim))
        for start in range(0, len(ids), MERGE_ROWS):
            block = np.empty((min(MERGE_ROWS, len(ids) - start), views * dim), np.float32)
            for k, log in enumerate(logs):
                mine = np.flatnonzero(source[start:start + MERGE_ROWS] == k)
                if len(mine):
                    block[mine] = log.rows(rows[start + mine])
            target[start * views:(start + len(block)) * views] = block.reshape(-1, dim)
        out.create_dataset("file_stamps", data=np.repeat(stamps, views, axis=0)).attrs["columns"] = "size,ctime_ns"
        if classes is not None:
            out.create_dataset("classes", data=np.repeat(encode_ids([classes[image_id] for image_id, _, _ in chosen]),
                                                                  views))
        for key, value in {**attrs, "broken": json.dumps(broken), "n_broken": len(broken),
                           "broken_stamps": json.dumps(broken_stamps)}.items():
            out.attrs[key] = value
    return len(ids), broken


def merge_partial_logs(output: Path, world: int, shards: Sequence[Sequence[str]], attrs: dict[str, object],
                       classes: Mapping[str, str] | None, max_broken: float) -> tuple[int, dict[str, str]]:
    """Merge the ranks' partial logs into ``output`` and delete them: (rows, broken images); warn when too many
    images are broken."""
    parts = [partial_path(output, r, world) for r in range(world)]
    try:
        extracted, broken = _merge(parts, output, shards, attrs, classes)
    except NoImageRead:
        for part in parts:
            part.unlink()  # they hold nothing but the reasons, which the error gives
        raise
    for part in parts:
        part.unlink()
    images = extracted + len(broken)
    if len(broken) > max_broken * images:
        warnings.warn(f"{output}: {len(broken):,} of {images:,} images ({len(broken) / images:.1%}) are broken, "
                      f"more than {max_broken:.1%} (listed in its attribute 'broken')", stacklevel=3)
    return extracted, broken
