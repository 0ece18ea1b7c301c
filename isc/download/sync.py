"""isc-download's stage: bring ``<dest>/<split>_images/`` up to date with the competition's bucket, every file
checked against its MD5.

The pipeline, one small function per step:

1. :func:`isc.download.s3.connect`: an S3 client for the chosen (or the fastest) regional bucket.
2. ``load_metadata``: the split's ``image_id,s3_uri,md5_checksum`` listing, from ``--metadata`` or
   from a mirror's bucket.
3. ``select_rows``: AWS-CLI-style ``--include``/``--exclude`` filters, id ranges, a limit.
4. :func:`isc.download.local_copy.check_folder`: which selected files are already present and verified, missing or
   corrupt.
5. :func:`isc.download.s3.fetch_object`: GET one object, MD5-checked, retried with backoff.
6. ``download_split``: all of it in parallel threads, a progress bar, a :class:`DownloadReport`.

Object keys come from the metadata and are never trusted as paths (:func:`local_name`)."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path

import botocore.exceptions
import pandas as pd
from botocore.client import BaseClient
from tqdm import tqdm

from isc.core.competition import images_prefix, metadata_file, metadata_key, parse_id_range, split_folder
from isc.core.files import InputError, atomic_path, write_json
from isc.core.tables import read_metadata
from isc.core.threads import bounded_map
from isc.download.local_copy import VerifiedIndex, check_folder, remove_stale_parts
from isc.download.s3 import (
    DownloadOptions,
    ObjectGetter,
    connect,
    fetch_object,
    request_failure,
)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------ metadata


def fetch_metadata(client: BaseClient, bucket: str, split: str, path: str | Path) -> pd.DataFrame:
    """Download the split's metadata CSV from a mirror's bucket to ``path`` and read it."""
    key = metadata_key(split)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.BotoCoreError as e:
        raise request_failure(client, e) from None
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "AccessDenied", "403", "NoSuchBucket"):
            raise InputError(
                f"s3://{bucket}/{key} not found ({code}): the competition's buckets do not hold the metadata; "
                f"download {split}_metadata.csv from the competition's data page and give it as the metadata file"
            ) from None
        raise
    with atomic_path(path) as tmp:
        tmp.write_bytes(body)
    return read_metadata(path, split)


def load_metadata(
    client: BaseClient, bucket: str, split: str, dest: str | Path, metadata_path: str | Path | None = None,
    reuse_saved: bool = False,
) -> pd.DataFrame:
    """The split's metadata: the given CSV, or the bucket's copy saved as ``dest/<split>_metadata.csv``
    (fetched again unless ``reuse_saved`` and a saved copy exists: verification then needs no network)."""
    saved = metadata_file(dest, split)
    if metadata_path is not None or (reuse_saved and saved.is_file()):
        return read_metadata(metadata_path or saved, split)
    return fetch_metadata(client, bucket, split, saved)


def object_key(s3_uri: str) -> str:
    """The key part of ``s3://bucket/key`` (the bucket is the chosen region's, not the listed one)."""
    return s3_uri.removeprefix("s3://").partition("/")[2]


_SAFE_NAME = re.compile(r"[\w-][\w.-]*")


def local_name(key: str, split: str) -> str | None:
    """The file name an object gets in the split's folder: the key's part after the split's prefix, when it is
    a plain file name; None for a key that could land anywhere else (``../``, sub-folders, hidden names)."""
    prefix = images_prefix(split)
    name = key[len(prefix):] if key.startswith(prefix) else ""
    return name if _SAFE_NAME.fullmatch(name) else None


# -------------------------------------------------------------------------------------------- subsets


def passes_filters(name: str, filters: Sequence[tuple[str, str]]) -> bool:
    """The AWS CLI's rule: everything is included, then each filter in order overrides when its pattern matches."""
    included = True
    for kind, pattern in filters:
        if fnmatchcase(name, pattern):
            included = kind == "include"
    return included


