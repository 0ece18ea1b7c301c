"""The README's manual recipe (the mini dataset and its server, phase 1, then phase 2) run exactly as written,
in bash, with each isc-* command on the PATH."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from isc.core.tables import read_predictions

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def recipe() -> str:
    """The README block marked ``<!-- manual-recipe -->``."""
    block = re.search(r"<!-- manual-recipe -->\n```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert block, "README.md has no manual-recipe block"
    return block.group(1)


def command_folder(tmp_path: Path) -> Path:
    """A folder of ``isc-*`` commands running this checkout's modules, as an installation puts them on the PATH."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for module in (REPO / "isc" / "cli").glob("*.py"):
        if module.stem in ("__init__", "common", "options"):
            continue
        script = folder / f"isc-{module.stem}"
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m isc.cli.{module.stem} "$@"\n')
        script.chmod(0o755)
    return folder


@pytest.mark.slow
def test_readme_manual_recipe_runs_as_written(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("AWS_ENDPOINT_URL", "ISC_SUBMISSIONS_DIR")}
    env.update(PATH=f"{command_folder(tmp_path)}{os.pathsep}{env['PATH']}", PYTHONPATH=str(REPO))
    # its own session: the server the recipe starts in the background is stopped with it, even on failure
    shell = subprocess.Popen(["bash", "-euo", "pipefail", "-c", recipe()], cwd=work, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = shell.communicate(timeout=900)
    finally:
        try:
            os.killpg(shell.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert shell.returncode == 0, stderr[-3000:]
    muap = float(re.search(r"µAP\s*:\s*([0-9.]+)", stdout).group(1))
    assert 0.15 < muap <= 1, stdout  # what isc-eval printed for phase 1: 0.29 (16 dimensions, no query crops)
    submissions = work / "submissions"
    for phase in (1, 2):
        # a valid predictions file is submitted byte for byte
        assert (submissions / f"phase{phase}_matching.csv").read_bytes() == \
            (work / f"phase{phase}_predictions.csv").read_bytes()
        assert len(read_predictions(submissions / f"phase{phase}_matching.csv")) > 0
        for name in (f"phase{phase}_matching.csv", f"phase{phase}_descriptors.h5"):
            manifest = json.loads((submissions / f"{name}.manifest.json").read_text())
            assert manifest["md5"] == hashlib.md5((submissions / name).read_bytes()).hexdigest(), name
