"""Multi-crop extraction (isc-extract --crops) of queries and references: several rows per image, searched by
the best (query view, reference view), refused by the descriptor track, resumable."""

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import cli, one_line_error

from isc.core.descriptors import read_descriptor_attrs, read_descriptors
from isc.core.files import InputError
from isc.core.partial_log import PartialLog
from isc.extract.decode import CROP_VIEWS, crop_boxes
from isc.extract.extraction import extract, extraction_config, full_views, is_complete
from isc.extract.image_files import list_split_images, select_split_images
from isc.models import create_model
from isc.search.matching import search
from isc.search.normalisation import ScoreNorm

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
TINY = ["--model", "efficientnet_lite0", "--image-size", "64"]


@pytest.fixture(scope="module")
def files(mini_dataset, tmp_path_factory) -> dict[str, Path]:
    """Phase-1 queries and the references, with and without crops, all extracted by the CLI."""
    folder = tmp_path_factory.mktemp("crops")
    out = {name: folder / f"{name}.h5" for name in ("plain", "crops", "reference", "reference_crops")}
    for name, extra in (("plain", ["--split", "query", "--phase", 1]), ("crops", ["--split", "query", "--phase", 1,
                                                                                  "--crops"]),
                        ("reference", ["--split", "reference"]), ("reference_crops", ["--split", "reference", "--crops"])):
        result = cli("extract", "--data", mini_dataset, *extra, *TINY, "-o", out[name], "--quiet")
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


@pytest.mark.parametrize(("model_name", "decoder"), [("efficientnet_lite0", "pil"),
                                                     ("efficientnet_lite0", "torchvision"), ("pdq", "pil")])
def test_full_views_are_the_plain_extraction_bit_for_bit(mini_dataset, tmp_path, model_name, decoder):
    # JPEGs that draft mode decodes smaller for the full view than for the crops (a 1/2 scale against none), a PNG
    # and an EXIF-rotated JPEG (both decoded by Pillow on every pipeline), in batches of 2
    from PIL import Image

    queries = select_split_images(list_split_images(mini_dataset, "query"), "query", 1)
    images = {}
    for n, (image_id, path) in enumerate(list(queries.items())[:5]):
        with Image.open(path) as image:
            big = image.convert("RGB").resize((200 + 10 * n, 150))
        images[image_id] = tmp_path / f"{image_id}.{'png' if n == 3 else 'jpg'}"
        exif = Image.Exif()
        exif[0x0112] = 6 if n == 4 else 1
        big.save(images[image_id], exif=exif) if n != 3 else big.save(images[image_id])
    model = create_model(model_name, **({} if model_name == "pdq" else {"image_size": 64}))
    options = {"device": "cpu", "workers": 0, "quiet": True, "decoder": decoder, "batch_size": 2}
    extract(images, tmp_path / "plain.h5", model, **options)
    extract(images, tmp_path / "crops.h5", model, crops=True, **options)
    assert full_views(tmp_path / "crops.h5", tmp_path / "derived.h5") == len(images)
    with h5py.File(tmp_path / "plain.h5") as plain, h5py.File(tmp_path / "derived.h5") as derived:
        assert set(plain) == set(derived) == {"ids", "descriptors", "file_stamps"}
        for name in plain:
            assert plain[name][()].tobytes() == derived[name][()].tobytes(), name
        assert set(plain.attrs) == set(derived.attrs)
    assert is_complete(tmp_path / "derived.h5", images, extraction_config(model))
    # the crops are still cut from the larger decode: not the plain view
    _, crops, _ = read_descriptors(tmp_path / "crops.h5", views=True)
    assert not np.array_equal(crops[1::CROP_VIEWS], crops[::CROP_VIEWS])


