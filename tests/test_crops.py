"""Query multi-crop extraction (isc-extract --crops): several rows per query, searchable, refused by the
descriptor track, resumable."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from isc.extract import extract
from isc.images import CROP_VIEWS, crop_boxes, list_split_images, select_split_images
from isc.io import InputError, read_descriptor_attrs, read_descriptors
from isc.models import create_model
from isc.partial_log import PartialLog

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
TINY = ["--model", "efficientnet_lite0", "--image-size", "64"]


def _cli(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"isc.cli.{name}", *map(str, args)], capture_output=True, text=True,
                          cwd=Path(__file__).parents[1], timeout=300)


@pytest.fixture(scope="module")
def files(mini_dataset, tmp_path_factory) -> dict[str, Path]:
    """Phase-1 queries with and without crops, and the references, all extracted by the CLI."""
    folder = tmp_path_factory.mktemp("crops")
    out = {name: folder / f"{name}.h5" for name in ("plain", "crops", "reference")}
    for name, extra in (("plain", ["--split", "query", "--phase", 1]), ("crops", ["--split", "query", "--phase", 1,
                                                                                  "--crops"]),
                        ("reference", ["--split", "reference"])):
        result = _cli("extract", "--data", mini_dataset, *extra, *TINY, "-o", out[name], "--quiet")
        assert result.returncode == 0, result.stderr
    return out


def test_crop_boxes_are_the_corners_and_centre():
    boxes = crop_boxes(300, 150)
    assert boxes == [(0, 0, 200, 100), (100, 0, 300, 100), (0, 50, 200, 150), (100, 50, 300, 150), (50, 25, 250, 125)]
    assert CROP_VIEWS == 1 + len(boxes)


def test_crops_file_has_adjacent_views_full_view_first(files):
    plain_ids, plain, _ = read_descriptors(files["plain"], "query")
    with pytest.raises(InputError, match="more than once"):
        read_descriptors(files["crops"], "query")
    ids, crops, attrs = read_descriptors(files["crops"], "query", views=True)
    assert attrs["views_per_id"] == CROP_VIEWS == 6
    assert ids == [i for i in plain_ids for _ in range(CROP_VIEWS)]
    with h5py.File(files["crops"]) as f:
        assert len(f["file_stamps"]) == len(ids)
    views = crops.reshape(len(plain_ids), CROP_VIEWS, -1)
    # the full view is the plain descriptor (a JPEG decoded at a larger draft size: nearly equal); crops differ
    cosines = np.einsum("nd,nd->n", views[:, 0], plain)
    assert cosines.min() > 0.98
    assert np.einsum("nd,nd->n", views[:, 1], plain).mean() < cosines.mean()


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_first_view_equals_plain_extraction_when_decoding_is_the_same(mini_dataset, tmp_path, decoder):
    # PNG decoding has no draft mode: the full view is exactly the plain descriptor on both torch pipelines
    from PIL import Image

    queries = select_split_images(list_split_images(mini_dataset, "query"), "query", 1)
    images = {}
    for image_id, path in list(queries.items())[:5]:
        images[image_id] = tmp_path / f"{image_id}.png"
        Image.open(path).save(images[image_id])
    model = create_model("efficientnet_lite0", image_size=64)
    options = {"device": "cpu", "workers": 0, "quiet": True, "decoder": decoder}
    extract(images, tmp_path / "plain.h5", model, **options)
    extract(images, tmp_path / "crops.h5", model, crops=True, **options)
    _, plain, _ = read_descriptors(tmp_path / "plain.h5")
    _, crops, _ = read_descriptors(tmp_path / "crops.h5", views=True)
    np.testing.assert_allclose(crops[::CROP_VIEWS], plain, atol=1e-5)


def test_search_over_crops_gives_each_pair_once(files, tmp_path):
    result = _cli("search", "--query", files["crops"], "--reference", files["reference"], "-o", tmp_path / "p.csv",
                  "--quiet")
    assert result.returncode == 0, result.stderr
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert len(predictions) and not predictions.duplicated(["query_id", "reference_id"]).any()
    assert set(predictions["query_id"]) <= set(read_descriptors(files["plain"])[0])


def test_descriptor_track_refuses_a_crops_file(files, tmp_path):
    result = _cli("submit", "descriptors", "--query", files["crops"], "--reference", files["reference"],
                  "--phase", 1, "-o", tmp_path / "d.h5", "--quiet")
    assert result.returncode == 2 and "more than once" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "d.h5").exists()


def test_crops_resume_after_a_partial_run_and_never_mix_with_plain(mini_dataset, files, tmp_path):
    queries = select_split_images(list_split_images(mini_dataset, "query"), "query", 1)
    model = create_model("efficientnet_lite0", image_size=64)
    output = tmp_path / "crops.h5"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"")
    ordered = dict(list(queries.items())[:4])
    with pytest.raises(InputError):  # strict stops at the empty file, after the first two batches
        extract({**ordered, "Q00003x": broken}, output, model, batch_size=2, workers=0, quiet=True, strict=True,
                crops=True)
    partial = tmp_path / "crops.h5.rank0-of-1.partial"
    assert PartialLog.read(partial).ids == list(ordered)
    with pytest.raises(InputError, match="views_per_id"):
        extract(queries, output, model, workers=0, quiet=True)
    summary = extract(queries, output, model, batch_size=2, workers=0, quiet=True, crops=True)
    assert summary.resumed == 4 and not partial.exists()
    ids, resumed, attrs = read_descriptors(output, views=True)
    fresh_ids, fresh, _ = read_descriptors(files["crops"], views=True)
    assert ids == fresh_ids and attrs["views_per_id"] == CROP_VIEWS
    np.testing.assert_allclose(resumed, fresh, atol=1e-5)


def test_crops_work_on_the_pixel_path(mini_dataset, tmp_path):
    queries = dict(list(select_split_images(list_split_images(mini_dataset, "query"), "query", 1).items())[:5])
    model = create_model("pdq")
    assert model.takes_pixels
    plain = extract(queries, tmp_path / "plain.h5", model, device="cpu", workers=0, quiet=True)
    crops = extract(queries, tmp_path / "crops.h5", model, device="cpu", workers=0, quiet=True, crops=True)
    assert plain.pixels and crops.pixels
    ids, descriptors, _ = read_descriptors(tmp_path / "crops.h5", views=True)
    assert ids == [i for i in queries for _ in range(CROP_VIEWS)]
    assert read_descriptor_attrs(tmp_path / "crops.h5")["views_per_id"] == CROP_VIEWS
    assert descriptors.shape == (len(ids), read_descriptors(tmp_path / "plain.h5")[1].shape[1])
