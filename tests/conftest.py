"""Shared fixtures: a tiny synthetic dataset in the competition's layout, and a local S3 server over it; child
processes that never outlive their test; the one way to run a command and to check its one-line error."""

import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from isc.synth.dataset import generate_dataset

# ~40 references, 24 phase-1 queries (half of them edited references), 8 phase-2 queries, 40 training images
MINI_DATASET = {"seed": 0, "references": 40, "queries": 24, "phase2_queries": 8, "training": 40,
                "min_size": 96, "max_size": 192}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mini_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a tiny isc-synth dataset (seed 0, images 96-192 px on the long side); treat it as read-only."""
    root = tmp_path_factory.mktemp("mini_dataset")
    generate_dataset(root, workers=1, quiet=True, **MINI_DATASET)
    return root


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
