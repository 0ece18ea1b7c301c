"""A local S3 server (moto's server mode, loopback only) that serves a dataset folder as the
competition's regional buckets (:data:`isc.core.competition.REGIONS`), for the demo, the tests and the download
benchmark.

The folder has the competition's layout (``<split>_images/<id>.jpg`` and ``<split>_metadata.csv``,
as ``isc-synth`` writes it). Objects land under the buckets' keys (:func:`isc.core.competition.images_prefix`),
with a public-read policy so that anonymous (unsigned) requests work as they do on the real buckets.
moto (``pip install 'isc[server]'``) is imported only when a server starts."""

from __future__ import annotations

import json
import logging
import socket
import threading
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from tqdm import tqdm

from isc.core.competition import REGIONS, SPLITS, images_prefix, metadata_file, metadata_key, split_folder
from isc.core.files import InputError

# moto accepts any credentials; these only sign the uploads that fill the buckets
SERVER_CREDENTIALS = {"aws_access_key_id": "isc-local", "aws_secret_access_key": "isc-local"}


def _public_read_policy(bucket: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject"],
                       "Resource": [f"arn:aws:s3:::{bucket}/*"]}],
    })


def s3_client(endpoint_url: str, max_pool_connections: int = 32) -> BaseClient:
    """A signed boto3 S3 client for a local server (path-style addressing, as moto expects)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=max_pool_connections),
        **SERVER_CREDENTIALS,
    )


def populate_buckets(
    endpoint_url: str, data_root: str | Path, regions: Iterable[str] = tuple(REGIONS), splits: Iterable[str] = SPLITS,
    quiet: bool = True,
) -> int:
    """Create the regional buckets on the server at ``endpoint_url`` and upload the folder; returns objects per bucket.

    ``quiet=False`` shows a progress bar over the uploads (a few thousand take tens of seconds).
    """
    regions = tuple(regions)
    data_root = Path(data_root)
    files: list[tuple[str, Path]] = []
    for split in splits:
        folder = split_folder(data_root, split)
        if not folder.is_dir():
            raise InputError(f"{data_root}: no {split}_images/ folder to serve")
        files += [(images_prefix(split) + p.name, p) for p in sorted(folder.iterdir()) if p.is_file()]
        metadata = metadata_file(data_root, split)
        if metadata.is_file():
            files.append((metadata_key(split), metadata))
    client = s3_client(endpoint_url)
    with tqdm(total=len(files) * len(regions), desc="filling the buckets", unit="object", disable=quiet) as bar:
        for region in regions:
            bucket = REGIONS[region].bucket
            client.create_bucket(Bucket=bucket)
            client.put_bucket_policy(Bucket=bucket, Policy=_public_read_policy(bucket))
            # the server shares this process's GIL: more threads only add contention
            with ThreadPoolExecutor(4) as pool:
                for _ in pool.map(lambda item, b=bucket: client.put_object(Bucket=b, Key=item[0], Body=item[1].read_bytes()),
                                  files):
                    bar.update()
    return len(files)


def _moto_app() -> tuple[Any, type]:
    """moto's S3 WSGI application and request handler; InputError naming the extra to install when it is missing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # moto's own multi-line hint; the error below says it in one line
            from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    except ImportError as e:
        raise InputError(f"the local S3 server needs moto's server mode ({e}): pip install 'isc[server]'") from None
    return DomainDispatcherApplication(create_backend_app), MotoRequestHandler


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port); InputError when it cannot be had (port in use)."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


class LocalS3Server:
    """``with LocalS3Server(root) as server:`` serves ``root`` at ``server.endpoint_url`` until the block ends."""

    def __init__(
        self,
        data_root: str | Path | None = None,
        regions: Iterable[str] = tuple(REGIONS),
        splits: Iterable[str] = SPLITS,
        host: str = "127.0.0.1",
        port: int = 0,
        quiet: bool = True,
    ) -> None:
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise InputError(f"the local S3 server only listens on loopback, not {host}")
        self.data_root = data_root
        self.regions = tuple(regions)
        self.splits = tuple(splits)
        self.host, self.port, self.quiet = host, port, quiet
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.endpoint_url = ""

    def start(self) -> str:
        """Listen, serve in a thread, fill the buckets; returns the endpoint URL. A port in use is an InputError."""
        from werkzeug.serving import make_server

        app, handler = _moto_app()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request drowns the output
        # our own socket: werkzeug reports a failed bind on stderr and exits its thread, so moto's threaded
        # server would wait for it forever
        with _listen(self.host, self.port) as listening:
            self._server = make_server(self.host, listening.getsockname()[1], app, threaded=True,
                                       request_handler=handler, fd=listening.fileno())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.endpoint_url = f"http://{host}:{self._server.server_address[1]}"
        if self.data_root is not None:
            try:
                populate_buckets(self.endpoint_url, self.data_root, self.regions, self.splits, quiet=self.quiet)
            except BaseException:
                self.stop()
                raise
        return self.endpoint_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._thread.join()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalS3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
