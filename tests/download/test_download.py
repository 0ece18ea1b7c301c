"""isc-download against a real S3 server on loopback (moto, over HTTP), with a fault-injecting proxy in front."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from conftest import one_line_error, running, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from isc.cli.download import main
from isc.core.competition import REGIONS, bucket_for_region, images_prefix, metadata_key
from isc.core.files import InputError
from isc.core.tables import read_metadata, write_metadata
from isc.download import s3
from isc.download.s3 import DownloadOptions
from isc.download.s3server import s3_client
from isc.download.sync import download_split, local_name, passes_filters, select_rows

BUCKET = REGIONS["us-west"].bucket
PREFIX = images_prefix("query")


# ------------------------------------------------------------------------------------ fault proxy


class FaultProxy(ThreadingHTTPServer):
    """An HTTP proxy on loopback in front of the S3 server that misbehaves on purpose, per object key:
    ``fail_first`` answers 500/503 to the first N GETs of each image, ``drop_first`` sends the headers and
    half the body of the next N then closes the connection, ``corrupt_first`` flips a byte of the body of the
    next N, ``delay`` sleeps before every request to the
    buckets in ``slow_buckets`` (all buckets when None), ``hide_metadata`` answers 404 for metadata CSVs,
    ``hold_after`` holds every image request after the first N until ``release`` is set, then closes it unanswered
    (a client then has exactly N images, whatever the machine's speed), ``trickle`` sends the bodies of images one byte every so many seconds."""

    daemon_threads = True

    def __init__(self, upstream: str, fail_first: int = 0, drop_first: int = 0, corrupt_first: int = 0,
                 delay: float = 0.0, slow_buckets: set[str] | None = None, hide_metadata: bool = False,
                 hold_after: int | None = None, trickle: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = urllib.parse.urlsplit(upstream).netloc
        self.fail_first, self.drop_first, self.corrupt_first = fail_first, drop_first, corrupt_first
        self.delay = delay
        self.slow_buckets, self.hide_metadata = slow_buckets, hide_metadata
        self.seen: dict[str, int] = {}
        self.hold_after, self.images_asked, self.release = hold_after, 0, threading.Event()
        self.trickle = trickle
        self.faults = 0
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    server: FaultProxy

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        proxy = self.server
        path = urllib.parse.urlsplit(self.path).path
        bucket = path.lstrip("/").partition("/")[0]
        if proxy.delay and (proxy.slow_buckets is None or bucket in proxy.slow_buckets):
            time.sleep(proxy.delay)
        if proxy.hide_metadata and path.endswith("_metadata.csv"):
            return self._answer(404, b"<Error><Code>NoSuchKey</Code></Error>")
        is_image = "_images/" in path and path.endswith(".jpg")
        with proxy.lock:
            n = proxy.seen[path] = proxy.seen.get(path, 0) + 1
            proxy.images_asked += is_image
            held = is_image and proxy.hold_after is not None and proxy.images_asked > proxy.hold_after
        if held:
            proxy.release.wait(120)
            self.close_connection = True
            return  # the client was killed meanwhile: nothing to answer
        if is_image and n <= proxy.fail_first:
            with proxy.lock:
                proxy.faults += 1
            return self._answer(500 if n % 2 else 503, b"<Error><Code>InternalError</Code></Error>")
        upstream = http.client.HTTPConnection(proxy.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        upstream.request("GET", self.path, headers=headers)
        response = upstream.getresponse()
        body = response.read()
        upstream.close()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        dropped = proxy.fail_first + proxy.drop_first
        if is_image and response.status == 200 and proxy.fail_first < n <= dropped + proxy.corrupt_first:
            with proxy.lock:
                proxy.faults += 1
            if n <= dropped:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
        if is_image and proxy.trickle:
            return self._trickle(body)
        self.wfile.write(body)

    def _trickle(self, body: bytes) -> None:
        try:
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(self.server.trickle)
        except OSError:  # the client gave up on it
            self.close_connection = True

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# ---------------------------------------------------------------------------------------- helpers


def run_cli(*args: str, endpoint: str | None = None) -> int:
    argv = ["--region", "us-west", "--split", "query", *args, "--quiet"]
    return main([*argv, "--endpoint-url", endpoint] if endpoint else argv)


def report_of(dest: Path) -> dict:
    return json.loads((dest / "query_download_report.json").read_text())


def query_files(mini_dataset: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((mini_dataset / "query_images").iterdir())}


def assert_verified(dest: Path, mini_dataset: Path, names: set[str]) -> None:
    folder = dest / "query_images"
    assert {p.name for p in folder.glob("*.jpg")} == names
    assert not list(folder.glob("*.part")) and not list(folder.glob(".*.part"))
    originals = query_files(mini_dataset)
    for name in names:
        assert (folder / name).read_bytes() == originals[name], name


# ------------------------------------------------------------------------------------- unit parts


def test_region_bucket_mapping() -> None:
    assert bucket_for_region("us-west") == "drivendata-competition-fb-isc-data"
    assert bucket_for_region("eu") == "drivendata-competition-fb-isc-data-eu"
    assert bucket_for_region("asia") == "drivendata-competition-fb-isc-data-asia"
    with pytest.raises(InputError, match="unknown region"):
        bucket_for_region("mars")
    client = s3.make_client("asia")
    assert client.meta.region_name == "ap-southeast-1"
    url = s3.ObjectGetter(client, REGIONS["asia"].bucket, PREFIX).url(PREFIX + "Q00012.jpg")
    assert url.startswith("https://drivendata-competition-fb-isc-data-asia.s3") and url.endswith("/all/query_images/Q00012.jpg")
    assert "Signature" not in url  # anonymous by default


def test_bad_region_is_named_before_any_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    monkeypatch.setattr(boto3, "Session", lambda **_: pytest.fail("a client was made"))
    with pytest.raises(InputError, match="unknown region 'mars' \\(choose from us-west, eu, asia, auto\\)"):
        DownloadOptions(region="mars")
    with pytest.raises(InputError, match="unknown region 'mars'"):
        s3.make_client("mars")


@pytest.mark.parametrize(("filters", "included"), [
    ([], {"Q00001.jpg", "Q00012.jpg", "Q00123.jpg"}),
    ([("include", "Q00*")], {"Q00001.jpg", "Q00012.jpg", "Q00123.jpg"}),  # AWS: include alone selects all
    ([("exclude", "*"), ("include", "Q000*")], {"Q00001.jpg", "Q00012.jpg"}),
    ([("exclude", "*"), ("include", "Q000?2.jpg")], {"Q00012.jpg"}),
    ([("include", "Q000*"), ("exclude", "*")], set()),  # the later filter wins
    ([("exclude", "Q000[01]*")], {"Q00123.jpg"}),
    ([("exclude", "*"), ("include", "*.jpg"), ("exclude", "*3.jpg")], {"Q00001.jpg", "Q00012.jpg"}),
])
def test_filters_have_the_aws_cli_meaning(filters: list[tuple[str, str]], included: set[str]) -> None:
    names = ["Q00001.jpg", "Q00012.jpg", "Q00123.jpg"]
    assert {n for n in names if passes_filters(n, filters)} == included


def _aws_cli_selects(name: str, filters: list[tuple[str, str]]) -> bool:
    from awscli.customizations.s3.filters import create_filter

    aws = create_filter({"filters": [[f"--{kind}", pattern] for kind, pattern in filters],
                         "src": f"s3://{BUCKET}/{PREFIX}", "dest": "/tmp/isc-dest", "dir_op": True})
    info = types.SimpleNamespace(src=f"{BUCKET}/{PREFIX}{name}", src_type="s3")
    return bool(list(aws.call([info])))


@settings(max_examples=100, deadline=None)
@given(
    name=st.from_regex(r"Q\d{5}\.jpg", fullmatch=True),
    filters=st.lists(st.tuples(st.sampled_from(["include", "exclude"]),
                               st.from_regex(r"[Q0-9*?.jpg\[\]]{1,8}", fullmatch=True)), max_size=4),
)
def test_filters_agree_with_the_aws_cli_code(name: str, filters: list[tuple[str, str]]) -> None:
    assert passes_filters(name, filters) == _aws_cli_selects(name, filters)


def test_select_rows_ranges_limit_and_bad_range(mini_dataset: Path) -> None:
    metadata = read_metadata(mini_dataset / "query_metadata.csv", "query")
    rows = select_rows(metadata, "query", [("exclude", "*"), ("include", "Q0000*")], ["Q00003-Q00010"], 4)
    assert list(rows["image_id"]) == ["Q00003", "Q00004", "Q00005", "Q00006"]
    assert list(select_rows(metadata, "query", id_ranges=["Q00002", "Q00020-Q00021"])["image_id"]) == [
        "Q00002", "Q00020", "Q00021"]
    for bad in ("R000001-R000002", "Q00009-Q00001", "Q1-Q2"):
        with pytest.raises(InputError, match="range"):
            select_rows(metadata, "query", id_ranges=[bad])


def test_hostile_keys_never_land_outside_the_folder() -> None:
    assert local_name(PREFIX + "Q00001.jpg", "query") == "Q00001.jpg"
    for key in (PREFIX + "../../evil.jpg", PREFIX + "..", PREFIX + "sub/x.jpg", PREFIX, "all/other/Q1.jpg",
                PREFIX + ".hidden.part", "../" + PREFIX + "Q00001.jpg", PREFIX + "..\\evil.jpg",
                PREFIX + "Q1\x00.jpg", PREFIX + "/etc/passwd"):
        assert local_name(key, "query") is None, key


# ----------------------------------------------------------------------------- against the server


def test_download_verify_and_rerun_does_nothing(mini_dataset: Path, s3_endpoint: str, tmp_path: Path) -> None:
    assert run_cli("--dest", str(tmp_path), endpoint=s3_endpoint) == 0
    names = set(query_files(mini_dataset))
    assert_verified(tmp_path, mini_dataset, names)
    report = report_of(tmp_path)
    assert (report["downloaded"], report["skipped"], report["failed"], report["ok"]) == (len(names), 0, [], True)
    assert report["bytes"] == sum(len(b) for b in query_files(mini_dataset).values()) and report["seconds"] > 0
    assert (tmp_path / "query_metadata.csv").is_file()  # fetched from the bucket, kept beside the images

    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "query_images").glob("*.jpg")}
    assert run_cli("--dest", str(tmp_path), endpoint=s3_endpoint) == 0
    report = report_of(tmp_path)
    assert (report["downloaded"], report["skipped"], report["bytes"]) == (0, len(names), 0)
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "query_images").glob("*.jpg")}


