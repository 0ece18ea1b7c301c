"""Grid views beside the crops (isc-extract --crops --grid 2, isc-run --query-grid, isc-find --grid): each image's
rows, the attribute that keeps files of other views from being reused or resumed, the bad values refused."""

from pathlib import Path

import numpy as np
import pytest
from conftest import cli, one_line_error

from isc.core.descriptors import model_differences, read_descriptor_attrs, read_descriptors
from isc.core.files import SettingError
from isc.extract.decode import CROP_VIEWS, GRID_FRACTION, grid_boxes, view_count
from isc.extract.extraction import ExtractOptions, extract, full_views, is_complete
from isc.models import create_model
from isc.pipeline.find import cache_path

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
TINY = ["--model", "efficientnet_lite0", "--image-size", "64"]
GRID = 2
VIEWS = CROP_VIEWS + GRID * GRID


@pytest.fixture(scope="module")
def images(query_pngs) -> dict[str, Path]:
    return query_pngs


@pytest.fixture(scope="module")
def extracted(images, tmp_path_factory) -> dict[str, Path]:
    """The images described by the CLI three ways: plain, with crops, with crops and the 2 x 2 grid."""
    folder = tmp_path_factory.mktemp("grid_files")
    out = {name: folder / f"{name}.h5" for name in ("plain", "crops", "grid")}
    for name, extra in (("plain", []), ("crops", ["--crops"]), ("grid", ["--crops", "--grid", GRID])):
        result = cli("extract", "--images", next(iter(images.values())).parent, *extra, *TINY, "--device", "cpu",
                     "--workers", 0, "-o", out[name], "--quiet")
        assert result.returncode == 0, result.stderr
    return out


def test_grid_views_follow_the_crops_each_the_descriptor_of_its_quarter(images, extracted, tmp_path):
    ids, grid, attrs = read_descriptors(extracted["grid"], views=True)
    assert attrs["views_per_id"] == VIEWS == view_count(True, GRID) == 10 and attrs["grid_views"] == GRID
    assert ids == [i for i in sorted(images) for _ in range(VIEWS)]  # each query's 10 rows adjacent
    crop_ids, crops, crop_attrs = read_descriptors(extracted["crops"], views=True)
    assert "grid_views" not in crop_attrs and crop_attrs["views_per_id"] == CROP_VIEWS
    per_image = grid.reshape(len(images), VIEWS, -1)
    # a PNG is decoded whole for every view: the full view and the crops are the crops file's, bit for bit
    assert per_image[:, :CROP_VIEWS].tobytes() == crops.tobytes()
    described = quarter_descriptors(images, create_model("efficientnet_lite0", image_size=64), tmp_path)
    np.testing.assert_allclose(per_image[:, CROP_VIEWS:].reshape(-1, described.shape[1]), described, atol=1e-5)


def quarter_descriptors(images: dict[str, Path], model, folder: Path) -> np.ndarray:
    """The descriptors of each image's quarters (its grid views), each cut and described as an image of its own."""
    from PIL import Image

    quarters = {}
    for image_id, path in images.items():
        with Image.open(path) as image:
            for n, box in enumerate(grid_boxes(*image.size, GRID_FRACTION, GRID)):
                quarters[f"{image_id}_{n}"] = folder / f"{image_id}_{n}.png"
                image.crop(box).save(quarters[f"{image_id}_{n}"])
    extract(quarters, folder / "quarters.h5", model, device="cpu", workers=0, quiet=True)
    quarter_ids, described, _ = read_descriptors(folder / "quarters.h5")
    assert quarter_ids == [f"{i}_{n}" for i in sorted(images) for n in range(GRID * GRID)]
    return described


@pytest.mark.parametrize(("model_name", "settings"), [("efficientnet_lite0", {"decoder": "torchvision"}),
                                                      ("efficientnet_lite0", {"decoder": "torchvision",
                                                                              "decode_processes": 1}),
                                                      ("pdq", {})])
def test_every_pipeline_cuts_the_same_grid_views(images, tmp_path, model_name, settings):
    # the torchvision decoder (in this process, or in a decoding process) and the pixel path without torch
    model = create_model(model_name, **({} if model_name == "pdq" else {"image_size": 64}))
    extract(images, tmp_path / "grid.h5", model, ExtractOptions(crops=True, grid=GRID), device="cpu", workers=0,
            batch_size=3, quiet=True, **settings)
    _, grid, _ = read_descriptors(tmp_path / "grid.h5", views=True)
    described = quarter_descriptors(images, model, tmp_path)
    rows = grid.reshape(len(images), VIEWS, -1)[:, CROP_VIEWS:].reshape(-1, described.shape[1])
    np.testing.assert_allclose(rows, described, atol=1e-5)


