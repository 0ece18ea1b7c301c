"""PCA-whitening: whitened statistics, saved and reloaded identically, files checked against the model."""


import warnings

import numpy as np
import pytest
from conftest import cli

from isc.cli.pca import main
from isc.core.descriptors import read_descriptors, write_descriptors
from isc.core.files import InputError
from isc.search.pca import PCAWhitening, learn_pca


def _correlated(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * np.linspace(5, 0.1, d)) @ rng.normal(size=(d, d)) + 3


def test_whitening_decorrelates_and_normalises():
    train = _correlated(4000, 24, 0)
    pca = learn_pca(train, dim=8)
    projected = (train - pca.mean) @ pca.matrix()
    np.testing.assert_allclose(np.cov(projected, rowvar=False), np.eye(8), atol=0.02)
    assert (np.diff(pca.eigenvalues) <= 0).all()
    out = pca.apply(_correlated(50, 24, 1))
    assert out.shape == (50, 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    plain = learn_pca(train, dim=8, whiten=False)
    assert np.var((train - plain.mean) @ plain.matrix(), axis=0)[0] > 10


def test_saved_pca_applies_identically(tmp_path):
    train = _correlated(500, 16, 0)
    pca = learn_pca(train, dim=4, attrs={"model": "m"})
    pca.save(tmp_path / "pca.npz")
    loaded = PCAWhitening.load(tmp_path / "pca.npz")
    queries = _correlated(20, 16, 2)
    np.testing.assert_array_equal(loaded.apply(queries), pca.apply(queries))
    assert loaded.attrs["model"] == "m" and loaded.attrs["n_train"] == 500


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="cannot learn 20 dimensions"):
        learn_pca(_correlated(10, 16, 0), dim=20)
    pca = learn_pca(_correlated(100, 16, 0), dim=4)
    with pytest.raises(InputError, match="do not fit"):
        pca.apply(np.zeros((3, 8)))
    (tmp_path / "junk.npz").write_text("junk")
    with pytest.raises(InputError, match="not a PCA file"):
        PCAWhitening.load(tmp_path / "junk.npz")


def test_cli_learn_and_apply_refuses_another_model(tmp_path, capsys):
    attrs = {"model": "a", "model_fingerprint": "aaaa"}
    write_descriptors(tmp_path / "training.h5", [f"T{i:06d}" for i in range(300)], _correlated(300, 32, 0), attrs)
    query_ids = [f"Q{i:05d}" for i in range(10)]
    write_descriptors(tmp_path / "query.h5", query_ids, _correlated(10, 32, 1), attrs)
    write_descriptors(tmp_path / "other.h5", query_ids, _correlated(10, 32, 1),
                      {"model": "b", "model_fingerprint": "bbbb"})
    learn = cli("pca", "learn", tmp_path / "training.h5", "--dim", "16", "-o", tmp_path / "pca.npz")
    assert learn.returncode == 0, learn.stderr
    assert main(["apply", str(tmp_path / "pca.npz"), str(tmp_path / "query.h5"), "-o",
                 str(tmp_path / "query_pca.h5")]) == 0
    ids, whitened, out_attrs = read_descriptors(tmp_path / "query_pca.h5", split="query")
    assert ids == query_ids and whitened.shape == (10, 16) and out_attrs["dimension"] == 16
    expected = PCAWhitening.load(tmp_path / "pca.npz").apply(read_descriptors(tmp_path / "query.h5")[1])
    np.testing.assert_allclose(whitened, expected, atol=1e-6)
    capsys.readouterr()
    assert main(["apply", str(tmp_path / "pca.npz"), str(tmp_path / "other.h5"), "-o",
                 str(tmp_path / "x.h5")]) == 2
    assert "PCA was learnt on descriptors of a" in capsys.readouterr().err
    assert main(["apply", str(tmp_path / "pca.npz"), str(tmp_path / "query_pca.h5"), "-o",
                 str(tmp_path / "x.h5")]) == 2
    assert "already PCA-whitened" in capsys.readouterr().err


def test_a_descriptor_overflowing_when_whitened_is_refused_without_a_numpy_warning():
    rng = np.random.default_rng(0)
    pca = learn_pca(rng.standard_normal((50, 16)).astype(np.float32), dim=4)
    # each coordinate float32's largest, signed along the first whitened axis: that coordinate overflows
    huge = np.tile(np.finfo(np.float32).max * np.sign(pca.matrix()[:, 0]), (3, 1)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's RuntimeWarning would fail here, before the one-line error
        with pytest.raises(InputError, match="descriptor #0 overflows float32 when whitened"):
            pca.apply(huge)
        with pytest.raises(InputError, match="variance overflows float32"):
            learn_pca(rng.standard_normal((50, 16)).astype(np.float32) * 1e37, dim=4)
        whitened = pca.apply(np.full((3, 16), 1e38, np.float32))  # finite once whitened, its norm is not
    assert np.isfinite(whitened).all()
    np.testing.assert_allclose(np.linalg.norm(whitened, axis=1), 1, rtol=1e-6)
