"""Download a split of the competition's images from S3, every file checked against its MD5.

The pipeline, one small function per step:

1. ``make_client``: an anonymous (unsigned) botocore S3 client by default, signed with a named profile
   when asked; it lists, probes regions and fetches the metadata, with botocore's retries.
2. ``load_metadata``: the split's ``image_id,s3_uri,md5_checksum`` listing, from ``--metadata`` or
   from a mirror's bucket.
3. ``select_rows``: AWS-CLI-style ``--include``/``--exclude`` filters, id ranges, a limit.
4. ``check_folder``: which selected files are already present and verified, missing or corrupt; a
   small journal of verified (size, mtime, md5) avoids re-hashing a complete folder on every run.
5. ``fetch_object``: GET one object through :class:`ObjectGetter` (URLs made by botocore, bytes over
   one bounded urllib3 pool), stream it to ``.<name>.part`` while hashing it, rename it only when the
   MD5 matches; 5xx, throttling, dropped connections and mismatches are retried with backoff.
6. ``download_split``: all of it in parallel threads, a progress bar, a :class:`DownloadReport`.

Object keys come from the metadata and are never trusted as paths (:func:`local_name`).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import re
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import boto3
import botocore.exceptions
import botocore.httpsession
import pandas as pd
import urllib3
from botocore import UNSIGNED
from botocore.client import BaseClient
from botocore.config import Config
from tqdm import tqdm

import isc
from isc.io import (
    ID_PATTERNS,
    REGION_BUCKETS,
    InputError,
    atomic_path,
    images_prefix,
    metadata_key,
    read_metadata,
)

# the AWS regions holding the three copies (US West, Frankfurt, Singapore)
REGION_NAMES = {"us-west": "us-west-2", "eu": "eu-central-1", "asia": "ap-southeast-1"}
DEFAULT_WORKERS = 16
DEFAULT_ATTEMPTS = 5
DEFAULT_TIMEOUT = 60.0  # seconds for a connection, or for the next bytes of an answer
CHUNK_BYTES = 1 << 20
INDEX_NAME = ".isc-verified.tsv"
PART_SUFFIX = ".part"

# -------------------------------------------------------------------------------------------- client


def bucket_for_region(region: str) -> str:
    """The competition's bucket for a region name (``us-west``, ``eu``, ``asia``)."""
    if region not in REGION_BUCKETS:
        raise InputError(f"unknown region {region!r} (choose from {', '.join(REGION_BUCKETS)})")
    return REGION_BUCKETS[region]


class EndpointUnresponsive(InputError):
    """The S3 endpoint took connections but did not answer in time, on every attempt: nothing could be fetched.

    isc-download exits 1 on it (re-running later may work); elsewhere it is one more one-line error.
    """


