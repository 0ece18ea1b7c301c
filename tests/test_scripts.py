"""The README's install step (scripts/setup_venv.sh, sourced by test.sh and demo.sh): interpreter choice and
the skipped re-install."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"


def _source_setup(venv: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", "source scripts/setup_venv.sh"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "VENV": str(venv), **env})


def _fake_venv(tmp_path: Path) -> Path:
    """A folder that answers like a venv of this interpreter, without installing anything into it."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    return venv


def _stamp() -> str:
    metadata = b"".join((REPO / name).read_bytes() for name in ("setup.cfg", "pyproject.toml", "constraints.txt"))
    return f"{VERSION} {hashlib.sha256(metadata).hexdigest()}\n"


def test_install_is_skipped_when_metadata_and_pins_are_unchanged(tmp_path: Path) -> None:
    venv = _fake_venv(tmp_path)
    (venv / ".isc-install-stamp").write_text(_stamp())
    done = _source_setup(venv, ISC_PYTHON=sys.executable)
    assert done.returncode == 0, done.stderr
    assert f"Python {VERSION}: {sys.executable} -> {venv}" in done.stderr
    assert "install skipped" in done.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the pyenv shim trick is for Linux")
def test_a_shim_that_cannot_run_is_not_chosen(tmp_path: Path) -> None:
    # pyenv puts python3.12 on PATH even when 3.12 is not selected; running it then fails
    shims = tmp_path / "shims"
    shims.mkdir()
    for name in ("python3.12", "python3.11"):
        (shims / name).write_text("#!/bin/sh\necho 'pyenv: version not selected' >&2\nexit 127\n")
        (shims / name).chmod(0o755)
    (shims / "python3").symlink_to(sys.executable)
    venv = _fake_venv(tmp_path)
    (venv / ".isc-install-stamp").write_text(_stamp())
    done = _source_setup(venv, PATH=f"{shims}:/usr/bin:/bin")
    assert done.returncode == 0, done.stderr
    assert f"-> {venv}" in done.stderr and "shims/python3.1" not in done.stderr
