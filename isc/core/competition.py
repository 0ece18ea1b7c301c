"""The competition's data: splits, image ids and phases, the data root's layout, the two tracks' limits, and
where the organisers publish it (the regional S3 buckets and their keys).

Ids are any text elsewhere (a file's stem or its path relative to a folder); the rules here (queries ``Q`` +
5 digits, references ``R`` + 6, training ``T`` + 6, ASCII) apply only where the competition needs them: a
phase, a submission, a competition data root.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from isc.core.files import InputError, shown

if TYPE_CHECKING:
    import pandas as pd  # imported where used

SPLITS = ("query", "reference", "training")
ID_PREFIX = {"query": "Q", "reference": "R", "training": "T"}
ID_DIGITS = {"query": 5, "reference": 6, "training": 6}  # Q00000, R000000, T000000
# [0-9], not \d: \d also matches non-ASCII digits (full-width "０"), which no competition id holds
ID_PATTERNS = {split: re.compile(rf"{ID_PREFIX[split]}[0-9]{{{ID_DIGITS[split]}}}") for split in SPLITS}
PHASE_QUERY_RANGES = {1: (0, 49_999), 2: (50_000, 99_999)}
PHASES = tuple(PHASE_QUERY_RANGES)  # the competition's phases, 1 and 2
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


# ------------------------------------------------------------------------------------------- regions


@dataclass(frozen=True)
class Region:
    """One copy of the competition's data: its public bucket and the AWS region that hosts it."""

    bucket: str
    aws_region: str


# the competition's public buckets, one copy per region (US West, Frankfurt, Singapore)
REGIONS = {
    "us-west": Region("drivendata-competition-fb-isc-data", "us-west-2"),
    "eu": Region("drivendata-competition-fb-isc-data-eu", "eu-central-1"),
    "asia": Region("drivendata-competition-fb-isc-data-asia", "ap-southeast-1"),
}
DEFAULT_REGION = "us-west"
AUTO_REGION = "auto"  # not a bucket: time a small request to each region and use the fastest
REGION_CHOICES = (*REGIONS, AUTO_REGION)  # what isc-download's and isc-run's --region accept


def check_region(name: str, choices: Sequence[str] = REGION_CHOICES) -> None:
    """InputError naming ``name`` when it is none of ``choices`` (region names, or ``auto`` too)."""
    if name not in choices:
        raise InputError(f"unknown region {name!r} (choose from {', '.join(choices)})")


def region_named(name: str) -> Region:
    """The bucket and AWS region of a region name (``us-west``, ``eu``, ``asia``)."""
    check_region(name, tuple(REGIONS))
    return REGIONS[name]


def bucket_for_region(region: str) -> str:
    """The competition's bucket for a region name (``us-west``, ``eu``, ``asia``)."""
    return region_named(region).bucket


def images_prefix(split: str) -> str:
    """The key prefix of a split's images in the competition's buckets."""
    return f"all/{split}_images/"


def metadata_key(split: str) -> str:
    """Where a mirror of the competition (such as isc-s3serve) keeps a split's metadata CSV."""
    return f"all/{split}_metadata.csv"