def test_include_exclude_ids_and_limit(mini_dataset: Path, s3_endpoint: str, tmp_path: Path) -> None:
    assert run_cli("--dest", str(tmp_path / "a"), "--exclude", "*", "--include", "Q0001*", endpoint=s3_endpoint) == 0
    assert_verified(tmp_path / "a", mini_dataset, {f"Q000{i}.jpg" for i in range(10, 20)})
    assert run_cli("--dest", str(tmp_path / "b"), "--ids", "Q00005-Q00020", "--exclude", "Q0001[0-4].jpg",
                   "--limit", "6", endpoint=s3_endpoint) == 0
    assert_verified(tmp_path / "b", mini_dataset, {f"Q{i:05d}.jpg" for i in (5, 6, 7, 8, 9, 15)})


def test_include_alone_warns_and_selects_everything(mini_dataset: Path, s3_endpoint: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--dest", str(tmp_path), "--include", "Q0000*", "--ids", "Q00010-Q00012", endpoint=s3_endpoint) == 0
    assert "--exclude '*' --include 'Q0000*'" in capsys.readouterr().err
    assert_verified(tmp_path, mini_dataset, {"Q00010.jpg", "Q00011.jpg", "Q00012.jpg"})


def test_local_corruption_found_and_repaired(mini_dataset: Path, s3_endpoint: str, tmp_path: Path) -> None:
    assert run_cli("--dest", str(tmp_path), "--limit", "6", endpoint=s3_endpoint) == 0
    folder = tmp_path / "query_images"
    (folder / "Q00001.jpg").write_bytes(b"truncated")  # size changed: a plain re-run re-hashes and re-fetches
    same_size = folder / "Q00002.jpg"  # same size and mtime: only --verify-only (re-hashing all) can tell
    stat = same_size.stat()
    same_size.write_bytes(bytes(stat.st_size))
    os.utime(same_size, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (folder / "Q00004.jpg").unlink()
    (folder / "notes.txt").write_text("not an image of the split")

    assert run_cli("--dest", str(tmp_path), "--limit", "6", endpoint=s3_endpoint) == 0
    report = report_of(tmp_path)
    assert (report["downloaded"], report["skipped"]) == (2, 4)
    assert (folder / "Q00001.jpg").read_bytes() == (mini_dataset / "query_images" / "Q00001.jpg").read_bytes()

    assert run_cli("--dest", str(tmp_path), "--limit", "6", "--verify-only", endpoint=s3_endpoint) == 1
    report = report_of(tmp_path)
    assert (report["corrupt"], report["missing"], report["extra"], report["downloaded"]) == (
        ["Q00002.jpg"], [], ["notes.txt"], 0)
    assert run_cli("--dest", str(tmp_path), "--limit", "6", "--verify-only", "--repair", endpoint=s3_endpoint) == 0
    assert report_of(tmp_path)["downloaded"] == 1
    assert_verified(tmp_path, mini_dataset, {f"Q{i:05d}.jpg" for i in range(6)})
    # --verify-only needs no network: it reuses the metadata saved by the first run
    assert run_cli("--dest", str(tmp_path), "--limit", "6", "--verify-only", endpoint="http://127.0.0.1:9") == 0


def test_corrupt_object_reported_never_kept(mini_dataset: Path, s3_endpoint: str, tmp_path: Path) -> None:
    key = PREFIX + "Q00003.jpg"
    client = s3_client(s3_endpoint)
    original = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=key, Body=original[::-1])  # same size, wrong MD5
    try:
        code = run_cli("--dest", str(tmp_path), "--ids", "Q00000-Q00005", "--attempts", "2", endpoint=s3_endpoint)
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=original)
    assert code == 1
    report = report_of(tmp_path)
    assert report["downloaded"] == 5 and not report["ok"]
    [failure] = report["failed"]
    assert failure["id"] == "Q00003" and "MD5 mismatch" in failure["reason"] and "after 2 attempts" in failure["reason"]
    assert_verified(tmp_path, mini_dataset, {f"Q{i:05d}.jpg" for i in (0, 1, 2, 4, 5)})
    # the object is fixed upstream: a re-run fetches just that file
    assert run_cli("--dest", str(tmp_path), "--ids", "Q00000-Q00005", endpoint=s3_endpoint) == 0
    assert (report_of(tmp_path)["downloaded"], report_of(tmp_path)["skipped"]) == (1, 5)