def select_rows(
    metadata: pd.DataFrame,
    split: str,
    filters: Sequence[tuple[str, str]] = (),
    id_ranges: Sequence[str] = (),
    limit: int | None = None,
) -> pd.DataFrame:
    """The metadata rows to fetch, sorted by id: filters on the object name (``Q00012.jpg``), id ranges, limit."""
    rows = metadata.sort_values("image_id", kind="stable")
    if id_ranges:
        ranges = [parse_id_range(r, split) for r in id_ranges]
        ids = rows["image_id"]
        rows = rows[pd.concat([(ids >= lo) & (ids <= hi) for lo, hi in ranges], axis=1).any(axis=1)]
    if filters:
        names = rows["s3_uri"].map(lambda uri: object_key(uri).rpartition("/")[2])
        rows = rows[names.map(lambda name: passes_filters(name, filters)).to_numpy(dtype=bool)]
    if limit is not None:
        rows = rows.head(limit)
    return rows.reset_index(drop=True)


# ------------------------------------------------------------------------------------------ the stage


@dataclass
class DownloadReport:
    """What a run did; ``missing``/``corrupt``: selected files still so after the run; ``ok`` when every
    selected file is present and verified. Written as JSON."""

    split: str
    region: str
    bucket: str
    endpoint_url: str | None
    folder: str
    selected: int = 0
    downloaded: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    verify_only: bool = False
    interrupted: bool = False
    aborted: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.failed or self.interrupted or self.aborted)

    def to_json(self) -> dict[str, object]:
        rate = self.downloaded / self.seconds if self.seconds else 0.0
        return {**asdict(self), "ok": self.ok, "files_per_second": round(rate, 2),
                "megabytes_per_second": round(self.bytes / 1e6 / self.seconds, 2) if self.seconds else 0.0}

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_json(), indent=1)


class _Progress:
    """tqdm over files with bytes and MB/s in the postfix (refreshed twice a second, not per file)."""

    def __init__(self, total: int, desc: str, quiet: bool) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="file", disable=quiet, dynamic_ncols=True)
        self.start = time.perf_counter()
        self.bytes = 0
        self._shown = 0.0

    def update(self, nbytes: int) -> None:
        self.bytes += nbytes
        self.bar.update(1)
        now = time.perf_counter()
        if now - self._shown > 0.5:
            self._shown = now
            self.bar.set_postfix_str(f"{self.bytes / 1e6:,.0f} MB, {self.bytes / 1e6 / (now - self.start):.1f} MB/s")

    def close(self) -> None:
        self.bar.close()


def _expected_files(rows: pd.DataFrame, split: str, folder: Path,
                    report: DownloadReport) -> tuple[dict[str, str], dict[str, str]]:
    """({file name: MD5}, {file name: object key}) of the metadata ``rows``; a row whose key would not land as
    ``<id>.jpg`` in ``folder`` goes to ``report.failed`` instead."""
    expected, keys = {}, {}
    for image_id, uri, md5 in rows[["image_id", "s3_uri", "md5_checksum"]].itertuples(index=False):
        key = object_key(uri)
        name = local_name(key, split)
        if name != f"{image_id}.jpg":
            reason = "refused: key would land outside the folder" if name is None else f"refused: key is not {image_id}.jpg"
            report.failed.append({"id": image_id, "key": key, "reason": f"{reason} ({folder})"})
            continue
        expected[name], keys[name] = md5, key
    return expected, keys


