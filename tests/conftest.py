"""Shared fixtures: a tiny synthetic dataset in the competition's layout, and a local S3 server over it; child
processes that never outlive their test; the one way to run a command and to check its one-line error."""

import contextlib
import io
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isc.synth.dataset import generate_dataset

# ~40 references, 24 phase-1 queries (half of them edited references), 8 phase-2 queries, 40 training images
MINI_DATASET = {"seed": 0, "references": 40, "queries": 24, "phase2_queries": 8, "training": 40,
                "min_size": 96, "max_size": 192}
REPO = Path(__file__).resolve().parents[1]
HEADER = "query_id,reference_id,score\n"
# the organisers' write_predictions_from_arrays: no header row, scores with 6 decimals
ROWS = "Q00000,R000000,0.900000\nQ00002,R000005,0.800000\nQ00001,R000001,0.700000\n"
GT = "query_id,reference_id\nQ00000,R000000\nQ00001,R000001\nQ00002,\n"

# a suite started in the background (`bash scripts/test.sh &` without job control) inherits Ctrl-C ignored, and
# so would every command it starts: the tests that interrupt one would wait in vain; handled, it is reset at exec
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def mini_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a tiny isc-synth dataset (seed 0, images 96-192 px on the long side); treat it as read-only."""
    root = tmp_path_factory.mktemp("mini_dataset")
    generate_dataset(root, workers=1, quiet=True, **MINI_DATASET)
    return root


@pytest.fixture
def scored_files(tmp_path: Path) -> dict[str, Path]:
    """Predictions (``HEADER + ROWS``) and their ground truth (``GT``) in ``tmp_path``: {"dir", "p", "gt"}."""
    predictions, gt = tmp_path / "p.csv", tmp_path / "gt.csv"
    predictions.write_text(HEADER + ROWS)
    gt.write_text(GT)
    return {"dir": tmp_path, "p": predictions, "gt": gt}


@pytest.fixture
def run_configs(monkeypatch: pytest.MonkeyPatch) -> list:
    """The RunConfig of each ``isc.cli.run.main`` call of the test, recorded instead of run."""
    from isc.cli import run as cli_run

    configs = []

    class Recorded:
        def __init__(self, config: object) -> None:
            configs.append(config)

        def run(self) -> object:
            return type("Summary", (), {"table": lambda self: ""})()

    monkeypatch.setattr(cli_run, "Pipeline", Recorded)
    return configs


@pytest.fixture(scope="session")
def query_pngs(mini_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four phase-1 queries as PNGs of 160 x 120 pixels: lossless, so that a view cut and saved is the very
    pixels an extraction cuts."""
    from PIL import Image

    from isc.extract.image_files import list_split_images, select_split_images

    folder = tmp_path_factory.mktemp("query_pngs")
    queries = select_split_images(list_split_images(mini_dataset, "query"), "query", 1)
    out = {}
    for image_id, path in list(queries.items())[:4]:
        with Image.open(path) as image:
            image.convert("RGB").resize((160, 120)).save(folder / f"{image_id}.png")
        out[image_id] = folder / f"{image_id}.png"
    return out


@pytest.fixture(scope="session")
def s3_endpoint(mini_dataset: Path) -> Iterator[str]:
    """Endpoint URL of a local S3 server serving ``mini_dataset`` as the competition's three regional buckets."""
    from isc.download.s3server import LocalS3Server

    with LocalS3Server(mini_dataset) as server:
        yield server.endpoint_url


@contextlib.contextmanager
def running(command: list[str], **options: object) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(command, **options)``, killed and waited for when the block ends, however it ends."""
    child = subprocess.Popen(command, **options)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)


def wait_until(condition: Callable[[], bool], child: subprocess.Popen, seconds: float = 300) -> None:
    """Poll ``condition`` until it holds; fails when ``child`` ends first or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert child.poll() is None, "the child ended before the awaited point"
        assert time.monotonic() < deadline, f"not reached in {seconds} s"
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user cache folder of the test's own (isc-find's default cache lives there), never the real one."""
    folder = tmp_path_factory.mktemp("xdg_cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder))
    return folder


def error_of(command: str, message: str) -> str:
    """The whole stderr of ``isc-COMMAND`` refusing its input with ``message``."""
    return f"isc-{command}: error: {message}\n"


def named_photo(name: str, size: int = 128) -> Image.Image:
    """A procedural photo seeded by ``name``, ``size`` x ``size``."""
    from isc.synth.draw import base_image

    return base_image(np.random.default_rng(list(name.encode())), size, size)


def photo(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A smooth random picture, different for each seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def rewrite_keeping_size_and_times(path: Path, replacement: Image.Image) -> None:
    """Write ``replacement`` over ``path`` as a JPEG of the same size (padded after its end), times put back."""
    stat, size = path.stat(), path.stat().st_size
    for quality in range(90, 10, -10):
        encoded = _jpeg_bytes(replacement, quality)
        if len(encoded) <= size:
            break
    path.write_bytes(encoded + b"\0" * (size - len(encoded)))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def _jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def run_python(*args: object, timeout: float = 300, cwd: Path = REPO,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python ARGS`` in a child process run from ``cwd``, its output captured as text; by default in this
    environment less its AWS settings (a developer's profile or region must not change what a test sees)."""
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=env)


def cli(module: str, *args: object, **options: object) -> subprocess.CompletedProcess:
    """``python -m isc.cli.MODULE ARGS``, as :func:`run_python` runs it (same ``timeout``, ``cwd``, ``env``)."""
    return run_python("-m", f"isc.cli.{module}", *args, **options)


def assert_argument_refused(main: Callable[[list[str]], int], prog: str, argv: list[str], message: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    """argparse refuses ``argv`` (exit 2) with ``message``, stderr its one line."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2, argv
    one_line_error(capsys.readouterr().err, prog, message)


def one_line_error(result: subprocess.CompletedProcess | str, prog: str, *fragments: str, status: int = 2,
                   warned: bool = False) -> str:
    """The error line of a refused command: its WHOLE stderr is the one line ``PROG: error: ...`` holding every
    fragment (after one-line ``PROG: warning: ...`` lines only where ``warned``: what the input deserved before
    the error), and a finished child (not the text of stderr alone) exited ``status``."""
    stderr = result if isinstance(result, str) else result.stderr
    if not isinstance(result, str):
        assert result.returncode == status, (result.returncode, stderr)
    lines = stderr.splitlines()
    if warned:
        lines = list(itertools.dropwhile(lambda line: line.startswith(f"{prog}: warning: "), lines))
    assert len(lines) == 1 and stderr.endswith("\n"), stderr
    assert lines[0].startswith(f"{prog}: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]

