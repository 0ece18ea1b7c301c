"""The pixel path: models that take uint8 pixels (uint8 ONNX graphs, PDQ) get numpy pixels from decoding
processes, with the descriptors of the torch path; resume, broken images and non-finite refusal still work;
isc-train refuses the models it cannot train."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401 (the dev extra requires it: a broken install fails, never skips)
import pdqhash  # noqa: F401 (installed with isc)
import pytest
import torch
from onnx_nets import PixelsIn, TinyNet, export_onnx

from isc.core.descriptors import model_differences, read_descriptors
from isc.core.files import InputError
from isc.core.partial_log import PartialLog
from isc.extract.extraction import extract
from isc.extract.image_files import list_images
from isc.models import create_model

ROOT = Path(__file__).resolve().parents[2]
BROKEN = {"empty": "empty file", "text": "not an image", "truncated": "cannot decode"}


@pytest.fixture(scope="module")
def images(mini_dataset, tmp_path_factory) -> dict[str, Path]:
    """The mini dataset's references (96-192 px, several aspect ratios) and three broken files."""
    folder = tmp_path_factory.mktemp("pixels")
    for path in sorted((mini_dataset / "reference_images").glob("*.jpg"))[:24]:
        shutil.copy(path, folder)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    first = sorted(folder.glob("R*.jpg"))[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(first[: len(first) // 3])
    return list_images(folder)


@pytest.fixture(scope="module")
def uint8_graph(tmp_path_factory) -> Path:
    return export_onnx(PixelsIn(TinyNet()), torch.zeros(1, 64, 64, 3, dtype=torch.uint8),
                   tmp_path_factory.mktemp("graph") / "pixels.onnx", {0: "batch", 1: "height", 2: "width"})


def _on_the_torch_path(model):
    """The same model through today's torch pipeline: float batches, turned back into pixels by the model."""
    model.net.takes_pixels = False
    return model


def _run(images, output, model, **options):
    summary = extract(images, output, model, **{"batch_size": 8, "quiet": True, "max_broken": 1, **options})
    ids, rows, attrs = read_descriptors(output)
    return summary, ids, rows, attrs


@pytest.mark.parametrize("tta", [{}, {"scales": (1.0, 0.75), "flip": True}], ids=["one view", "scales and flip"])
def test_uint8_onnx_graph_gets_the_descriptors_of_the_torch_path(tta, images, uint8_graph, tmp_path):
    pixels = create_model(f"onnx:{uint8_graph}", image_size=64)
    assert pixels.takes_pixels and pixels.per_image_descriptor is None
    fast, ids, rows, attrs = _run(images, tmp_path / "pixels.h5", pixels, workers=2, **tta)
    torch_model = _on_the_torch_path(create_model(f"onnx:{uint8_graph}", image_size=64))
    slow, torch_ids, torch_rows, torch_attrs = _run(images, tmp_path / "torch.h5", torch_model, workers=0, **tta)
    assert (fast.pixels, slow.pixels) == (True, False)
    assert ids == torch_ids and len(ids) == len(images) - len(BROKEN)
    if tta:
        np.testing.assert_allclose(rows, torch_rows, atol=1e-6)
    else:
        np.testing.assert_array_equal(rows, torch_rows)  # the same pixels, batches and graph
    assert fast.broken == slow.broken and set(fast.broken) == set(BROKEN)
    for image_id, reason in BROKEN.items():
        assert fast.broken[image_id].startswith(reason)
    # nothing recorded tells the paths apart: their files mix
    assert model_differences(attrs, torch_attrs) == []


@pytest.mark.parametrize("flip", [False, True])
def test_pdq_hashed_in_the_workers_agrees_with_the_torch_path(flip, images, tmp_path):
    good = {k: v for k, v in images.items() if k not in BROKEN}
    model = create_model("pdq")
    assert model.takes_pixels and model.per_image_descriptor is not None
    fast, ids, rows, _ = _run(good, tmp_path / "pixels.h5", model, workers=2, flip=flip)
    _, torch_ids, torch_rows, _ = _run(good, tmp_path / "torch.h5", _on_the_torch_path(create_model("pdq")),
                                       workers=0, flip=flip)
    assert fast.pixels and ids == torch_ids
    hamming = np.sum(np.sign(rows) != np.sign(torch_rows), axis=1)
    assert hamming.mean() == 0, hamming  # the same 128 x 128 pixels go into pdqhash
    np.testing.assert_array_equal(rows, torch_rows)


def test_pdq_from_the_cli_says_it_took_the_pixel_path(images, tmp_path):
    folder = Path(next(iter(images.values()))).parent
    result = subprocess.run([sys.executable, "-m", "isc.cli.extract", "--images", str(folder), "-o",
                             str(tmp_path / "pdq.h5"), "--model", "pdq", "--device", "cpu", "--quiet"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "pil decoder, uint8 pixels" in result.stdout and f"{len(BROKEN)} broken" in result.stdout
    ids, rows, _ = read_descriptors(tmp_path / "pdq.h5")
    assert len(ids) == len(images) - len(BROKEN) and set(np.unique(rows)) == {-1.0, 1.0}


def test_a_killed_pixel_run_resumes_and_its_file_mixes_with_the_torch_path(images, uint8_graph, tmp_path):
    good = {k: v for k, v in images.items() if k not in BROKEN}
    first_ids = sorted(good)[:2]
    # the strict run stops at "empty" (third in id order) after writing the batch before it, as a kill would
    output = tmp_path / "out.h5"
    pixels = create_model(f"onnx:{uint8_graph}", image_size=64)
    with pytest.raises(InputError, match="empty file"):
        extract({**{k: good[k] for k in first_ids}, "empty": images["empty"]}, output, pixels, batch_size=2,
                workers=2, quiet=True, strict=True)
    partial = tmp_path / "out.h5.rank0-of-1.partial"
    assert PartialLog.read(partial).ids == first_ids and not output.exists()

    torch_model = _on_the_torch_path(create_model(f"onnx:{uint8_graph}", image_size=64))
    summary = extract(good, output, torch_model, batch_size=2, workers=0, quiet=True)
    assert summary.resumed == 2 and summary.processed == len(good) - 2 and not partial.exists()
    fresh = extract(good, tmp_path / "fresh.h5", pixels, batch_size=2, workers=2, quiet=True)
    assert fresh.pixels and fresh.resumed == 0
    ids, rows, _ = read_descriptors(output)
    fresh_ids, fresh_rows, _ = read_descriptors(tmp_path / "fresh.h5")
    assert ids == fresh_ids == sorted(good)
    np.testing.assert_array_equal(rows, fresh_rows)


class LogOfMean(torch.nn.Module):
    """uint8 pixels in, the log of each channel's mean out: minus infinity for a black image."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.log(pixels.float().mean(dim=(1, 2)))


def test_non_finite_descriptors_on_the_pixel_path_are_refused(tmp_path):
    from PIL import Image

    graph = export_onnx(LogOfMean(), torch.zeros(1, 32, 32, 3, dtype=torch.uint8), tmp_path / "log.onnx",
                    {0: "batch", 1: "height", 2: "width"})
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (40, 30), "black").save(folder / "black.png")
    Image.new("RGB", (40, 30), "white").save(folder / "white.png")
    out = tmp_path / "out.h5"
    result = subprocess.run([sys.executable, "-m", "isc.cli.extract", "--images", str(folder), "-o", str(out),
                             "--model", f"onnx:{graph}", "--image-size", "32", "--workers", "2", "--quiet"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "isc-extract: error: the model gave NaN or infinite descriptors for 1 image(s): black"]
    assert not out.exists()


ONNX = "it is an ONNX graph, run as it is by onnxruntime"


@pytest.mark.parametrize("model, reason", [("sscd", ONNX), ("onnx:graph.onnx", ONNX),
                                           ("pdq", "PDQ is a fixed hash, with no weights"),
                                           ("torchscript:net.pt", "a TorchScript module is run as it is")])
def test_isc_train_refuses_a_model_it_cannot_train_in_one_line(model, reason, mini_dataset, tmp_path):
    result = subprocess.run([sys.executable, "-m", "isc.cli.train", "--data", str(mini_dataset / "training_images"),
                             "-o", str(tmp_path / "run"), "--model", model, "--steps", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"isc-train: error: model {model!r} cannot be trained: {reason} (isc-train fine-tunes timm models, "
        "e.g. efficientnet_lite0)"]
    assert not (tmp_path / "run").exists()
