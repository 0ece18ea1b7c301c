"""Options stay objects: the extraction plan resolved once, the search's device the one given, the model options
left unset dropped in one place, the resume log written by extraction alone, isc-train's cuda:N."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from conftest import cli, one_line_error
from PIL import Image

import isc.search.knn
from isc.core.descriptors import read_descriptors
from isc.core.files import InputError, SettingError
from isc.extract.extraction import ExtractOptions, extract
from isc.models import create_model, given_options
from isc.search.matching import SearchOptions, search


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("a", "b", "c"):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(paths[name])
    return paths


def test_the_plan_resolves_every_default_once():
    model = create_model("pdq")
    plan = ExtractOptions(batch_size=8, workers=2, flip=True, scales=(1.0, 0.5)).plan(model)
    assert (plan.device, plan.decoder, plan.pixels, plan.half) == ("cpu", "pil", True, False)
    assert (plan.workers, plan.batch_size, plan.flip, plan.crops) == (2, 8, True, False)
    assert plan.sizes == (model.image_size, round(model.image_size / 2)) and plan.decode_processes == 0
    assert isinstance(ExtractOptions().plan(model).workers, int)  # None resolved
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.workers = 3  # type: ignore[misc]
    with pytest.raises(SettingError, match="^decode_processes needs the torchvision decoder"):
        ExtractOptions(decode_processes=2).plan(model)


def test_extraction_updates_its_output_from_the_rows_it_holds(photos: dict[str, Path], tmp_path: Path):
    model = create_model("pdq")
    output = tmp_path / "cache.h5"
    first = extract({k: photos[k] for k in ("a", "b")}, output, model, workers=0, quiet=True)
    before = read_descriptors(output)
    assert first.processed == 2
    updated = extract(photos, output, model, workers=0, update=True, quiet=True)
    assert (updated.processed, updated.resumed) == (1, 2)  # only the image added since was described
    ids, rows, _ = read_descriptors(output)
    assert ids == ["a", "b", "c"] and np.array_equal(rows[:2], before[1])
    again = extract(photos, output, model, workers=0, quiet=True)  # no update: every image described again
    assert again.processed == 3 and np.array_equal(read_descriptors(output)[1], rows)


def test_search_runs_on_the_device_it_is_given(monkeypatch: pytest.MonkeyPatch):
    devices = []
    real = isc.search.knn.knn_torch

    def recording(*args, **kwargs):  # the real search, its device noted
        devices.append(args[4] if len(args) > 4 else kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(isc.search.knn, "knn_torch", recording)
    rng = np.random.default_rng(1)
    query, reference, training = (rng.normal(size=(n, 8)).astype(np.float32) for n in (5, 20, 30))
    query, reference, training = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (query, reference, training))
    ids = [f"Q{i}" for i in range(5)], [f"R{i}" for i in range(20)]
    predictions = search(ids[0], query, ids[1], reference, SearchOptions(k=3, backend="torch", device="cpu"),
                         training=training, quiet=True)
    assert len(predictions) == 15
    assert devices and set(devices) == {"cpu"}  # the normalisation's searches and the search itself


def test_search_options_check_their_device():
    with pytest.raises(InputError, match="not a device"):
        SearchOptions(device="gpu")
    if not isc.search.knn.torch_has_cuda():
        with pytest.raises(InputError, match="no GPU is visible"):
            SearchOptions(device="cuda:1")


def test_unset_model_options_are_left_out():
    assert given_options(image_size=None, resize="square", pool=None, dim=64) == {"resize": "square", "dim": 64}


def test_isc_train_takes_the_devices_extraction_takes():
    from isc.train.training import setup_process

    with pytest.raises(InputError, match="not a device"):
        setup_process("cpu:0")
    if not isc.search.knn.torch_has_cuda():
        with pytest.raises(InputError, match="no GPU is visible"):  # cuda:N is a device isc-train takes
            setup_process("cuda:0")



def test_isc_train_refuses_a_device_in_one_line(tmp_path: Path):
    refused = cli("train", "--data", tmp_path, "-o", tmp_path / "run", "--steps", "1", "--device", "cpu:0")
    one_line_error(refused, "isc-train", "not a device (cpu, cuda or cuda:N)")
    if not isc.search.knn.torch_has_cuda():
        one_line_error(cli("train", "--data", tmp_path, "-o", tmp_path / "run", "--device", "cuda:0"), "isc-train",
                       "no GPU is visible")
    assert not (tmp_path / "run").exists()
