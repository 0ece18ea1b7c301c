"""isc-download under faults: a file found corrupt is fetched again, a selection of nothing exits 1, a server
that trickles bytes is given up on naming the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import cli, one_line_error
from test_download import FaultProxy

from isc.core.tables import write_metadata


def test_a_file_found_corrupt_leaves_the_journal_and_is_fetched_again(mini_dataset: Path, s3_endpoint: str,
                                                                      tmp_path: Path) -> None:
    dest = tmp_path / "d"
    common = ["--split", "query", "--dest", dest, "--endpoint-url", s3_endpoint, "--ids", "Q00000-Q00002"]
    assert cli("download", *common, "--quiet").returncode == 0
    image = dest / "query_images" / "Q00001.jpg"
    original, stat = image.read_bytes(), image.stat()
    image.write_bytes(original[:100] + bytes([original[100] ^ 0xFF]) + original[101:])  # same size
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the mtime restored
    verify = cli("download", *common, "--verify-only")
    assert verify.returncode == 1 and "corrupt: Q00001.jpg" in verify.stderr, verify.stderr
    again = cli("download", *common)
    assert again.returncode == 0, again.stderr
    assert "3 selected: 1 downloaded" in again.stderr and "2 already verified" in again.stderr, again.stderr
    assert image.read_bytes() == (mini_dataset / "query_images" / "Q00001.jpg").read_bytes()


@pytest.mark.parametrize("selection", ["header-only", "no-id"])
def test_a_download_that_selects_nothing_exits_1(selection: str, mini_dataset: Path, s3_endpoint: str,
                                                 tmp_path: Path) -> None:
    import pandas as pd

    metadata = tmp_path / "m.csv"
    if selection == "header-only":
        metadata.write_text("image_id,s3_uri,md5_checksum\n")
        extra = []
    else:
        write_metadata(metadata, pd.read_csv(mini_dataset / "query_metadata.csv", dtype=str))
        extra = ["--ids", "Q90000-Q90010"]
    # --quiet: without it the run's summary and report path come first on stderr
    result = cli("download", "--split", "query", "--dest", tmp_path / "d", "--endpoint-url", s3_endpoint,
                 "--metadata", metadata, *extra, "--quiet")
    one_line_error(result, "isc-download", "no query image selected", status=1)


def test_a_server_that_trickles_bytes_is_given_up_on_naming_the_file(mini_dataset: Path, s3_endpoint: str,
                                                                     tmp_path: Path) -> None:
    with FaultProxy(s3_endpoint, trickle=0.5) as proxy:
        result = cli("download", "--split", "query", "--dest", tmp_path / "d", "--endpoint-url", proxy.url,
                     "--metadata", mini_dataset / "query_metadata.csv", "--ids", "Q00000-Q00001", "--timeout", "1",
                     "--attempts", "2", "--workers", "2", timeout=90)
    assert result.returncode == 1, result.stderr
    assert "0 downloaded" in result.stderr and "2 failed" in result.stderr, result.stderr
    for name in ("Q00000", "Q00001"):
        assert f"failed {name}: s3://" in result.stderr and f"{name}.jpg: stalled:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "d" / "query_images").glob("*.jpg")), "nothing half-fetched kept"
