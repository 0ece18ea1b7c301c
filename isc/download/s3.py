"""How the competition's S3 buckets are read: the download's options, clients, and MD5-checked GETs of single
objects. The buckets themselves (the region table, their keys) are :mod:`isc.core.competition`'s.

1. :class:`DownloadOptions`: a region of :data:`isc.core.competition.REGIONS`, or ``auto`` (the fastest).
2. ``make_client`` / ``connect``: an anonymous (unsigned) botocore S3 client by default, signed with a named
   profile when asked; it lists, probes regions and fetches the metadata, with botocore's retries.
3. ``fetch_object``: GET one object through :class:`ObjectGetter` (URLs made by botocore, bytes over one
   bounded urllib3 pool), stream it to ``.<name>.part`` while hashing it, rename it only when the MD5
   matches; 5xx, throttling, dropped connections and mismatches are retried with backoff.

boto3, botocore and urllib3 are imported where they are used."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import isc
from isc.core.competition import (
    AUTO_REGION,
    DEFAULT_REGION,
    REGIONS,
    bucket_for_region,
    check_region,
    images_prefix,
    region_named,
)
from isc.core.files import InputError, SettingError

if TYPE_CHECKING:
    import botocore.exceptions
    import urllib3
    from botocore.client import BaseClient

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 16  # parallel downloads: threads, and connections in the pool
DEFAULT_ATTEMPTS = 5
DEFAULT_TIMEOUT = 60.0  # seconds for a connection, or for the next bytes of an answer
CHUNK_BYTES = 1 << 20
MIN_BYTES_PER_SECOND = 1024  # an answer slower than this on average, once the timeout has passed, has stalled
PART_SUFFIX = ".part"  # an object being fetched lives under ``.<name>.part`` until its MD5 matches

@dataclass(frozen=True)
class DownloadOptions:
    """Where the images come from and how they are fetched; checked once, here, before any client is made.

    ``region``: a bucket of :data:`REGIONS`, or ``auto`` (the fastest); ``endpoint_url``: a mirror or a local
    server instead of AWS (default ``$AWS_ENDPOINT_URL``); ``profile``: sign with this AWS profile (default
    anonymous unless ``$AWS_PROFILE``); ``workers`` parallel downloads; every request tried ``attempts``
    times, waiting at most ``timeout`` seconds for a connection or for data. ``verify_only``: re-hash the
    local files and fetch nothing, unless ``repair``; ``rehash``: trust no record of files verified before.
    """

    region: str = DEFAULT_REGION
    endpoint_url: str | None = None
    profile: str | None = None
    workers: int = DEFAULT_WORKERS
    attempts: int = DEFAULT_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT
    verify_only: bool = False
    repair: bool = False
    rehash: bool = False

    def __post_init__(self) -> None:
        check_region(self.region)
        for name in ("workers", "attempts"):
            if getattr(self, name) < 1:
                raise SettingError(name, f"must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise SettingError("timeout", f"must be a positive number of seconds, got {self.timeout}")


# -------------------------------------------------------------------------------------------- client


class EndpointUnresponsive(InputError):
    """The S3 endpoint took connections but did not answer in time, on every attempt: nothing could be fetched.

    isc-download exits 1 on it (re-running later may work); elsewhere it is one more one-line error.
    """


def endpoint_url_or_environment(endpoint_url: str | None) -> str | None:
    """``endpoint_url``, else ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` as the AWS tools read them."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def make_client(
    region: str,
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
    import boto3
    import botocore.exceptions
    from botocore import UNSIGNED
    from botocore.config import Config

    aws_region = aws_region or region_named(region).aws_region
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
        client = boto3.Session(profile_name=profile).client(
            "s3", region_name=aws_region, endpoint_url=endpoint_url, config=config
        )
    except botocore.exceptions.ProfileNotFound:
        raise InputError(f"AWS profile {profile!r} not found in the AWS config files") from None
    except ValueError as e:  # botocore's "Invalid endpoint", e.g. from $AWS_ENDPOINT_URL
        raise InputError(f"S3 endpoint {endpoint_url!r}: {e}") from None
    client.meta.events.register("needs-retry.s3", _report_failed_attempt)
    return client


def _report_failed_attempt(attempts: int, caught_exception: Exception | None = None, response: tuple | None = None,
                           request_dict: dict | None = None, **_: object) -> None:
    """Say, as it happens, that a request of the client (a listing, the metadata) failed and may be tried again:
    a silent endpoint is otherwise minutes of nothing. Returns None: botocore's own handler decides on the retry."""
    status = response[1].get("ResponseMetadata", {}).get("HTTPStatusCode") if response else None
    if caught_exception is None and (status is None or status < 500):
        return
    reason = f"{type(caught_exception).__name__}" if caught_exception is not None else f"HTTP {status}"
    url = (request_dict or {}).get("url", "the S3 endpoint")
    log.info("S3 request %s: attempt %d failed (%s)", url.split("?")[0], attempts, reason)


def request_failure(client: BaseClient, error: botocore.exceptions.BotoCoreError) -> InputError:
    """The one-line error for a request that botocore gave up on: refused or unresolvable endpoints are bad
    input; timeouts and dropped connections, after every attempt, are :class:`EndpointUnresponsive`."""
    import botocore.exceptions

    config = client.meta.config
    if isinstance(error, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.HTTPClientError):
        return EndpointUnresponsive(
            f"no answer from the S3 endpoint {client.meta.endpoint_url} ({error}) in "
            f"{config.retries['total_max_attempts']} attempts of up to {config.read_timeout:g} s; re-run later "
            "or raise the timeout")
    if isinstance(error, botocore.exceptions.EndpointConnectionError):
        return InputError(f"cannot reach the S3 endpoint ({error})")
    return InputError(f"S3 request failed: {error}")  # e.g. a profile without credentials


def _error_code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "")) or str(
        error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


def check_reachable(client: BaseClient, bucket: str, split: str) -> str | None:
    """One small listing before a long run (an unreachable bucket is one error, not a million failed files);
    returns the bucket's AWS region as S3 reports it (None from servers that do not say)."""
    import botocore.exceptions

    try:
        answer = client.list_objects_v2(Bucket=bucket, Prefix=images_prefix(split), MaxKeys=1)
    except botocore.exceptions.BotoCoreError as e:
        raise request_failure(client, e) from None
    except botocore.exceptions.ClientError as e:
        raise InputError(f"s3://{bucket}/{images_prefix(split)}: {_error_code(e)} ({e})") from None
    return answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")


@dataclass(frozen=True)
class Connection:
    """A client of the chosen region's bucket; ``timings``: each region's probe in seconds (``auto`` only)."""

    region: str
    bucket: str
    client: BaseClient
    timings: dict[str, float]


def connect(options: DownloadOptions, split: str, check: bool = True) -> Connection:
    """A client of ``options.region``'s bucket, or with ``auto`` of the fastest one, as ``options`` say.

    ``check``: list one key first, so that an unreachable bucket fails at once, and follow S3 when it says the
    bucket lives in another AWS region than assumed.
    """
    def client_for(name: str, aws_region: str | None = None) -> BaseClient:
        return make_client(name, options.endpoint_url, options.profile, options.workers,
                           max_attempts=options.attempts, aws_region=aws_region, timeout=options.timeout)

    region, timings = fastest_region(client_for, split) if options.region == AUTO_REGION else (options.region, {})
    bucket = bucket_for_region(region)
    client = client_for(region)
    if check:
        bucket_region = check_reachable(client, bucket, split)
        if bucket_region and bucket_region != client.meta.region_name:
            client = client_for(region, bucket_region)
    return Connection(region, bucket, client, timings)


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
    import botocore.exceptions

    timings = {}
    for region in REGIONS:
        try:
            timings[region] = probe_seconds(client_for(region), REGIONS[region].bucket, split)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            timings[region] = float("inf")
    best = min(timings, key=timings.get)
    if timings[best] == float("inf"):
        raise InputError("no regional bucket answered (check the network, the endpoint or the AWS settings)")
    return best, timings


# ------------------------------------------------------------------------------------------- fetching


class StalledTransfer(OSError):
    """An answer that keeps sending, but too slowly to ever end: each byte within the read timeout, the whole
    below :data:`MIN_BYTES_PER_SECOND`."""


def check_rate(nbytes: int, seconds: float, grace: float) -> None:
    """StalledTransfer when, ``grace`` seconds into an answer, fewer than :data:`MIN_BYTES_PER_SECOND` came on average."""
    if seconds > grace and nbytes < MIN_BYTES_PER_SECOND * seconds:
        raise StalledTransfer(f"stalled: {nbytes:,} bytes in {seconds:.1f} s, under the minimum "
                              f"{MIN_BYTES_PER_SECOND / 1024:g} kB/s")


@dataclass
class FetchResult:
    name: str
    ok: bool
    nbytes: int = 0
    attempts: int = 0
    reason: str = ""


# answers that another try will not change (moved bucket, bad request, forbidden, missing)
FINAL_STATUSES = {301, 307, 400, 403, 404}


class ObjectGetter:
    """GETs of the objects under one prefix of a bucket, over one bounded urllib3 connection pool.

    botocore makes the URLs (endpoint, addressing style, a SigV4 query signature when signed); the bytes then
    flow through urllib3 directly: botocore's GetObject costs about 2.3 ms of CPU per object and a plain GET
    about 0.9 ms, and CPU per object is what bounds a million-file download on a small machine.
    """

    def __init__(self, client, bucket: str, prefix: str, max_connections: int = DEFAULT_WORKERS) -> None:
        import botocore.httpsession
        import urllib3
        from botocore import UNSIGNED

        self.client, self.bucket = client, bucket
        self.signed = client.meta.config.signature_version is not UNSIGNED
        # unsigned URLs carry no query string: the prefix's URL plus the quoted object name
        self.prefix_url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": prefix})
        self.read_timeout = client.meta.config.read_timeout
        timeout = urllib3.Timeout(connect=client.meta.config.connect_timeout, read=self.read_timeout)
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
    import urllib3

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
                started = time.monotonic()
                with open(tmp, "wb") as f:
                    # read1: what has come, at most one read timeout away, so that the rate is checked as it comes
                    while chunk := response.read1(CHUNK_BYTES):
                        h.update(chunk)
                        f.write(chunk)
                        nbytes += len(chunk)
                        check_rate(nbytes, time.monotonic() - started, getter.read_timeout)
                if h.hexdigest() == md5:
                    os.replace(tmp, path)
                    return FetchResult(path.name, True, nbytes, attempt)
                reason = f"MD5 mismatch: got {h.hexdigest()}, expected {md5} ({nbytes} bytes)"
        except StalledTransfer as e:
            reason = str(e)
            response.close()  # draining the rest of a trickle would take as long: the connection is dropped
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