def test_server_errors_and_dropped_connections_survived(mini_dataset: Path, s3_endpoint: str, tmp_path: Path) -> None:
    with FaultProxy(s3_endpoint, fail_first=2, drop_first=1, corrupt_first=1) as proxy:
        assert run_cli("--dest", str(tmp_path), "--ids", "Q00000-Q00003", "--workers", "4", endpoint=proxy.url) == 0
        # for every file: a 500, a 503, a body cut in half, a body with a flipped byte, then the right one
        assert proxy.faults == 4 * 4
    assert_verified(tmp_path, mini_dataset, {f"Q{i:05d}.jpg" for i in range(4)})
    assert report_of(tmp_path)["downloaded"] == 4

    with FaultProxy(s3_endpoint, fail_first=10) as proxy:
        assert run_cli("--dest", str(tmp_path / "b"), "--ids", "Q00000", "--attempts", "2", endpoint=proxy.url) == 1
    [failure] = report_of(tmp_path / "b")["failed"]
    assert "HTTP 50" in failure["reason"] and "after 2 attempts" in failure["reason"]


def test_gives_up_when_every_file_fails(mini_dataset: Path, s3_endpoint: str, tmp_path: Path) -> None:
    metadata = read_metadata(mini_dataset / "query_metadata.csv", "query")
    with FaultProxy(s3_endpoint, fail_first=100) as proxy:
        getter = s3.ObjectGetter(s3.make_client("us-west", proxy.url), BUCKET, PREFIX, 2)
        report = download_split(getter, "query", metadata, tmp_path, workers=2, attempts=1, quiet=True,
                                         give_up_after=5)
    assert report.aborted.startswith("stopped after 5 failed files in a row") and "HTTP 50" in report.aborted
    assert len(report.failed) == 5 and len(report.missing) == len(metadata) and not report.ok
    assert proxy.faults < len(metadata)  # the rest was never tried