def endpoint_url_or_environment(endpoint_url: str | None) -> str | None:
    """``endpoint_url``, else ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` as the AWS tools read them."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def make_client(
    region: str = "us-west",
    endpoint_url: str | None = None,
    profile: str | None = None,
    max_pool_connections: int = DEFAULT_WORKERS,
    retry_mode: str = "standard",
    max_attempts: int = DEFAULT_ATTEMPTS,
    aws_region: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> BaseClient:
    """An S3 client for a regional bucket: unsigned unless a profile is named (``profile`` or ``AWS_PROFILE``).

    ``endpoint_url`` (or ``AWS_ENDPOINT_URL``) points at a mirror or a local server, with path-style addressing.
    ``aws_region`` overrides the AWS region assumed for ``region``'s bucket. Retries (listing, metadata) are
    botocore's, in ``retry_mode``, ``max_attempts`` tries in all; ``timeout``: seconds to wait for a connection
    or for the next bytes of an answer (object downloads use the same).
    """
    profile = profile or os.environ.get("AWS_PROFILE") or None
    endpoint_url = endpoint_url_or_environment(endpoint_url)
    config = Config(
        signature_version="s3v4" if profile else UNSIGNED,  # presigned URLs: SigV4, which every region accepts
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        max_pool_connections=max_pool_connections,
        retries={"mode": retry_mode, "total_max_attempts": max_attempts},  # "max_attempts" would not count the first
        connect_timeout=timeout,
        read_timeout=timeout,
        parameter_validation=False,  # the parameters are ours; validating them costs CPU on every request
        response_checksum_validation="when_required",  # we check the MD5 ourselves
    )
    try:
        return boto3.Session(profile_name=profile).client(
            "s3", region_name=aws_region or REGION_NAMES[region], endpoint_url=endpoint_url, config=config
        )
    except botocore.exceptions.ProfileNotFound:
        raise InputError(f"AWS profile {profile!r} not found in the AWS config files") from None


def _request_failure(client: BaseClient, error: botocore.exceptions.BotoCoreError) -> InputError:
    """The one-line error for a request that botocore gave up on: refused or unresolvable endpoints are bad
    input; timeouts and dropped connections, after every attempt, are :class:`EndpointUnresponsive`."""
    config = client.meta.config
    if isinstance(error, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.HTTPClientError):
        return EndpointUnresponsive(
            f"no answer from the S3 endpoint {client.meta.endpoint_url} ({error}) in "
            f"{config.retries['total_max_attempts']} attempts of up to {config.read_timeout:g} s; re-run later "
            "or raise --timeout")
    if isinstance(error, botocore.exceptions.EndpointConnectionError):
        return InputError(f"cannot reach the S3 endpoint ({error})")
    return InputError(f"S3 request failed: {error}")  # e.g. a profile without credentials


def check_reachable(client: BaseClient, bucket: str, split: str) -> str | None:
    """One small listing before a long run (an unreachable bucket is one error, not a million failed files);
    returns the bucket's AWS region as S3 reports it (None from servers that do not say)."""
    try:
        answer = client.list_objects_v2(Bucket=bucket, Prefix=images_prefix(split), MaxKeys=1)
    except botocore.exceptions.BotoCoreError as e:
        raise _request_failure(client, e) from None
    except botocore.exceptions.ClientError as e:
        raise InputError(f"s3://{bucket}/{images_prefix(split)}: {_error_code(e)} ({e})") from None
    return answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")


