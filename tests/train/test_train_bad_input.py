"""Bad input and bad conditions in isc-train: numbers refused when parsed, an output that is a file, a
non-finite loss, unreadable images; one line, the right exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_argument_refused, one_line_error
from PIL import Image

from isc.cli.train import main as train_main
from isc.models import load_checkpoint

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
