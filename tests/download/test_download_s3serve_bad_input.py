"""Bad input and bad conditions in isc-download and isc-s3serve: a silent endpoint, a missing region, a
destination that is a file, bad numbers, a port in use or invalid, moto missing; one line, the right exit."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, assert_argument_refused, cli, one_line_error, run_python

from isc.cli.download import main as download_main


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port on loopback that accepts TCP connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def test_download_from_a_silent_endpoint_times_out_in_one_line(silent_server: int, tmp_path: Path) -> None:
    # no --region: it defaults to us-west when an endpoint is given
    result = cli("download", "--split", "query", "--dest", str(tmp_path / "d"), "--endpoint-url",
                 f"http://127.0.0.1:{silent_server}", "--timeout", "0.3", "--attempts", "2", "--quiet", timeout=60)
    one_line_error(result, "isc-download", "no answer from the S3 endpoint", status=1)
    assert "2 attempts of up to 0.3 s" in result.stderr  # a hang would end in cli's timeout


def test_download_region_required_without_an_endpoint(tmp_path: Path) -> None:
    result = cli("download", "--split", "query", "--dest", str(tmp_path / "d"))
    one_line_error(result, "isc-download", "--region is required")


def test_download_dest_that_is_a_file_and_bad_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "file"
    dest.write_text("keep me")
    result = cli("download", "--split", "query", "--dest", str(dest), "--region", "eu")
    one_line_error(result, "isc-download", "exists and is not a directory")
    assert dest.read_text() == "keep me"
    for args, message in ((["--timeout", "0"], "argument --timeout: must be > 0"),
                          (["--timeout", "nan"], "argument --timeout: must be a finite number"),
                          (["--attempts", "0"], "argument --attempts: must be >= 1"),
                          (["--workers", "0"], "argument --workers: must be >= 1"),
                          (["--limit", "-1"], "argument --limit: must be >= 0")):
        argv = ["--split", "query", "--dest", str(tmp_path / "d"), "--region", "eu", *args]
        assert_argument_refused(download_main, "isc-download", argv, message, capsys)
    metadata = tmp_path / "query_metadata.csv"
    metadata.write_text("image_id,s3_uri,md5_checksum\n")
    assert download_main(["--split", "query", "--dest", str(tmp_path / "d"), "--region", "eu", "--metadata",
                          str(metadata), "--report", str(metadata)]) == 2
    one_line_error(capsys.readouterr().err, "isc-download", "would destroy the input")
    assert metadata.read_text() == "image_id,s3_uri,md5_checksum\n"


def tiny_dataset(root: Path) -> Path:
    (root / "query_images").mkdir(parents=True)
    for i in range(3):
        (root / "query_images" / f"Q0000{i}.jpg").write_bytes(b"not really a jpeg %d" % i)
    return root


def serve_until_ready(root: Path, tmp_path: Path, *extra: str) -> tuple[str, str, str]:
    """Start isc-s3serve, wait for its endpoint file and its line, stop it with Ctrl-C; (endpoint, stdout, stderr)."""
    endpoint_file = tmp_path / f"endpoint{len(extra)}.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    server = subprocess.Popen([sys.executable, "-m", "isc.cli.s3serve", str(root), "--regions", "us-west",
                               "--splits", "query", "--endpoint-file", str(endpoint_file), *extra],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not endpoint_file.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert endpoint_file.exists(), server.stderr.read() if server.poll() is not None else "no endpoint file"
        # printed just after the endpoint file is written; waited for at most 30 s, never for ever
        assert select.select([server.stdout], [], [], 30)[0], "no line on stdout after the endpoint file"
        serving = server.stdout.readline()
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 130 and "interrupted" in err, err  # Ctrl-C stops the server cleanly
    return endpoint_file.read_text().strip(), serving + out, err


def test_s3serve_shows_progress_and_is_quiet_under_quiet(tmp_path: Path) -> None:
    root = tiny_dataset(tmp_path / "data")
    endpoint, out, err = serve_until_ready(root, tmp_path)
    assert endpoint.startswith("http://127.0.0.1:") and f"at {endpoint}" in out
    assert "filling the buckets" in err and "3/3" in err and "Traceback" not in err
    endpoint, out, err = serve_until_ready(root, tmp_path, "--quiet")
    assert f"at {endpoint}" in out and "filling the buckets" not in err


def test_s3serve_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = cli("s3serve", str(tiny_dataset(tmp_path)), "--port", str(port), timeout=30)
    one_line_error(result, "isc-s3serve", f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_s3serve_invalid_port_refused(port: str, tmp_path: Path) -> None:
    result = cli("s3serve", str(tmp_path), "--port", port, timeout=30)
    one_line_error(result, "isc-s3serve", "argument --port:")


def test_s3serve_without_moto_names_the_extra(tmp_path: Path) -> None:
    blocker = (
        "import sys\n"
        "class NoMoto:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'moto' or name.startswith('moto.'):\n"
        "            raise ImportError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, NoMoto())\n"
        "from isc.cli.s3serve import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    result = run_python("-c", blocker, str(tiny_dataset(tmp_path)), timeout=30)
    one_line_error(result, "isc-s3serve", "pip install 'isc[server]'")