def test_a_file_of_other_views_is_not_reused_and_its_full_views_are_the_plain_file(images, extracted, tmp_path):
    model = create_model("efficientnet_lite0", image_size=64)
    crops, grid = ExtractOptions(crops=True), ExtractOptions(crops=True, grid=GRID)
    assert is_complete(extracted["grid"], images, grid.config(model))
    assert not is_complete(extracted["grid"], images, crops.config(model))
    assert not is_complete(extracted["crops"], images, grid.config(model))
    # isc-find's cache: one file per set of views, so that switching the grid on and off describes nothing twice
    cached = {cache_path(tmp_path, "folder", model, True, g) for g in (0, GRID)} | {cache_path(tmp_path, "folder",
                                                                                               model, False)}
    assert len(cached) == 3
    # a crops file in the output's place: described again with the grid, every image, not resumed from it
    output = tmp_path / "out.h5"
    output.write_bytes(extracted["crops"].read_bytes())
    result = extract(images, output, model, grid, device="cpu", workers=0, quiet=True, update=True)
    assert result.processed == len(images) and result.views_per_id == VIEWS
    assert read_descriptor_attrs(output)["grid_views"] == GRID
    # the plain file made from the grid file's first views: the plain extraction, attributes and rows
    assert full_views(output, tmp_path / "full.h5") == len(images)
    full = read_descriptor_attrs(tmp_path / "full.h5")
    assert "grid_views" not in full and not model_differences(full, read_descriptor_attrs(extracted["plain"]))
    assert read_descriptors(tmp_path / "full.h5")[1].tobytes() == read_descriptors(extracted["plain"])[1].tobytes()


def test_a_query_grid_file_is_searched_against_plain_references(extracted, tmp_path):
    result = cli("search", "--query", extracted["grid"], "--reference", extracted["plain"], "--k", 2,
                 "-o", tmp_path / "p.csv", "--quiet")
    assert result.returncode == 0, result.stderr


def test_a_grid_other_than_0_or_2_is_refused():
    with pytest.raises(SettingError, match="grid must be one of 0, 2, got 3"):
        ExtractOptions(crops=True, grid=3)


@pytest.mark.parametrize(("command", "argv", "message"), [
    ("extract", ["--crops", "--grid", "3"], "--grid must be one of 0, 2, got 3"),
    ("extract", ["--grid", "2"], "--grid needs --crops"),
    ("extract", ["--crops", "--grid", "two"], "argument --grid: not an integer: 'two'"),
    ("run", ["--query-grid", "5"], "--query-grid must be one of 0, 2, got 5"),
    ("find", ["--grid", "-1"], "--grid"),
    # one rule for the three commands: grid views without crops are refused, never silently ignored
    ("find", ["--grid", "2", "--no-crops"], "--grid needs crops: leave out --no-crops"),
    ("run", ["--query-grid", "2", "--no-query-crops"], "--query-grid needs query crops: leave out --no-query-crops"),
    # and so is a way of making crops
    ("extract", ["--crop-views", "cut"], "--crop-views needs --crops"),
    ("find", ["--crop-views", "resized", "--no-crops"], "--crop-views needs crops: leave out --no-crops"),
    ("run", ["--crop-views", "cut", "--no-query-crops"], "--crop-views needs query or reference crops"),
    ("find", ["--crop-views", "half"], "argument --crop-views: invalid choice: 'half'"),
])
def test_the_cli_refuses_a_bad_grid_in_one_line(images, tmp_path, command, argv, message):
    folder = next(iter(images.values())).parent
    where = {"extract": ["--images", folder, "-o", tmp_path / "x.h5"],
             "run": [tmp_path / "w", "--data", tmp_path / "none"],
             "find": [folder, "-o", tmp_path / "x.csv"]}[command]
    result = cli(command, *where, *TINY, *argv)
    one_line_error(result, f"isc-{command}", message)
    assert not any(tmp_path.iterdir())


def test_isc_find_describes_a_folder_with_its_grid_views_into_a_cache_of_their_own(images, tmp_path):
    import json

    folder = next(iter(images.values())).parent
    done = cli("find", folder, "-o", tmp_path / "found.json", "--model", "pdq", "--threshold", "0.5", "--grid", GRID, "--no-verify",
               "--cache", tmp_path / "cache", "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "found.json").read_text())["grid_views"] == GRID
    [cached] = (tmp_path / "cache").glob("*/pdq*.h5")
    assert cached.name == "pdq_crops_grid2_cut.h5"  # isc-find's crops are cut from the full view
    ids, _, attrs = read_descriptors(cached, views=True)
    assert (attrs["views_per_id"], attrs["grid_views"]) == (VIEWS, GRID) and len(ids) == VIEWS * len(images)
