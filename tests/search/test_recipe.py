"""Beyond SSCD's recipe: negative-embedding subtraction, several views per query, ensembles of descriptors."""


import numpy as np
import pytest
from conftest import cli, one_line_error

from isc.core.descriptors import read_descriptors, write_descriptors
from isc.core.files import InputError
from isc.core.tables import read_predictions
from isc.search.matching import search
from isc.search.negatives import subtract_negative_embeddings
from isc.search.normalisation import ScoreNorm, neighbour_bias
from isc.search.pca import apply_pca_file, concatenate_descriptors, learn_pca


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_negative_embedding_subtraction_removes_the_nearest_training_mean():
    x, training = _unit(6, 8, 0), _unit(40, 8, 1)
    out = subtract_negative_embeddings(x, training, beta=0.5, k=3)
    nearest = np.argsort(-(x @ training.T), axis=1)[:, :3]
    expected = x - 0.5 * training[nearest].mean(axis=1)
    np.testing.assert_allclose(out, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(subtract_negative_embeddings(x, training, beta=0.0, k=1), x, atol=1e-6)
    with pytest.raises(InputError, match="k must be between 1 and the 40"):
        subtract_negative_embeddings(x, training, beta=0.5, k=41)
    with pytest.raises(InputError, match="beta must be a finite number"):
        subtract_negative_embeddings(x, training, beta=float("nan"), k=1)


def test_views_of_a_query_score_each_pair_by_the_best_view():
    reference, training = _unit(20, 8, 2), _unit(30, 8, 3)
    views = np.vstack([reference[[4]] + 0.05 * _unit(1, 8, 4), _unit(2, 8, 5), reference[[7]] + 0.1 * _unit(1, 8, 6)])
    views /= np.linalg.norm(views, axis=1, keepdims=True)
    query_ids = ["Q00000", "Q00000", "Q00001", "Q00001"]
    reference_ids = [f"R{i:06d}" for i in range(20)]
    result = search(query_ids, views, reference_ids, reference, k=3, training=training,
                    norm=ScoreNorm(0.5, (1, 3)), quiet=True)
    assert not result.duplicated(["query_id", "reference_id"]).any()
    assert (result.groupby("query_id").size() == 3).all()
    assert list(result["score"]) == sorted(result["score"], reverse=True)
    # each view normalised by its own training neighbours, then the best view kept
    normalised = views @ reference.T - 0.5 * neighbour_bias(views, training)[:, None]
    for qid, rows in (("Q00000", [0, 1]), ("Q00001", [2, 3])):
        best = normalised[rows].max(axis=0)
        got = result[result["query_id"] == qid].set_index("reference_id")["score"]
        for rid, score in got.items():
            assert score == pytest.approx(best[reference_ids.index(rid)], abs=1e-5)
        assert got.index[0] == reference_ids[int(best.argmax())]


def test_repeated_query_ids_are_read_only_from_a_views_file(tmp_path):
    ids = ["Q00000", "Q00000", "Q00001"]
    write_descriptors(tmp_path / "plain.h5", ids, _unit(3, 8, 0), {"model": "m"})
    write_descriptors(tmp_path / "views.h5", ids, _unit(3, 8, 0), {"model": "m", "views_per_id": 2})
    with pytest.raises(InputError, match="Q00000 appears more than once"):
        read_descriptors(tmp_path / "plain.h5", "query", views=True)
    with pytest.raises(InputError, match="Q00000 appears more than once"):
        read_descriptors(tmp_path / "views.h5", "query")
    assert read_descriptors(tmp_path / "views.h5", "query", views=True)[0] == ids


def test_isc_search_reads_a_views_query_file(tmp_path):
    reference = _unit(12, 8, 1)
    write_descriptors(tmp_path / "reference.h5", [f"R{i:06d}" for i in range(12)], reference, {"model": "m"})
    views = np.vstack([reference[[2, 2, 5]], _unit(1, 8, 9)])
    write_descriptors(tmp_path / "query.h5", ["Q00000", "Q00000", "Q00001", "Q00001"], views,
                      {"model": "m", "views_per_id": 2})
    done = cli("search", "--query", tmp_path / "query.h5", "--reference", tmp_path / "reference.h5",
               "-o", tmp_path / "p.csv", "--k", "4", "--quiet")
    assert done.returncode == 0, done.stderr
    predictions = read_predictions(tmp_path / "p.csv")
    assert len(predictions) == 8 and not predictions.duplicated(["query_id", "reference_id"]).any()
    assert predictions.iloc[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_concatenated_ensemble_weights_each_models_similarity():
    a, b = _unit(5, 8, 0) * 3, _unit(5, 4, 1)
    joined = concatenate_descriptors([a, b], [1.0, 0.5])
    assert joined.shape == (5, 12)
    np.testing.assert_allclose(np.linalg.norm(joined, axis=1), 1, atol=1e-6)
    unit_a = a / np.linalg.norm(a, axis=1, keepdims=True)
    # inner products: (cos_a + 0.25 cos_b) / 1.25
    np.testing.assert_allclose(joined @ joined.T, (unit_a @ unit_a.T + 0.25 * (b @ b.T)) / 1.25, atol=1e-5)
    with pytest.raises(InputError, match="different numbers of rows"):
        concatenate_descriptors([a, b[:3]])
    with pytest.raises(InputError, match="at least 2 parts"):
        concatenate_descriptors([a])


def test_isc_pca_apply_subtracts_negative_embeddings(tmp_path):
    attrs = {"model": "m", "model_fingerprint": "ffff"}
    training, query = _unit(200, 16, 0), _unit(10, 16, 1)
    write_descriptors(tmp_path / "training.h5", [f"T{i:06d}" for i in range(200)], training, attrs)
    write_descriptors(tmp_path / "query.h5", [f"Q{i:05d}" for i in range(10)], query, attrs)
    pca = learn_pca(training, dim=8, attrs=attrs)
    pca.save(tmp_path / "pca.npz")
    command = ["apply", tmp_path / "pca.npz", tmp_path / "query.h5", "--negatives", tmp_path / "training.h5",
               "--neg-beta", "0.5", "--neg-k", "2", "--quiet", "-o"]
    done = cli("pca", *command, tmp_path / "out.h5")
    assert done.returncode == 0, done.stderr
    _, out, out_attrs = read_descriptors(tmp_path / "out.h5")
    expected = subtract_negative_embeddings(pca.apply(query), pca.apply(training), 0.5, 2)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert '"beta": 0.5' in out_attrs["negative_embeddings"] and out_attrs["model"] == "m"
    apply_pca_file(pca, tmp_path / "query.h5", tmp_path / "plain.h5")
    assert "negative_embeddings" not in read_descriptors(tmp_path / "plain.h5")[2]
    one_line_error(cli("pca", *command, tmp_path / "training.h5"), "isc-pca", "training.h5")
    one_line_error(cli("pca", *command[:-4], "--neg-beta", "-1", "-o", tmp_path / "x.h5"), "isc-pca apply",
                   "--neg-beta")
    one_line_error(cli("pca", *command[:-4], "--neg-beta", "nan", "-o", tmp_path / "x.h5"), "isc-pca apply",
                   "must be a finite number")
    assert not (tmp_path / "x.h5").exists()


def test_isc_pca_apply_of_several_files_subtracts_the_same_negatives_from_each(tmp_path):
    attrs = {"model": "m", "model_fingerprint": "ffff"}
    training, query, reference = _unit(200, 16, 0), _unit(10, 16, 1), _unit(30, 16, 2)
    write_descriptors(tmp_path / "training.h5", [f"T{i:06d}" for i in range(200)], training, attrs)
    write_descriptors(tmp_path / "query.h5", [f"Q{i:05d}" for i in range(10)], query, attrs)
    write_descriptors(tmp_path / "reference.h5", [f"R{i:06d}" for i in range(30)], reference, attrs)
    pca = learn_pca(training, dim=8, attrs=attrs)
    pca.save(tmp_path / "pca.npz")
    done = cli("pca", "apply", tmp_path / "pca.npz", tmp_path / "query.h5", tmp_path / "reference.h5", "--negatives",
               tmp_path / "training.h5", "--neg-beta", "0.5", "--neg-k", "2", "-o", tmp_path / "q8.h5",
               tmp_path / "r8.h5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{tmp_path / 'query.h5'} -> {tmp_path / 'q8.h5'}: 10 descriptors of dimension 8",
                                        f"{tmp_path / 'reference.h5'} -> {tmp_path / 'r8.h5'}: 30 descriptors of dimension 8"]
    for name, raw in (("q8", query), ("r8", reference)):
        expected = subtract_negative_embeddings(pca.apply(raw), pca.apply(training), 0.5, 2)
        np.testing.assert_allclose(read_descriptors(tmp_path / f"{name}.h5")[1], expected, atol=1e-5)