def download_split(
    getter: ObjectGetter,
    split: str,
    rows: pd.DataFrame,
    dest: str | Path,
    options: DownloadOptions = DownloadOptions(),
    *,
    all_names: set[str] | None = None,
    quiet: bool = False,
    report: DownloadReport | None = None,
    give_up_after: int | None = None,
    **settings: object,
) -> DownloadReport:
    """Bring ``dest/<split>_images/`` up to date with ``rows`` (metadata rows): check, then fetch what is wrong,
    with ``options``'s workers, attempts and verification (:class:`DownloadOptions`, its fields overridden by
    ``settings``).

    ``verify_only`` re-hashes every selected file and fetches nothing unless ``repair``. After ``give_up_after``
    failed files in a row (default max(50, 4 × workers): the network or the bucket is gone) the run stops
    rather than failing every remaining file. ``report`` is filled in place (so that an interrupted run still
    has one) and returned.
    """
    options = replace(options, **settings)
    workers, verify_only = options.workers, options.verify_only
    start = time.perf_counter()
    folder = split_folder(dest, split)
    report = report or DownloadReport(split, "", getter.bucket, None, str(folder))
    report.verify_only = verify_only
    report.selected = len(rows)
    expected, keys = _expected_files(rows, split, folder, report)
    if all_names is None:
        all_names = set(expected)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(folder)
    index = VerifiedIndex(folder)
    try:
        check = check_folder(folder, expected, all_names, index, rehash=options.rehash or verify_only,
                             workers=min(workers, os.cpu_count() or 1), quiet=quiet)
        report.skipped = len(check.verified)
        report.missing, report.corrupt, report.extra = check.missing, check.corrupt, check.extra
        todo = check.missing + check.corrupt
        if verify_only and not options.repair:
            return report
        fixed = set()
        give_up_after = give_up_after or max(50, 4 * workers)
        failed_in_a_row = 0
        progress = _Progress(len(todo), f"{split} images", quiet or not todo)
        fetch = lambda name: fetch_object(getter, keys[name], folder / name, expected[name],  # noqa: E731
                                          options.attempts)
        results = bounded_map(fetch, sorted(todo), workers)
        try:
            for result in results:
                failed_in_a_row = 0 if result.ok else failed_in_a_row + 1
                if result.ok:
                    report.downloaded += 1
                    report.bytes += result.nbytes
                    fixed.add(result.name)
                    index.record(result.name, (folder / result.name).stat(), expected[result.name])
                else:
                    report.failed.append({"id": result.name.removesuffix(".jpg"), "key": keys[result.name],
                                          "reason": result.reason})
                progress.update(result.nbytes)
                if failed_in_a_row >= give_up_after:
                    report.aborted = f"stopped after {failed_in_a_row} failed files in a row (last: {result.reason})"
                    break
        finally:
            results.close()  # cancels what has not started
            progress.close()
        report.missing = [n for n in report.missing if n not in fixed]
        report.corrupt = [n for n in report.corrupt if n not in fixed]
    except KeyboardInterrupt:
        report.interrupted = True
        raise
    finally:
        report.seconds = round(time.perf_counter() - start, 3)
        index.compact(all_names)
    return report


def sync_split(
    split: str,
    dest: str | Path,
    options: DownloadOptions = DownloadOptions(),
    *,
    metadata_path: str | Path | None = None,
    filters: Sequence[tuple[str, str]] = (),
    id_ranges: Sequence[str] = (),
    limit: int | None = None,
    report_path: str | Path | None = None,
    quiet: bool = False,
) -> tuple[DownloadReport, Path]:
    """All of ``isc-download``: pick the bucket, read the metadata, bring ``dest/<split>_images/`` up to date, as
    ``options`` say (:class:`DownloadOptions`); ``filters``, ``id_ranges`` and ``limit`` select the images
    (:func:`select_rows`).

    The report goes to ``report_path`` (default ``dest/<split>_download_report.json``), also when interrupted;
    returns it and its path. An endpoint that never answers ends in :class:`isc.download.s3.EndpointUnresponsive`.
    """
    # a metadata file given is read before any request: a bad one is refused at once, network or not
    given = read_metadata(metadata_path, split) if metadata_path is not None else None
    offline = options.verify_only and not options.repair
    connection = connect(options, split, check=not offline)
    if connection.timings:
        log.info("fastest region: %s (%s)", connection.region,
                 ", ".join(f"{r} {t * 1000:.0f} ms" for r, t in connection.timings.items()))
    client, bucket = connection.client, connection.bucket
    metadata = given if given is not None else load_metadata(client, bucket, split, dest, reuse_saved=offline)
    rows = select_rows(metadata, split, filters, id_ranges, limit)
    all_names = {uri.rpartition("/")[2] for uri in metadata["s3_uri"]}
    getter = ObjectGetter(client, bucket, images_prefix(split), options.workers)
    report_path = Path(report_path or Path(dest) / f"{split}_download_report.json")
    report = DownloadReport(split, connection.region, bucket, client.meta.endpoint_url,
                            str(split_folder(dest, split)))
    try:
        download_split(getter, split, rows, dest, options, all_names=all_names, quiet=quiet, report=report)
    finally:
        report.write(report_path)
    return report, report_path
