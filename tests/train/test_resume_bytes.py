"""A run killed with -9 and resumed ends where an uninterrupted run ends: isc-train's checkpoint tensor for tensor
(every sample's augmentations and every step's draws come from seeds of their own)."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import torch
from conftest import running, wait_until

from isc.models import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
STEPS = 6


def train_command(mini_dataset: Path, run: Path, *extra: str) -> list[str]:
    # mixing and edits on: every source of randomness a step has (the loader in this process: its draws and the
    # step's share one generator)
    return [sys.executable, "-m", "isc.cli.train", "--data", str(mini_dataset / "training_images"), "-o", str(run),
            "--batch-size", "4", "--image-size", "32", "--workers", "0", "--quiet", "--steps", str(STEPS),
            "--checkpoint-every", "2", "--mix-fraction", "0.5", "--edit-probability", "1", *extra]


def losses(run: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


def test_train_killed_and_resumed_ends_with_the_uninterrupted_runs_tensors(mini_dataset, tmp_path):
    clean = subprocess.run(train_command(mini_dataset, tmp_path / "clean"), capture_output=True, text=True,
                           timeout=600, cwd=REPO)
    assert clean.returncode == 0, clean.stderr
    run = tmp_path / "killed"
    with running(train_command(mini_dataset, run), cwd=REPO) as child:
        wait_until((run / "last.pt").is_file, child)  # step 2 saved, step 3 under way
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    assert 1 <= load_checkpoint(run / "last.pt")["step"] < STEPS  # killed mid-run
    resumed = subprocess.run(train_command(mini_dataset, run, "--resume"), capture_output=True, text=True,
                             timeout=600, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert losses(run) == losses(tmp_path / "clean")  # each step once, with the same loss
    ends = [load_checkpoint(folder / "last.pt") for folder in (tmp_path / "clean", run)]
    assert ends[0]["step"] == ends[1]["step"] == STEPS
    for name, tensor in ends[0]["state_dict"].items():
        assert torch.equal(tensor, ends[1]["state_dict"][name]), name
    states = [end["optimizer"]["state"] for end in ends]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        for name, value in states[0][key].items():
            assert torch.equal(value, states[1][key][name]), (key, name)
