"""Crops cut from the full view (isc-extract --crops --crop-views cut, isc-find's default): each view the resized
full view's own pixels at its scale, the same in every pipeline, and recorded (attribute ``cut_views``) so that a
file of crops made another way is never reused for them."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from test_grid_views import GRID, TINY

from isc.core.descriptors import (
    VIEW_ATTRIBUTES,
    described_images,
    model_differences,
    read_descriptor_attrs,
    read_descriptors,
)
from isc.extract.decode import CROP_VIEWS, DEFAULT_MAX_PIXELS, decode_views, view_boxes, view_count
from isc.extract.extraction import ExtractOptions, extract, full_views, is_complete
from isc.models import create_model
from isc.pipeline.find import cache_path

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
SIZES = [64, 48]  # two test-time scales: each view cut from the full view of its own scale


@pytest.fixture(scope="module")
def images(query_pngs) -> dict[str, Path]:
    return query_pngs


@pytest.mark.parametrize("grid", [0, GRID])
def test_cut_views_are_the_resized_full_view_cut_at_its_scale(images, grid):
    path = next(iter(images.values()))
    resized, _ = decode_views(path, SIZES, "short-edge", DEFAULT_MAX_PIXELS, crops=True, grid=grid)
    cut, _ = decode_views(path, SIZES, "short-edge", DEFAULT_MAX_PIXELS, crops=True, grid=grid, cut=True)
    assert len(cut) == len(resized) == view_count(True, grid) * len(SIZES)
    for s in range(len(SIZES)):
        full = cut[s]
        np.testing.assert_array_equal(full, resized[s])  # the full view is the one every other extraction makes
        assert min(full.shape[-2:]) == SIZES[s]
        for v, (left, top, right, bottom) in enumerate(view_boxes(full.shape[-1], full.shape[-2], grid), start=1):
            np.testing.assert_array_equal(cut[v * len(SIZES) + s], full[:, top:bottom, left:right])
    # a crop keeps 2/3 of the full view's side, where a resized crop is brought up to the view size
    assert min(cut[len(SIZES)].shape[-2:]) == round(SIZES[0] * 2 / 3)
    assert min(resized[len(SIZES)].shape[-2:]) == SIZES[0]


@pytest.fixture(scope="module")
def cut_file(images, tmp_path_factory) -> Path:
    """The images described by isc-extract with crops cut from the full view."""
    out = tmp_path_factory.mktemp("cut") / "cut.h5"
    result = cli("extract", "--images", next(iter(images.values())).parent, "--crops", "--crop-views", "cut",
                 *TINY, "--device", "cpu", "--workers", 0, "-o", out, "--quiet")
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("settings", [{"decoder": "torchvision"}, {"decoder": "torchvision", "decode_processes": 1}])
def test_every_torch_pipeline_cuts_the_same_views(images, cut_file, tmp_path, settings):
    # the torchvision decoder, in this process or in a decoding process, against the Pillow DataLoader's file
    model = create_model("efficientnet_lite0", image_size=64)
    extract(images, tmp_path / "cut.h5", model, ExtractOptions(crops=True, cut_views=True), device="cpu", workers=0,
            batch_size=3, quiet=True, **settings)
    np.testing.assert_allclose(read_descriptors(tmp_path / "cut.h5", views=True)[1],
                               read_descriptors(cut_file, views=True)[1], atol=1e-5)


def test_the_pixel_path_describes_the_cut_views(images, tmp_path):
    # PDQ's pixel path, without torch: each row the hash of one cut view
    model = create_model("pdq")
    extract(images, tmp_path / "pdq.h5", model, ExtractOptions(crops=True, cut_views=True), device="cpu",
            workers=0, quiet=True)
    ids, rows, attrs = read_descriptors(tmp_path / "pdq.h5", views=True)
    assert attrs["cut_views"] == 1 and attrs["views_per_id"] == CROP_VIEWS
    expected = [model.per_image_descriptor(np.ascontiguousarray(view.transpose(1, 2, 0)))
                for image_id in sorted(images)
                for view in decode_views(images[image_id], [model.image_size], model.resize, DEFAULT_MAX_PIXELS,
                                         crops=True, cut=True)[0]]
    np.testing.assert_array_equal(rows, np.stack(expected))


def test_a_file_of_cut_views_is_never_reused_for_resized_crops(images, cut_file, tmp_path):
    model = create_model("efficientnet_lite0", image_size=64)
    cut, resized = ExtractOptions(crops=True, cut_views=True), ExtractOptions(crops=True)
    assert read_descriptor_attrs(cut_file)["cut_views"] == 1
    assert is_complete(cut_file, images, cut.config(model)) and not is_complete(cut_file, images, resized.config(model))
    extract(images, tmp_path / "resized.h5", model, resized, device="cpu", workers=0, quiet=True)
    assert "cut_views" not in read_descriptor_attrs(tmp_path / "resized.h5")
    assert not is_complete(tmp_path / "resized.h5", images, cut.config(model))
    per_cut, per_resized = (read_descriptors(f, views=True)[1].reshape(len(images), CROP_VIEWS, -1)
                            for f in (cut_file, tmp_path / "resized.h5"))
    assert per_cut[:, 0].tobytes() == per_resized[:, 0].tobytes()  # the full views: the same pixels
    assert described_images(cut_file) == described_images(tmp_path / "resized.h5") == len(images)  # 6 rows each
    assert not np.allclose(per_cut[:, 1:], per_resized[:, 1:], atol=1e-3)  # the crops: other pixels
    # the plain file made from the cut file's first views: no trace of the views' attributes
    assert full_views(cut_file, tmp_path / "full.h5") == len(images)
    full = read_descriptor_attrs(tmp_path / "full.h5")
    assert not set(VIEW_ATTRIBUTES) & set(full)
    assert not model_differences(full, read_descriptor_attrs(cut_file), VIEW_ATTRIBUTES)
    assert read_descriptors(tmp_path / "full.h5")[1].tobytes() == per_cut[:, 0].tobytes()
    # isc-find's cache: one file per way of making the crops
    assert cache_path(tmp_path, "f", model, True, cut=True) != cache_path(tmp_path, "f", model, True)


def test_isc_find_cuts_its_crops_by_default_into_a_cache_of_their_own(images, tmp_path):
    folder = next(iter(images.values())).parent
    for extra, name, recorded in (([], "pdq_crops_cut.h5", "cut"), (["--crop-views", "resized"], "pdq_crops.h5",
                                                                      "resized")):
        out = tmp_path / f"{recorded}.json"
        done = cli("find", folder, "-o", out, "--model", "pdq", "--threshold", "0.5", "--no-verify",
                   "--cache", tmp_path / "cache", "--quiet", *extra)
        assert done.returncode == 0, done.stderr
        assert json.loads(out.read_text())["crop_views"] == recorded
        cached = next((tmp_path / "cache").glob(f"*/{name}"))
        assert read_descriptor_attrs(cached).get("cut_views") == (1 if recorded == "cut" else None)