def test_kill_mid_run_then_resume(mini_dataset: Path, s3_endpoint: str, tmp_path: Path) -> None:
    names = set(query_files(mini_dataset))
    folder = tmp_path / "query_images"
    with FaultProxy(s3_endpoint, hold_after=5) as proxy:  # the 6th image on wait until the kill
        with running([sys.executable, "-m", "isc.cli.download", "--region", "us-west", "--split", "query", "--dest",
                      str(tmp_path), "--endpoint-url", proxy.url, "--workers", "2", "--quiet"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as child:
            wait_until(lambda: len(list(folder.glob("*.jpg"))) >= 5, child, 60)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
    done = {p.name: p.stat() for p in folder.glob("*.jpg")}
    assert len(done) == 5 and child.returncode == -signal.SIGKILL
    originals = query_files(mini_dataset)
    assert all((folder / name).read_bytes() == originals[name] for name in done)  # real names: verified only

    assert run_cli("--dest", str(tmp_path), endpoint=s3_endpoint) == 0
    report = report_of(tmp_path)
    assert (report["skipped"], report["downloaded"]) == (len(done), len(names) - len(done))
    for name, stat in done.items():  # verified files were not fetched again
        after = (folder / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    assert_verified(tmp_path, mini_dataset, names)


def test_ctrl_c_stops_cleanly_with_a_report(mini_dataset: Path, s3_endpoint: str, tmp_path: Path) -> None:
    folder = tmp_path / "query_images"
    with FaultProxy(s3_endpoint, hold_after=3) as proxy:  # the 4th image on wait until the interruption
        with running([sys.executable, "-m", "isc.cli.download", "--region", "us-west", "--split", "query", "--dest",
                      str(tmp_path), "--endpoint-url", proxy.url, "--workers", "2"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as child:
            wait_until(lambda: len(list(folder.glob("*.jpg"))) >= 3, child, 60)
            child.send_signal(signal.SIGINT)
            proxy.release.set()  # the held requests end unanswered: the threads waiting on them stop
            _, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    report = report_of(tmp_path)
    on_disk = len(list(folder.glob("*.jpg")))
    # a file renamed into place just before the signal may not be counted yet: never more than on disk
    assert report["interrupted"] and not report["ok"] and report["downloaded"] in (2, 3) and on_disk == 3
    assert not list(folder.glob(".*.part"))
    assert_verified(tmp_path, mini_dataset, {p.name for p in folder.glob("*.jpg")})


def test_metadata_rows_without_objects_and_hostile_keys(mini_dataset: Path, s3_endpoint: str, tmp_path: Path) -> None:
    metadata = read_metadata(mini_dataset / "query_metadata.csv", "query").head(3)
    extra = pd.DataFrame([
        ("Q09999", f"s3://{BUCKET}/{PREFIX}Q09999.jpg", "0" * 32),  # listed, not in the bucket
        ("Q09998", f"s3://{BUCKET}/{PREFIX}../../../escaped.jpg", "1" * 32),  # hostile key
        ("Q09997", f"s3://{BUCKET}/{PREFIX}Q00000.jpg", "2" * 32),  # another id's object
    ], columns=metadata.columns)
    csv = tmp_path / "metadata.csv"
    write_metadata(csv, pd.concat([metadata, extra]))
    dest = tmp_path / "dest"
    assert run_cli("--dest", str(dest), "--metadata", str(csv), endpoint=s3_endpoint) == 1
    report = report_of(dest)
    reasons = {f["id"]: f["reason"] for f in report["failed"]}
    assert "404" in reasons["Q09999"] and "NoSuchKey" in reasons["Q09999"]
    assert reasons["Q09998"].startswith("refused: key would land outside")
    assert reasons["Q09997"].startswith("refused: key is not Q09997.jpg")
    assert report["downloaded"] == 3
    assert not (tmp_path / "escaped.jpg").exists() and not list(tmp_path.rglob("escaped.jpg"))


def test_bad_metadata_and_arguments_are_one_line_errors(
    s3_endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,s3_uri,md5_checksum\nQ00000,s3://b/all/query_images/Q00000.jpg,not-a-md5\n")
    wrong_columns = tmp_path / "cols.csv"
    wrong_columns.write_text("id,md5\nQ00000,abc\n")
    for args in (["--metadata", str(bad)], ["--metadata", str(wrong_columns)], ["--metadata", str(tmp_path / "none.csv")],
                 ["--repair"], ["--ids", "Q5-Q1"], ["--profile", "no-such-profile-isc"]):
        capsys.readouterr()
        assert run_cli("--dest", str(tmp_path / "d"), *args, endpoint=s3_endpoint) == 2, args
        one_line_error(capsys.readouterr().err, "isc-download")
    # only the --ids run got as far as fetching the metadata; nothing else was written, no image fetched
    assert sorted(p.name for p in (tmp_path / "d").rglob("*")) == ["query_metadata.csv"]

    assert run_cli("--dest", str(tmp_path / "d"), endpoint="http://127.0.0.1:9") == 2
    one_line_error(capsys.readouterr().err, "isc-download", "cannot reach")


def test_missing_metadata_object_says_to_pass_metadata(s3_endpoint: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with FaultProxy(s3_endpoint, hide_metadata=True) as proxy:
        assert run_cli("--dest", str(tmp_path), endpoint=proxy.url) == 2
    err = capsys.readouterr().err
    assert metadata_key("query") in err and "metadata file" in err and "data page" in err


def test_region_auto_picks_the_fastest_bucket(mini_dataset: Path, s3_endpoint: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    slow = {REGIONS["us-west"].bucket, REGIONS["eu"].bucket}
    # a second per request: far more than a loaded machine adds to the fastest of three probes of the other
    with FaultProxy(s3_endpoint, delay=1.0, slow_buckets=slow) as proxy:
        code = main(["--region", "auto", "--split", "query", "--dest", str(tmp_path), "--ids", "Q00000-Q00002",
                     "--endpoint-url", proxy.url])
    assert code == 0
    assert "isc-download: fastest region: asia" in capsys.readouterr().out
    report = report_of(tmp_path)
    assert (report["region"], report["bucket"], report["downloaded"]) == ("asia", REGIONS["asia"].bucket, 3)


def test_cli_subprocess_with_environment_and_profile(mini_dataset: Path, s3_endpoint: str, tmp_path: Path) -> None:
    """The installed command line: endpoint from AWS_ENDPOINT_URL, requests signed with a named profile."""
    config = tmp_path / "aws_config"
    config.write_text("[profile isc-test]\nregion = us-west-2\n")
    credentials = tmp_path / "aws_credentials"
    credentials.write_text("[isc-test]\naws_access_key_id = isc-local\naws_secret_access_key = isc-local\n")
    env = {**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_CONFIG_FILE": str(config),
           "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}
    env.pop("AWS_PROFILE", None)
    command = [sys.executable, "-m", "isc.cli.download", "--region", "eu", "--split", "query", "--dest", str(tmp_path),
               "--exclude", "*", "--include", "Q0000[0-3].jpg"]
    done = subprocess.run([*command, "--profile", "isc-test"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "4 downloaded" in done.stderr and "report:" in done.stderr
    assert_verified(tmp_path, mini_dataset, {f"Q0000{i}.jpg" for i in range(4)})
    again = subprocess.run([*command, "--verify-only"], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "4 already verified" in again.stderr, again.stderr


def test_signed_urls_are_presigned(mini_dataset: Path, s3_endpoint: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    client = s3.make_client("us-west", s3_endpoint)
    assert "Signature" not in s3.ObjectGetter(client, BUCKET, PREFIX).url(PREFIX + "Q00001.jpg")
    credentials = tmp_path / "aws_credentials"
    credentials.write_text("[isc-test]\naws_access_key_id = isc-local\naws_secret_access_key = isc-local\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no_config"))
    monkeypatch.setenv("AWS_PROFILE", "isc-test")
    getter = s3.ObjectGetter(s3.make_client("us-west", s3_endpoint), BUCKET, PREFIX)
    assert "X-Amz-Signature=" in getter.url(PREFIX + "Q00001.jpg")
    assert getter.get(PREFIX + "Q00001.jpg").read() == (mini_dataset / "query_images" / "Q00001.jpg").read_bytes()