def connect(
    region: str, split: str, endpoint_url: str | None = None, profile: str | None = None,
    max_pool_connections: int = DEFAULT_WORKERS, check: bool = True, attempts: int = DEFAULT_ATTEMPTS,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[str, object, dict[str, float]]:
    """(region, client, probe timings) for a region name or ``auto`` (the fastest bucket; timings empty otherwise).

    ``check``: list one key first, so that an unreachable bucket fails at once, and follow S3 when it says the
    bucket lives in another AWS region than assumed. ``attempts`` and ``timeout`` bound every request.
    """
    def client_for(name: str, aws_region: str | None = None) -> BaseClient:
        return make_client(name, endpoint_url, profile, max_pool_connections, max_attempts=attempts,
                           aws_region=aws_region, timeout=timeout)

    timings: dict[str, float] = {}
    if region == "auto":
        region, timings = fastest_region(client_for, split)
    client = client_for(region)
    if check:
        bucket_region = check_reachable(client, bucket_for_region(region), split)
        if bucket_region and bucket_region != client.meta.region_name:
            client = client_for(region, bucket_region)
    return region, client, timings


def probe_seconds(client: BaseClient, bucket: str, split: str, repeats: int = 3) -> float:
    """Fastest of ``repeats`` one-key listings of the split's prefix (the first one also opens the connection)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        client.list_objects_v2(Bucket=bucket, Prefix=images_prefix(split), MaxKeys=1)
        best = min(best, time.perf_counter() - start)
    return best


def fastest_region(client_for: Callable[[str], object], split: str) -> tuple[str, dict[str, float]]:
    """(the region whose bucket answers fastest, seconds per region; inf where it failed)."""
    timings = {}
    for region in REGION_BUCKETS:
        try:
            timings[region] = probe_seconds(client_for(region), REGION_BUCKETS[region], split)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            timings[region] = float("inf")
    best = min(timings, key=timings.get)
    if timings[best] == float("inf"):
        raise InputError("no regional bucket answered (check the network, --endpoint-url or the AWS settings)")
    return best, timings


# ------------------------------------------------------------------------------------------ metadata


def fetch_metadata(client: BaseClient, bucket: str, split: str, path: str | Path) -> pd.DataFrame:
    """Download the split's metadata CSV from a mirror's bucket to ``path`` and read it."""
    key = metadata_key(split)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.BotoCoreError as e:
        raise _request_failure(client, e) from None
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "AccessDenied", "403", "NoSuchBucket"):
            raise InputError(
                f"s3://{bucket}/{key} not found ({code}): the competition's buckets do not hold the metadata; "
                f"download {split}_metadata.csv from the competition's data page and pass --metadata PATH"
            ) from None
        raise
    with atomic_path(path) as tmp:
        tmp.write_bytes(body)
    return read_metadata(path, split)


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


# ------------------------------------------------------------------------------ local state and checks


def md5_of_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
    return h.hexdigest()


class VerifiedIndex:
    """A journal of files already verified: ``name size mtime_ns md5`` lines, appended as files are verified.

    Appending (one line per file) survives kill -9; a torn last line is ignored. A file is trusted without
    re-hashing only while its size and mtime are those recorded and the recorded MD5 is the expected one.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / INDEX_NAME
        self.entries: dict[str, tuple[int, int, str]] = {}
        if self.path.is_file():
            for line in self.path.read_text(errors="replace").splitlines():
                parts = line.split("\t")
                if len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit() and len(parts[3]) == 32:
                    self.entries[parts[0]] = (int(parts[1]), int(parts[2]), parts[3])
        self._journal = None

    def trusted(self, name: str, stat: os.stat_result, md5: str) -> bool:
        return self.entries.get(name) == (stat.st_size, stat.st_mtime_ns, md5)

    def record(self, name: str, stat: os.stat_result, md5: str) -> None:
        entry = (stat.st_size, stat.st_mtime_ns, md5)
        if self.entries.get(name) == entry:
            return
        self.entries[name] = entry
        if self._journal is None:
            self._journal = open(self.path, "a")  # noqa: SIM115 (kept open for the run, closed by compact)
        self._journal.write(f"{name}\t{entry[0]}\t{entry[1]}\t{md5}\n")
        self._journal.flush()

    def compact(self, keep: Iterable[str]) -> None:
        """Rewrite the journal with one line per file in ``keep`` (atomically)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join("{}\t{}\t{}\t{}\n".format(n, *self.entries[n]) for n in keep if n in self.entries))


@dataclass
class FolderCheck:
    """State of the selected files in the destination folder (file names)."""

    verified: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


def check_folder(
    folder: Path,
    expected: dict[str, str],
    all_names: set[str],
    index: VerifiedIndex,
    rehash: bool = False,
    workers: int = 4,
    quiet: bool = True,
) -> FolderCheck:
    """Classify every file of ``expected`` (name -> md5); ``extra``: files in the folder not in ``all_names``.

    One listing of the folder finds the missing files; present files are trusted from the index while their
    size and mtime match (unless ``rehash``), the others are hashed in ``workers`` threads.
    """
    result = FolderCheck()
    present = {entry.name: entry for entry in os.scandir(folder)} if folder.is_dir() else {}
    to_hash = []
    for name, md5 in expected.items():
        entry = present.get(name)
        try:
            stat = entry.stat() if entry is not None else None
        except FileNotFoundError:
            stat = None
        if stat is None:
            result.missing.append(name)
        elif not rehash and index.trusted(name, stat, md5):
            result.verified.append(name)
        else:
            to_hash.append((name, stat))
    hashed = _bounded_map(lambda item: (*item, md5_of_file(folder / item[0])), to_hash, workers)
    for name, stat, md5 in tqdm(hashed, total=len(to_hash), desc="checking local files", unit="file",
                                disable=quiet or not to_hash, dynamic_ncols=True):
        if md5 == expected[name]:
            result.verified.append(name)
            index.record(name, stat, md5)
        else:
            result.corrupt.append(name)
    result.extra = sorted(n for n, e in present.items() if not n.startswith(".") and n not in all_names and e.is_file())
    return result


def remove_stale_parts(folder: Path) -> int:
    """Delete the temporary files a killed run left behind; returns how many."""
    stale = list(folder.glob(f".*{PART_SUFFIX}")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


# ------------------------------------------------------------------------------------------- fetching


@dataclass
class FetchResult:
    name: str
    ok: bool
    nbytes: int = 0
    attempts: int = 0
    reason: str = ""


def _error_code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "")) or str(
        error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


# answers that another try will not change (moved bucket, bad request, forbidden, missing)
FINAL_STATUSES = {301, 307, 400, 403, 404}


class ObjectGetter:
    """GETs of the objects under one prefix of a bucket, over one bounded urllib3 connection pool.

    botocore makes the URLs (endpoint, addressing style, a SigV4 query signature when signed); the bytes then
    flow through urllib3 directly: botocore's GetObject costs about 2.3 ms of CPU per object and a plain GET
    about 0.9 ms, and CPU per object is what bounds a million-file download on a small machine.
    """

    def __init__(self, client, bucket: str, prefix: str, max_connections: int = DEFAULT_WORKERS) -> None:
        self.client, self.bucket = client, bucket
        self.signed = client.meta.config.signature_version is not UNSIGNED
        # unsigned URLs carry no query string: the prefix's URL plus the quoted object name
        self.prefix_url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": prefix})
        timeout = urllib3.Timeout(connect=client.meta.config.connect_timeout, read=client.meta.config.read_timeout)
        # urllib3 itself only retries a request that failed before any answer (e.g. a stale kept-alive connection)
        retries = urllib3.Retry(total=2, connect=2, read=1, status=0, other=0, redirect=0, raise_on_status=False)
        options = {"maxsize": max_connections, "block": True, "timeout": timeout, "retries": retries,
                   "headers": {"User-Agent": f"isc-download/{isc.__version__}"},
                   "ca_certs": os.environ.get("AWS_CA_BUNDLE") or botocore.httpsession.get_cert_path(True)}
        proxy = urllib.request.getproxies().get(urllib.parse.urlsplit(self.prefix_url).scheme)
        host = urllib.parse.urlsplit(self.prefix_url).hostname or ""
        if proxy and not urllib.request.proxy_bypass(host):
            self.pool = urllib3.ProxyManager(proxy, **options)
        else:
            self.pool = urllib3.PoolManager(**options)

    def url(self, key: str) -> str:
        """The URL of ``key``, an object directly under the prefix."""
        if self.signed:
            return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key})
        return self.prefix_url + urllib.parse.quote(key.rpartition("/")[2], safe="~")

    def get(self, key: str) -> urllib3.BaseHTTPResponse:
        return self.pool.request("GET", self.url(key), preload_content=False)


def _http_error(response: urllib3.BaseHTTPResponse) -> str:
    code = re.search(rb"<Code>([^<]{1,64})</Code>", response.data[:4096] if response.data else b"")
    reason = f"HTTP {response.status}" + (f" {code.group(1).decode(errors='replace')}" if code else "")
    region = response.headers.get("x-amz-bucket-region")
    return reason + (f" (the bucket is in {region})" if region else "")


def fetch_object(
    getter: ObjectGetter, key: str, path: Path, md5: str, attempts: int = DEFAULT_ATTEMPTS, backoff: float = 0.5
) -> FetchResult:
    """Stream one object to a temporary name beside ``path`` while hashing it; rename it only if the MD5 matches.

    5xx and 429 answers, dropped connections (before or during the body) and MD5 mismatches are tried again,
    ``attempts`` times in all, with exponential backoff and full jitter (as botocore's standard retry mode);
    a missing or forbidden object is not.
    """
    tmp = path.with_name(f".{path.name}{PART_SUFFIX}")
    where = f"s3://{getter.bucket}/{key}"
    reason = ""
    for attempt in range(1, attempts + 1):
        response = None
        try:
            response = getter.get(key)
            if response.status != 200:
                reason = _http_error(response)
                if response.status in FINAL_STATUSES:
                    return FetchResult(path.name, False, 0, attempt, f"{where}: {reason}")
            else:
                h = hashlib.md5()
                nbytes = 0
                with open(tmp, "wb") as f:
                    while chunk := response.read(CHUNK_BYTES):
                        h.update(chunk)
                        f.write(chunk)
                        nbytes += len(chunk)
                if h.hexdigest() == md5:
                    os.replace(tmp, path)
                    return FetchResult(path.name, True, nbytes, attempt)
                reason = f"MD5 mismatch: got {h.hexdigest()}, expected {md5} ({nbytes} bytes)"
        except (urllib3.exceptions.HTTPError, OSError) as e:  # connection lost or refused, body cut short, disk
            reason = f"{type(e).__name__}: {e}"
        finally:
            tmp.unlink(missing_ok=True)
            if response is not None:
                response.drain_conn()
                response.release_conn()
        if attempt < attempts:
            time.sleep(random.uniform(0, backoff * 2 ** (attempt - 1)))
    return FetchResult(path.name, False, 0, attempts, f"{where}: {reason} (after {attempts} attempts)")


def _bounded_map(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``fn`` over ``items`` in ``workers`` threads that pull from one iterator; results as they complete.

    No future per item (a million at once would hold gigabytes, and waiting on them costs O(pending) each
    time); closing the generator (Ctrl-C, giving up) lets each thread finish its item and stop.
    """
    items, lock, results, stop = iter(items), threading.Lock(), queue.SimpleQueue(), threading.Event()
    finished = object()

    def work() -> None:
        try:
            while not stop.is_set():
                with lock:
                    item = next(items, finished)
                if item is finished:
                    break
                results.put((fn(item), None))
        except BaseException as e:  # handed to the consumer, raised there
            results.put((None, e))
        finally:
            results.put((finished, None))

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            value, error = results.get()
            if error is not None:
                raise error
            if value is finished:
                running -= 1
            else:
                yield value
    finally:
        stop.set()
        for thread in threads:
            thread.join()


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
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")


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


def download_split(
    getter: ObjectGetter,
    split: str,
    rows: pd.DataFrame,
    dest: str | Path,
    all_names: set[str] | None = None,
    workers: int = DEFAULT_WORKERS,
    attempts: int = DEFAULT_ATTEMPTS,
    verify_only: bool = False,
    repair: bool = False,
    rehash: bool = False,
    quiet: bool = False,
    report: DownloadReport | None = None,
    give_up_after: int | None = None,
) -> DownloadReport:
    """Bring ``dest/<split>_images/`` up to date with ``rows`` (metadata rows): check, then fetch what is wrong.

    ``verify_only`` re-hashes every selected file and fetches nothing unless ``repair``. After ``give_up_after``
    failed files in a row (default max(50, 4 × workers): the network or the bucket is gone) the run stops
    rather than failing every remaining file. ``report`` is filled in place (so that an interrupted run still
    has one) and returned.
    """
    start = time.perf_counter()
    folder = Path(dest) / f"{split}_images"
    report = report or DownloadReport(split, "", getter.bucket, None, str(folder))
    report.verify_only = verify_only
    report.selected = len(rows)
    expected, keys = {}, {}
    for image_id, uri, md5 in rows[["image_id", "s3_uri", "md5_checksum"]].itertuples(index=False):
        key = object_key(uri)
        name = local_name(key, split)
        if name != f"{image_id}.jpg":
            reason = "refused: key would land outside the folder" if name is None else f"refused: key is not {image_id}.jpg"
            report.failed.append({"id": image_id, "key": key, "reason": f"{reason} ({folder})"})
            continue
        expected[name], keys[name] = md5, key
    if all_names is None:
        all_names = set(expected)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(folder)
    index = VerifiedIndex(folder)
    try:
        check = check_folder(folder, expected, all_names, index, rehash=rehash or verify_only,
                             workers=min(workers, os.cpu_count() or 1), quiet=quiet)
        report.skipped = len(check.verified)
        report.missing, report.corrupt, report.extra = check.missing, check.corrupt, check.extra
        todo = check.missing + check.corrupt
        if verify_only and not repair:
            return report
        fixed = set()
        give_up_after = give_up_after or max(50, 4 * workers)
        failed_in_a_row = 0
        progress = _Progress(len(todo), f"{split} images", quiet or not todo)
        fetch = lambda name: fetch_object(getter, keys[name], folder / name, expected[name], attempts)  # noqa: E731
        results = _bounded_map(fetch, sorted(todo), workers)
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
    region: str,
    split: str,
    dest: str | Path,
    *,
    endpoint_url: str | None = None,
    profile: str | None = None,
    metadata_path: str | Path | None = None,
    filters: Sequence[tuple[str, str]] = (),
    id_ranges: Sequence[str] = (),
    limit: int | None = None,
    workers: int = DEFAULT_WORKERS,
    attempts: int = DEFAULT_ATTEMPTS,
    verify_only: bool = False,
    repair: bool = False,
    rehash: bool = False,
    report_path: str | Path | None = None,
    quiet: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[DownloadReport, Path]:
    """All of ``isc-download``: pick the bucket, read the metadata, bring ``dest/<split>_images/`` up to date.

    The report goes to ``report_path`` (default ``dest/<split>_download_report.json``), also when interrupted;
    returns it and its path. Every request waits at most ``timeout`` seconds for a connection or for data, and
    is tried ``attempts`` times; an endpoint that never answers ends in :class:`EndpointUnresponsive`.
    """
    region, client, timings = connect(region, split, endpoint_url, profile, workers,
                                      check=not verify_only or repair, attempts=attempts, timeout=timeout)
    if timings and not quiet:
        shown = ", ".join(f"{r} {t * 1000:.0f} ms" for r, t in timings.items())
        print(f"fastest region: {region} ({shown})", file=sys.stderr)
    bucket = bucket_for_region(region)
    metadata = load_metadata(client, bucket, split, dest, metadata_path, reuse_saved=verify_only and not repair)
    rows = select_rows(metadata, split, filters, id_ranges, limit)
    all_names = {uri.rpartition("/")[2] for uri in metadata["s3_uri"]}
    getter = ObjectGetter(client, bucket, images_prefix(split), workers)
    report_path = Path(report_path or Path(dest) / f"{split}_download_report.json")
    report = DownloadReport(split, region, bucket, client.meta.endpoint_url, str(Path(dest) / f"{split}_images"))
    try:
        download_split(getter, split, rows, dest, all_names, workers=workers, attempts=attempts,
                       verify_only=verify_only, repair=repair, rehash=rehash, quiet=quiet, report=report)
    finally:
        report.write(report_path)
    return report, report_path


def load_metadata(
    client: BaseClient, bucket: str, split: str, dest: str | Path, metadata_path: str | Path | None = None,
    reuse_saved: bool = False,
) -> pd.DataFrame:
    """The split's metadata: the given CSV, or the bucket's copy saved as ``dest/<split>_metadata.csv``
    (fetched again unless ``reuse_saved`` and a saved copy exists: verification then needs no network)."""
    saved = Path(dest) / f"{split}_metadata.csv"
    if metadata_path is not None or (reuse_saved and saved.is_file()):
        return read_metadata(metadata_path or saved, split)
    return fetch_metadata(client, bucket, split, saved)