def test_full_views_refuses_a_file_without_views(files, tmp_path):
    with pytest.raises(InputError, match="not a crops file"):
        full_views(files["plain"], tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_search_over_crops_gives_each_pair_once(files, tmp_path):
    result = cli("search", "--query", files["crops"], "--reference", files["reference"], "-o", tmp_path / "p.csv",
                 "--quiet")
    assert result.returncode == 0, result.stderr
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert len(predictions) and not predictions.duplicated(["query_id", "reference_id"]).any()
    assert set(predictions["query_id"]) <= set(read_descriptors(files["plain"])[0])


@pytest.mark.parametrize("crops", ["query", "reference"])
def test_descriptor_track_refuses_a_crops_file(files, tmp_path, crops):
    refused = files["crops"] if crops == "query" else files["reference_crops"]
    query, reference = (refused, files["reference"]) if crops == "query" else (files["plain"], refused)
    result = cli("submit", "descriptors", "--query", query, "--reference", reference,
                 "--phase", 1, "-o", tmp_path / "d.h5", "--quiet")
    one_line_error(result, "isc-submit", f"{refused}: 6 views per image", "one descriptor per image")
    assert not (tmp_path / "d.h5").exists()


def test_search_over_reference_crops_scores_each_pair_by_its_best_two_views(files, tmp_path):
    output = tmp_path / "p.csv"
    result = cli("search", "--query", files["crops"], "--reference", files["reference_crops"], "--k", 3,
                 "-o", output, "--quiet")
    assert result.returncode == 0, result.stderr
    predictions = pd.read_csv(output)
    query_ids, queries, _ = read_descriptors(files["crops"], views=True)
    reference_ids, references, attrs = read_descriptors(files["reference_crops"], "reference", views=True)
    assert attrs["views_per_id"] == CROP_VIEWS and reference_ids == [i for i in dict.fromkeys(reference_ids)
                                                                       for _ in range(CROP_VIEWS)]
    # every query keeps 3 distinct references, each scored by its best (query view, reference view)
    assert (predictions.groupby("query_id")["reference_id"].nunique() == 3).all()
    assert predictions["query_id"].nunique() == len(set(query_ids))
    best = (queries @ references.T).reshape(len(set(query_ids)), CROP_VIEWS, -1, CROP_VIEWS).max(axis=(1, 3))
    rows = {q: n for n, q in enumerate(dict.fromkeys(query_ids))}
    columns = {r: n for n, r in enumerate(dict.fromkeys(reference_ids))}
    for query_id, group in predictions.groupby("query_id"):
        expected = np.sort(best[rows[query_id]])[::-1][:3]
        np.testing.assert_allclose(np.sort(group["score"])[::-1], expected, atol=1e-5)
        np.testing.assert_allclose(group["score"], best[rows[query_id], group["reference_id"].map(columns)],
                                   atol=1e-5)


def _views(rng: np.random.Generator, n: int, views: int, d: int, spread: float) -> np.ndarray:
    """``n`` images of ``views`` unit rows each, adjacent, the views of an image close together."""
    centres = rng.standard_normal((n, 1, d))
    x = (centres + spread * rng.standard_normal((n, views, d))).reshape(n * views, d).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _bias(x: np.ndarray, training: np.ndarray, a: int, b: int) -> np.ndarray:
    """The mean similarity of each row to its a-th..b-th nearest training rows, by a full sort."""
    return np.mean(-np.sort(-(x @ training.T), axis=1)[:, a - 1:b], axis=1)


@pytest.mark.parametrize("normalize_references", [False, True])
@pytest.mark.parametrize("query_views", [1, 3])
def test_reference_views_search_distinct_references_normalised_per_view(normalize_references, query_views):
    # the views of one reference are so alike that a query's best rows are mostly views of a few references
    rng = np.random.default_rng(3)
    n_query, n_reference, views, d, k, beta = 20, 40, 6, 12, 4, 0.5
    query = _views(rng, n_query, query_views, d, 0.3)
    reference = _views(rng, n_reference, views, d, 0.1)
    training = _views(rng, 60, 1, d, 0.0)
    query_ids = [f"Q{i:05d}" for i in range(n_query) for _ in range(query_views)]
    reference_ids = [f"R{i:06d}" for i in range(n_reference) for _ in range(views)]
    predictions = search(query_ids, query, reference_ids, reference, k=k, training=training, max_results=10**6,
                         norm=ScoreNorm(beta, (2, 4), references=normalize_references), backend="faiss-cpu",
                         quiet=True)
    # brute force: every (query view, reference view) normalised by its own views' biases, the best view pair kept
    scores = query @ reference.T - beta * _bias(query, training, 2, 4)[:, None]
    if normalize_references:
        scores -= beta * _bias(reference, training, 2, 4)[None, :]
    best = scores.reshape(n_query, query_views, n_reference, views).max(axis=(1, 3))
    top = np.argsort(-best, axis=1)[:, :k]
    expected = pd.DataFrame({"query_id": np.repeat([f"Q{i:05d}" for i in range(n_query)], k),
                             "reference_id": [f"R{j:06d}" for j in top.ravel()],
                             "score": np.take_along_axis(best, top, 1).ravel()})
    assert len(predictions) == n_query * k and not predictions.duplicated(["query_id", "reference_id"]).any()
    got = predictions.sort_values(["query_id", "score"], ascending=[True, False]).reset_index(drop=True)
    expected = expected.sort_values(["query_id", "score"], ascending=[True, False]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[["query_id", "reference_id"]], expected[["query_id", "reference_id"]])
    np.testing.assert_allclose(got["score"], expected["score"], atol=1e-5)
    assert predictions["score"].is_monotonic_decreasing
    # searched only k rows deep, a query view's rows would hold fewer than k distinct references
    first_rows = np.argsort(-(query @ reference.T), axis=1)[:, :k] // views
    assert min(len(set(row)) for row in first_rows) < k


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
