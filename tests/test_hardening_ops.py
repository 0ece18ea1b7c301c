"""Bad input and bad conditions in isc-download, isc-s3serve, isc-train and isc-synth: one line, the right exit
status, never a hang or a traceback."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli, one_line_error, run_python
from PIL import Image

from isc.cli.download import main as download_main
from isc.cli.synth import main as synth_main
from isc.cli.train import main as train_main
from isc.models import load_checkpoint


def assert_argument_refused(main: Callable[[list[str]], int], prog: str, argv: list[str], message: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """argparse refuses ``argv`` (exit 2) with ``message``, stderr its one line."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2, argv
    one_line_error(capsys.readouterr().err, prog, message)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port on loopback that accepts TCP connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


# ------------------------------------------------------------------------------------------ isc-download


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


# ------------------------------------------------------------------------------------------ isc-s3serve


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


# --------------------------------------------------------------------------------------------- isc-train

TINY = ["--image-size", "32", "--workers", "0", "--quiet"]


@pytest.fixture
def six_images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (40, 30), (40 * i, 255 - 40 * i, 128)).save(folder / f"img{i}.jpg")
    return folder


@pytest.mark.parametrize("args, message", [
    (["--entropy-weight", "nan"], "argument --entropy-weight: must be a finite number"),
    (["--lr", "nan"], "argument --lr: must be a finite number"),
    (["--lr", "inf"], "argument --lr: must be a finite number"),
    (["--lr", "0"], "argument --lr: must be > 0"),
    (["--temperature", "-1"], "argument --temperature: must be > 0"),
    (["--weight-decay", "-0.1"], "argument --weight-decay: must be >= 0"),
    (["--workers", "-1"], "argument --workers: must be >= 0"),
    (["--steps", "0"], "argument --steps: must be >= 1"),
    (["--epochs", "0"], "argument --epochs: must be > 0"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 1"),
    (["--image-size", "0"], "argument --image-size: must be >= 1"),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: must be >= 1"),
])
def test_train_numbers_refused_at_parse_time(args: list[str], message: str, six_images: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--data", str(six_images), "-o", str(tmp_path / "run"), *args]
    assert_argument_refused(train_main, "isc-train", argv, message, capsys)
    assert not (tmp_path / "run").exists()


def test_train_output_that_is_a_file(six_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "run"
    output.write_text("keep me")
    assert train_main(["--data", str(six_images), "-o", str(output), "--steps", "1", *TINY]) == 2
    one_line_error(capsys.readouterr().err, "isc-train", "exists and is not a directory")
    assert output.read_text() == "keep me"


def test_train_stops_on_the_first_non_finite_loss(six_images: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    # an absurd learning rate: AdamW moves every weight by ~1e30 in the first step, the next forward overflows
    code = train_main(["--data", str(six_images), "-o", str(run), "--batch-size", "2", "--steps", "3", "--lr", "1e30",
                       "--checkpoint-every", "1", *TINY])
    err = capsys.readouterr().err
    assert code == 2
    one_line_error(err, "isc-train", "training diverged")
    assert "the loss is nan" in err or "no longer finite" in err
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert all(row["loss"] == row["loss"] for row in log) and len(log) < 3  # no NaN logged, stopped early
    if (run / "last.pt").exists():  # whatever was kept is finite
        state = load_checkpoint(run / "last.pt")["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_train_skips_and_lists_unreadable_images(six_images: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (six_images / "not_an_image.jpg").write_text("hello")
    good = (six_images / "img0.jpg").read_bytes()
    (six_images / "truncated.jpg").write_bytes(good[: len(good) // 3])
    # 8 images, 4 per batch: 2 batches make an epoch, so every image is drawn
    code = train_main(["--data", str(six_images), "-o", str(tmp_path / "run"), "--batch-size", "4", "--steps", "2",
                       "--json", *TINY])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2
    assert set(summary["broken"]) == {str(six_images / "not_an_image.jpg"), str(six_images / "truncated.jpg")}
    assert "not an image" in summary["broken"][str(six_images / "not_an_image.jpg")]
    assert "truncated" in summary["broken"][str(six_images / "truncated.jpg")].lower()


# --------------------------------------------------------------------------------------------- isc-synth


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "argument --workers: must be >= 1"),
    (["--references", "-1"], "argument --references: must be >= 0"),
    (["--seed", "-1"], "argument --seed: must be >= 0"),
    (["--min-size", "0"], "argument --min-size: must be >= 1"),
    (["--match-fraction", "nan"], "argument --match-fraction: must be a finite number"),
])
def test_synth_numbers_refused_at_parse_time(args: list[str], message: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert_argument_refused(synth_main, "isc-synth", [str(tmp_path / "out"), *args], message, capsys)
    assert not (tmp_path / "out").exists()


def test_synth_output_that_is_a_file(tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.write_text("keep me")
    result = cli("synth", str(output), "--references", "1", "--queries", "1", "--training", "1",
                        "--phase2-queries", "0", "--workers", "1")
    one_line_error(result, "isc-synth", "exists and is not a directory")
    assert output.read_text() == "keep me"
