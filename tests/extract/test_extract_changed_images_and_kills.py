"""Extraction follows the images: one replaced with its mtime restored is described again, a float image with
an infinite pixel is scaled on its finite pixels, a run killed with -9 and resumed gives one run's descriptors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, cli, photo, running, wait_until
from PIL import Image
from skimage import data

from isc.core.descriptors import read_descriptors
from isc.core.partial_log import PartialLog
from isc.extract.decode import decode_with_pillow
from isc.extract.extraction import extract, extraction_config, is_complete
from isc.extract.image_files import list_images
from isc.models import create_model


def test_an_image_replaced_with_its_mtime_restored_is_extracted_again(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    pictures = [Image.fromarray(getattr(data, name)()).convert("RGB").resize((96, 72))
                for name in ("astronaut", "coffee", "chelsea")]
    for k in range(2):
        pictures[k].save(folder / f"R{k:06d}.bmp")
    replacement = tmp_path / "other.bmp"
    pictures[2].save(replacement)  # another photo; a BMP of the same width and height has the same size
    model = create_model("efficientnet_lite0", image_size=64, pool="mean")
    images, out = list_images(folder), tmp_path / "out.h5"
    extract(images, out, model, workers=0, quiet=True)
    before = read_descriptors(out)[1]
    target = folder / "R000000.bmp"
    stat = target.stat()
    target.write_bytes(replacement.read_bytes())
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # touch -r: size and mtime as before
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert not is_complete(out, images, extraction_config(model))  # isc-run's "up to date" test
    extract(images, out, model, workers=0, quiet=True)
    assert is_complete(out, images, extraction_config(model))
    after = read_descriptors(out)[1]
    assert not np.allclose(before[0], after[0], atol=1e-4)
    np.testing.assert_allclose(before[1], after[1], atol=1e-5)


def test_a_float_image_with_an_infinite_pixel_is_scaled_on_its_finite_pixels(tmp_path: Path) -> None:
    grey = np.asarray(photo(0).convert("L"), dtype=np.float32) / 255
    with_inf = grey.copy()
    with_inf[0, 0] = np.inf
    Image.fromarray(grey).save(tmp_path / "plain.tif")
    Image.fromarray(with_inf).save(tmp_path / "inf.tif")
    plain, decoded = decode_with_pillow(tmp_path / "plain.tif").int(), decode_with_pillow(tmp_path / "inf.tif").int()
    assert decoded[:, 0, 0].tolist() == [255, 255, 255]  # +inf is white
    assert (decoded - plain)[:, 1:, 1:].abs().max() <= 1  # not almost black
    Image.fromarray(np.full((8, 8), np.nan, np.float32)).save(tmp_path / "nan.tif")
    result = cli("extract", "--images", tmp_path, "-o", tmp_path / "out.h5", "--model", "resnet10t", "--image-size",
                 "32", "--workers", "0", "--quiet", "--max-broken", "1")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "out.h5") as f:
        assert "no finite pixel value" in f.attrs["broken"]


@pytest.mark.slow
def test_kill_9_of_isc_extract_then_resume_gives_the_descriptors_of_one_run(mini_dataset: Path,
                                                                            tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for image in sorted((mini_dataset / "reference_images").glob("*.jpg"))[:12]:
        shutil.copy(image, images)
    out = tmp_path / "reference.h5"
    args = ["--images", images, "-o", out, "--model", "efficientnet_lite0", "--image-size", "64", "--batch-size", "1",
            "--workers", "0", "--quiet"]
    partial = tmp_path / "reference.h5.rank0-of-1.partial"
    with running([sys.executable, "-m", "isc.cli.extract", *map(str, args)], cwd=REPO,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as child:
        wait_until(lambda: partial.exists() and len(PartialLog.read(partial).ids) >= 3, child)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL and not out.exists()
    resumed = cli("extract", *args, "--json", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["resumed"] >= 3 and summary["resumed"] + summary["processed"] == 12
    assert not partial.exists()
    fresh = cli("extract", *args[:3], tmp_path / "fresh.h5", *args[4:], timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    ids, descriptors, _ = read_descriptors(out)
    fresh_ids, fresh_descriptors, _ = read_descriptors(tmp_path / "fresh.h5")
    assert ids == fresh_ids and len(ids) == 12
    np.testing.assert_allclose(descriptors, fresh_descriptors, atol=1e-5)
