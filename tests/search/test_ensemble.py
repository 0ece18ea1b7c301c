"""Several models' descriptor files joined before the PCA (isc.search.ensemble): rows matched by image id (a
query's views each with the other model's one row), the files written and re-read, and what must not mix refused:
files of other images, a PCA learnt on other models or weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from isc.core.descriptors import read_descriptors, write_descriptors
from isc.core.files import InputError
from isc.search.ensemble import learn_joined_pca, read_joined, write_joined_whitened
from isc.search.pca import apply_pca_file, concatenate_descriptors


def unit_rows(seed: int, n: int, d: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Training descriptors of two models (12 and 8 dimensions, the second in another order) and a query file
    of the first model holding two views of each of 3 images."""
    folder = tmp_path_factory.mktemp("ensemble")
    ids = [f"T{n:06d}" for n in range(40)]
    paths = {name: folder / f"{name}.h5" for name in ("first", "second", "views", "other_views")}
    write_descriptors(paths["first"], ids, unit_rows(0, 40, 12), {"model": "a", "model_fingerprint": "fa"})
    write_descriptors(paths["second"], ids[::-1], unit_rows(1, 40, 8), {"model": "b", "model_fingerprint": "fb"})
    views = [i for i in ids[:3] for _ in range(2)]
    write_descriptors(paths["views"], views, unit_rows(2, 6, 12), {"model": "a", "model_fingerprint": "fa",
                                                                   "views_per_id": 2})
    write_descriptors(paths["other_views"], ids[:3], unit_rows(3, 3, 8), {"model": "b", "model_fingerprint": "fb"})
    return paths


def test_rows_are_matched_by_id_and_each_view_joins_the_other_models_row(files):
    joined = read_joined(files["first"], [(files["second"], 0.5)])
    ids, first, _ = read_descriptors(files["first"])
    other_ids, second, _ = read_descriptors(files["second"])
    row = {image: n for n, image in enumerate(other_ids)}
    expected = concatenate_descriptors([first, second[[row[i] for i in ids]]], [1.0, 0.5])
    np.testing.assert_allclose(joined.descriptors, expected, atol=1e-6)
    assert joined.ids == ids and joined.attrs["model"] == "a + b x0.5" and joined.attrs["model_fingerprint"] != "fa"
    joined = read_joined(files["views"], [(files["other_views"], 0.5)], views=True)
    view_ids, views, _ = read_descriptors(files["views"], views=True)
    other_ids, other, _ = read_descriptors(files["other_views"])
    assert joined.ids == view_ids == [i for i in ids[:3] for _ in range(2)]
    expected = concatenate_descriptors([views, other[[other_ids.index(i) for i in view_ids]]], [1.0, 0.5])
    np.testing.assert_allclose(joined.descriptors, expected, atol=1e-6)


def test_the_whitened_file_is_written_reread_and_refused_with_another_weight(files, tmp_path):
    pca = learn_joined_pca(files["first"], [(files["second"], 0.5)], tmp_path / "pca.npz", 6)
    rows = write_joined_whitened(pca, files["first"], [(files["second"], 0.5)], tmp_path / "joined.h5")
    ids, whitened, attrs = read_descriptors(tmp_path / "joined.h5")
    assert rows == len(ids) == 40 and whitened.shape == (40, 6) and whitened.dtype == np.float32
    expected = pca.apply(read_joined(files["first"], [(files["second"], 0.5)]).descriptors)
    np.testing.assert_allclose(whitened, expected, atol=1e-6)
    assert "ensemble" in attrs and "pca" in attrs
    with pytest.raises(InputError, match=r"made by model a \+ b x1 \(\w+\), but the PCA was learnt on "
                                         r"descriptors of a \+ b x0.5"):
        write_joined_whitened(pca, files["first"], [(files["second"], 1.0)], tmp_path / "other.h5")
    with pytest.raises(InputError, match=r"made by model a \(fa\), but the PCA was learnt on descriptors of a \+ b"):
        apply_pca_file(pca, files["first"], tmp_path / "plain.h5")  # one model's file: not the ensemble's
    assert not (tmp_path / "other.h5").exists() and not (tmp_path / "plain.h5").exists()


def test_files_of_other_images_are_refused(files):
    with pytest.raises(InputError, match="describes other images than .*first.h5 \\(T000003 is in one of them only\\)"):
        read_joined(files["first"], [(files["other_views"], 0.5)])
