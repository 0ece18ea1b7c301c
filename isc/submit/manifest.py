"""Where a submission goes and what is recorded beside it: ``<file>.manifest.json`` (md5, counts,
provenance, command line, toolkit version, UTC time) and the provenance it quotes."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import h5py

import isc
from isc.core.descriptors import provenance_path, read_descriptor_attrs
from isc.core.files import InputError, check_file, file_digest, write_json

MANIFEST_SUFFIX = ".manifest.json"
SUBMISSIONS_DIR_ENV = "ISC_SUBMISSIONS_DIR"  # the default submissions folder of isc-submit and isc-run


def default_submissions_dir() -> Path:
    """Where submissions go unless told: ``$ISC_SUBMISSIONS_DIR``, else ``./submissions``."""
    return Path(os.environ.get(SUBMISSIONS_DIR_ENV) or "submissions")


def default_submission_path(directory: str | Path, track: str, phase: int) -> Path:
    """``<directory>/phase<P>_matching.csv`` or ``<directory>/phase<P>_descriptors.h5``."""
    return Path(directory) / (f"phase{phase}_matching.csv" if track == "matching" else f"phase{phase}_descriptors.h5")


# -------------------------------------------------------------------------------------------- manifest


def manifest_path(submission: str | Path) -> Path:
    return Path(str(submission) + MANIFEST_SUFFIX)


def write_manifest(submission: str | Path, record: dict[str, object]) -> Path:
    """Write ``<submission>.manifest.json``: the file's name, md5 and size, ``record``, the command line,
    the toolkit version and the UTC time, so that one can tell later what was uploaded."""
    submission = Path(submission)
    manifest = {
        "file": submission.name,
        "md5": file_digest(submission),
        "bytes": submission.stat().st_size,
        **record,
        "command": shlex.join(sys.argv),
        "isc_version": isc.__version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return write_json(manifest_path(submission), manifest)


def read_manifest(submission: str | Path) -> dict[str, object] | None:
    """The manifest beside a submission, or None when there is none."""
    path = manifest_path(submission)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a JSON manifest ({e})") from None


def update_manifest(submission: str | Path, **fields: object) -> Path:
    """Add fields (a local evaluation, say) to an existing manifest, after checking it is the file's."""
    manifest = read_manifest(submission)
    if manifest is None or manifest.get("md5") != file_digest(submission):
        raise InputError(f"{submission}: no manifest, or it describes another file")
    return write_json(manifest_path(submission), {**manifest, **fields})


# ------------------------------------------------------------------------------------------ provenance


def read_provenance(path: str | Path) -> dict[str, object]:
    """What produced a submission's inputs: a JSON file, or the attributes of a descriptor HDF5 file."""
    path = Path(path)
    check_file(path, "file")
    if h5py.is_hdf5(path):
        return read_descriptor_attrs(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: neither JSON nor HDF5 ({e})") from None


def provenance_records(predictions: str | Path, sources: Sequence[str | Path] = ()) -> dict[str, object]:
    """``{path: provenance}`` of ``sources``, or of the sidecar ``<predictions>.provenance.json`` if none given."""
    sidecar = provenance_path(predictions)
    if not sources and sidecar.is_file():
        sources = [sidecar]
    return {str(source): read_provenance(source) for source in sources}
