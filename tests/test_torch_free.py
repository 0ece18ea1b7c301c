"""The models run outside torch (PDQ, uint8 ONNX graphs) extract in a process where torch cannot be imported,
workers included, with the descriptors of the torch pipeline; the numpy resize that lets them is torch's,
pixel for pixel."""

import subprocess

import numpy as np
import pytest
import torch
from conftest import run_python
from test_onnx_models import PixelsIn, TinyNet, _export

from isc.core.descriptors import read_descriptors
from isc.extract.decode import resize_image
from isc.extract.extraction import extract
from isc.extract.image_files import list_split_images
from isc.extract.resample import resize_pixels
from isc.models import create_model

# a finder ahead of all others: any import of torch, in this process or a forked worker, says so and fails
NO_TORCH = """import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            print("torch was imported", file=sys.stderr)
            raise ImportError("torch is blocked")
sys.meta_path.insert(0, NoTorch())
from isc.cli.extract import main
raise SystemExit(main(sys.argv[1:]))
"""


def _extract_without_torch(*args: str) -> subprocess.CompletedProcess:
    return run_python("-c", NO_TORCH, *args, timeout=600)


@pytest.mark.parametrize("model_name", ["pdq", "uint8 onnx"])
def test_pixel_models_extract_without_torch_and_agree_with_the_torch_pipeline(model_name, mini_dataset, tmp_path):
    if model_name == "pdq":
        name, options = "pdq", {}
    else:
        graph = _export(PixelsIn(TinyNet()), torch.zeros(1, 64, 64, 3, dtype=torch.uint8), tmp_path / "pixels.onnx",
                        {0: "batch", 1: "height", 2: "width"})
        name, options = f"onnx:{graph}", {"image_size": 64}
    output = tmp_path / "out.h5"
    result = _extract_without_torch("--images", str(mini_dataset / "reference_images"), "-o", str(output),
                                    "--model", name, "--workers", "2", "--flip", "--quiet",
                                    *(("--image-size", "64") if options else ()))
    assert result.returncode == 0 and "torch was imported" not in result.stderr, result.stderr
    assert "on cpu, pil decoder, uint8 pixels" in result.stdout
    ids, rows, attrs = read_descriptors(output)
    images = list_split_images(mini_dataset, "reference")
    assert ids == sorted(images) and attrs["model"] == name

    model = create_model(name, **options)
    model.net.takes_pixels = False  # the torch pipeline: float batches, torch's resize
    extract(images, tmp_path / "torch.h5", model, batch_size=8, device="cpu", workers=0, flip=True, quiet=True)
    torch_ids, torch_rows, torch_attrs = read_descriptors(tmp_path / "torch.h5")
    assert torch_ids == ids and torch_attrs["model_fingerprint"] == attrs["model_fingerprint"]
    np.testing.assert_allclose(rows, torch_rows, atol=1e-6)  # the same pixels; only the flip's mean may round


def test_numpy_resize_gives_the_pixels_of_torch():
    rng = np.random.default_rng(0)
    for trial in range(60):
        height, width = (int(side) for side in rng.integers(1, 700, size=2))
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        if trial % 2:  # smooth, as photos are: values near the rounding boundaries of every pass
            y, x = np.mgrid[0:height, 0:width]
            pixels[...] = (127.5 + 127 * np.sin(x / 7 + y / 11 + trial))[..., None]
        view = pixels.transpose(2, 0, 1)
        if trial % 3 == 0:  # a crop: a view with strides of the whole image
            view = view[:, height // 3:, : max(1, width * 2 // 3)]
        size, mode = int(rng.integers(8, 600)), ("square", "short-edge")[trial % 2]
        expected = resize_image(torch.from_numpy(np.ascontiguousarray(view.transpose(1, 2, 0))).permute(2, 0, 1),
                                size, mode).numpy()
        np.testing.assert_array_equal(resize_pixels(view, size, mode), expected, err_msg=f"{view.shape} {size} {mode}")
