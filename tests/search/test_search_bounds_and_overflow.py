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



def test_row_norms_in_one_pass_match_the_exact_norms_at_every_magnitude() -> None:
    """The one-pass norms (float32 squares) measure again the rows whose squares leave float32's range: every
    norm within float32 rounding of float64's, NaN exactly for a row holding a NaN or an infinity."""
    from isc.search.vectors import row_norms

    x = np.random.default_rng(2).standard_normal((40, 16)).astype(np.float32)
    x[1] *= 1e37  # squares overflow
    x[2] *= 1e-30  # squares underflow
    x[3] = 0
    x[4, 5], x[5, 0] = np.nan, -np.inf
    x[6, :2] = 3e38  # finite, its sum past float32
    with np.errstate(over="ignore", invalid="ignore"):
        exact = np.linalg.norm(x.astype(np.float64), axis=1)
    with np.errstate(over="raise", invalid="raise"):  # no warning: every overflow is measured again, quietly
        norms = row_norms(x)
    finite = np.isfinite(exact)
    assert (np.isnan(norms) == ~finite).all() and np.allclose(norms[finite], exact[finite], rtol=1e-6, atol=0)
    assert norms[2] > 0 and norms[3] == 0


def test_a_finite_row_past_float32s_sum_is_kept_and_the_first_non_finite_row_named(tmp_path: Path) -> None:
    from isc.core.descriptors import read_descriptors
    from isc.core.files import InputError

    x = np.random.default_rng(3).standard_normal((6, 8)).astype(np.float32)
    x[1, :3] = 3e38  # finite: its sum overflows float32, its values do not
    write_descriptors(tmp_path / "big.h5", [f"R{i}" for i in range(6)], x)
    assert np.array_equal(read_descriptors(tmp_path / "big.h5")[1], x)
    x[4, 2], x[5, 0] = np.inf, np.nan
    with pytest.raises(InputError, match=r"descriptor #4 \(R4\) has NaN or infinite values"):
        write_descriptors(tmp_path / "bad.h5", [f"R{i}" for i in range(6)], x)
