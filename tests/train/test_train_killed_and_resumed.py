"""isc-train killed with -9 leaves a checkpoint that resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli, running, wait_until


@pytest.mark.slow
def test_kill_9_of_isc_train_leaves_a_checkpoint_that_resumes(mini_dataset: Path, tmp_path: Path) -> None:
    from isc.models import load_checkpoint

    run = tmp_path / "run"
    common = ["--data", mini_dataset / "training_images", "-o", run, "--batch-size", "4", "--image-size", "32",
              "--workers", "0", "--quiet", "--checkpoint-every", "1"]
    with running([sys.executable, "-m", "isc.cli.train", *map(str, common), "--steps", "10000"], cwd=REPO,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as child:
        wait_until(lambda: (run / "log.jsonl").is_file() and (run / "log.jsonl").read_text().count("\n") >= 2, child)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(run / "last.pt")["step"]  # whole: written under a temporary name, then renamed
    assert killed_at >= 1
    resumed = cli("train", *common, "--steps", killed_at + 2, "--resume", "--json", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert (summary["start"], summary["steps"]) == (killed_at, killed_at + 2)
    assert load_checkpoint(run / "last.pt")["step"] == killed_at + 2
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps[-2:] == [killed_at + 1, killed_at + 2]
