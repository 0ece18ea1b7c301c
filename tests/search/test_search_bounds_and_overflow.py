"""Search and PCA numbers within bounds: normalisation weights bounded, descriptors of huge norms normalised
without overflow, and a PCA that would overflow refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import cli, one_line_error

from isc.core.descriptors import write_descriptors
from isc.search.vectors import prepare_descriptors

ATTRS = {"model": "resnet50", "image_size": 224}


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--norm-beta", "1e308", "argument --norm-beta: must be <= 10, got '1e308'"),
    ("--norm-beta", "-1", "argument --norm-beta: must be >= 0, got '-1'"),
])
def test_score_normalisation_weights_are_bounded(option: str, value: str, message: str, tmp_path: Path) -> None:
    result = cli("search", "--query", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "-o", tmp_path / "p.csv",
                 option, value)
    one_line_error(result, "isc-search", message)
    result = cli("pca", "apply", tmp_path / "pca.npz", tmp_path / "q.h5", "-o", tmp_path / "o.h5",
                 "--neg-beta", value)
    one_line_error(result, "isc-pca apply", "argument --neg-beta: must be")


def huge_descriptor_files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {name: tmp_path / f"{name}.h5" for name in ("q", "r", "t")}
    for path, prefix in zip(paths.values(), "QRT", strict=True):
        n = 6
        ids = [f"{prefix}{i:0{5 if prefix == 'Q' else 6}d}" for i in range(n)]
        write_descriptors(path, ids, rng.standard_normal((n, 16)).astype(np.float32) * 1e37, ATTRS)
    return paths


def test_descriptors_of_huge_norms_are_normalised_without_overflow(tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"norms \d\.\d+e\+37\.\.") as caught:
        normalised = prepare_descriptors(x * 1e37, "query")
    assert "inf" not in str(caught[0].message)
    np.testing.assert_allclose(normalised, x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-5)
    paths = huge_descriptor_files(tmp_path)
    result = cli("search", "--query", paths["q"], "--reference", paths["r"], "-o", tmp_path / "p.csv", "--k", "2")
    assert result.returncode == 0, result.stderr
    scores = np.loadtxt(tmp_path / "p.csv", delimiter=",", skiprows=1, usecols=2)
    assert np.isfinite(scores).all() and np.abs(scores).max() > 0.1  # not every score 0
    learn = cli("pca", "learn", paths["t"], "-o", tmp_path / "pca.npz", "--dim", "4")
    # the one line alone: no numpy RuntimeWarning ("overflow encountered in cast") before it
    one_line_error(learn, "isc-pca", "overflows float32", "L2-normalise the descriptors first")
    assert not (tmp_path / "pca.npz").exists()
