"""isc.search.matching and isc-search: backends against brute force, normalisation, approximate index, kNN graph, CLI."""


import numpy as np
import pandas as pd
import pytest
from conftest import cli, one_line_error

from isc.core.descriptors import write_descriptors
from isc.core.files import InputError, SettingError
from isc.core.tables import read_predictions
from isc.evaluate.metrics import evaluate
from isc.search.knn import knn, knn_torch
from isc.search.knn_graph import knn_graph, write_knn_graph
from isc.search.matching import search
from isc.search.normalisation import ScoreNorm, neighbour_bias, parse_neighbour_range


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(query, reference, k, metric="ip"):
    """The numpy reference: full score matrix, full sort."""
    if metric == "ip":
        scores = query.astype(np.float64) @ reference.T.astype(np.float64)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    else:
        scores = ((query[:, None, :].astype(np.float64) - reference[None].astype(np.float64)) ** 2).sum(axis=2)
        order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    return unit(rng, 150, 24), unit(rng, 3000, 24)


def ids(prefix, n):
    return [f"{prefix}{i:0{5 if prefix == 'Q' else 6}d}" for i in range(n)]


# ------------------------------------------------------------------------------------------ exact kNN


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("backend", ["faiss-cpu", "torch"])
def test_knn_backends_match_brute_force(vectors, metric, backend):
    query, reference = vectors
    scale = 7.0 if metric == "l2" else 1.0  # L2 on unnormalised vectors, as the descriptor track is scored
    expected_scores, expected = brute_force(query * scale, reference * scale, 9, metric)
    scores, indices = knn(query * scale, reference * scale, 9, metric=metric, backend=backend)
    assert scores.dtype == np.float32 and indices.dtype == np.int64 and indices.shape == (150, 9)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("scale", [1.0, 5000.0, 1e-4])
def test_torch_half_precision_path_blocks_and_grouped_topk(vectors, metric, scale):
    """The GPU code path (float16 selection, scaling, exact re-scoring, reference blocks) run on the CPU."""
    query, reference = vectors
    expected_scores, expected = brute_force(query * scale, reference * scale, 5, metric)
    # 3000 references in blocks of 1100 (the last one partial), 300 queries x references per score block
    scores, indices = knn_torch(query * scale, reference * scale, 5, metric, device="cpu", half=True,
                                reference_block=1100, block_elements=300 * 1100)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5 * scale**2)


def test_knn_k_larger_than_references_warns_and_clamps(vectors):
    query, reference = vectors
    with pytest.warns(UserWarning, match="larger than the 4 references"):
        scores, indices = knn(query, reference[:4], 10, backend="faiss-cpu")
    assert indices.shape == (150, 4) and set(indices[0]) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("query_shape", "reference_shape", "message"),
    [((5, 8), (6, 9), "dimension mismatch"), ((0, 8), (6, 8), "no query descriptors"),
     ((5, 8), (0, 8), "no reference descriptors")],
)
def test_knn_bad_shapes(query_shape, reference_shape, message):
    with pytest.raises(InputError, match=message):
        knn(np.ones(query_shape, np.float32), np.ones(reference_shape, np.float32), 3)


def test_unknown_backend_and_unavailable_gpu():
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(InputError, match="unknown backend"):
        knn(x, x, 1, backend="cuda")
    with pytest.raises(InputError, match="faiss-gpu"):
        knn(x, x, 1, backend="faiss-gpu")  # CI's faiss-cpu has no GPU support


# ------------------------------------------------------------------------------------ normalisation


def test_neighbour_bias_matches_numpy(vectors):
    query, training = vectors
    sorted_sims = -np.sort(-(query @ training.T), axis=1)
    np.testing.assert_allclose(neighbour_bias(query, training, (1, 3), "mean"), sorted_sims[:, :3].mean(1), atol=1e-6)
    np.testing.assert_allclose(neighbour_bias(query, training, (10, 10), "mean"), sorted_sims[:, 9], atol=1e-6)
    np.testing.assert_allclose(neighbour_bias(query, training, (2, 5), "min"), sorted_sims[:, 4], atol=1e-6)


def test_search_with_normalisation_matches_brute_force():
    rng = np.random.default_rng(1)
    query, reference, training = unit(rng, 40, 16), unit(rng, 500, 16), unit(rng, 300, 16)
    beta, k = 1.5, 4
    train_sims = -np.sort(-(np.vstack([query, reference]) @ training.T), axis=1)
    bias_q, bias_r = train_sims[:40, 1:4].mean(1), train_sims[40:, 1:4].mean(1)  # neighbours 2:4
    for normalize_references in (False, True):
        scores = query @ reference.T - beta * bias_q[:, None]
        if normalize_references:
            scores -= beta * bias_r[None, :]
        best = np.argsort(-scores, axis=1)[:, :k]
        expected = pd.DataFrame({"query_id": np.repeat(ids("Q", 40), k), "reference_id": np.array(ids("R", 500))[best.ravel()],
                                 "score": np.take_along_axis(scores, best, 1).ravel()})
        expected = expected.sort_values("score", ascending=False).head(100).reset_index(drop=True)
        got = search(ids("Q", 40), query, ids("R", 500), reference, k=k, max_results=100, training=training,
                     norm=ScoreNorm(beta, (2, 4), references=normalize_references), backend="faiss-cpu", quiet=True)
        pd.testing.assert_frame_equal(got[["query_id", "reference_id"]], expected[["query_id", "reference_id"]])
        np.testing.assert_allclose(got["score"], expected["score"], atol=1e-5)


def hub_scenario(seed=0, d=32, n_ref=400, n_train=400, n_query=200):
    """Descriptors whose density varies: a fifth of the images lie in 4 tight clusters ("hubs").

    Non-matching queries in a hub have high raw similarities to hub references, above those of true
    copies elsewhere; a training set drawn from the same distribution reveals the local density.
    """
    rng = np.random.default_rng(seed)
    centres = unit(rng, 4, d)

    def draw(n):
        x = unit(rng, n, d)
        in_hub = rng.random(n) < 0.2
        x[in_hub] = centres[rng.integers(0, 4, in_hub.sum())] + 0.35 * x[in_hub]
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    reference, training, query = draw(n_ref), draw(n_train), draw(n_query)
    matched = np.arange(0, n_query, 2)  # even queries are edited copies of references
    sources = rng.choice(n_ref, len(matched), replace=False)
    copies = reference[sources] + 0.9 / np.sqrt(d) * rng.standard_normal((len(matched), d))
    query[matched] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    ground_truth = pd.DataFrame({"query_id": ids("Q", n_query), "reference_id": ""})
    ground_truth.loc[matched, "reference_id"] = np.array(ids("R", n_ref))[sources]
    return query, reference, training, ground_truth


def test_normalisation_raises_muap_when_density_varies():
    query, reference, training, ground_truth = hub_scenario()
    args = (ids("Q", len(query)), query, ids("R", len(reference)), reference)
    raw = evaluate(search(*args, k=5, backend="faiss-cpu", quiet=True), ground_truth).muap
    normalised = evaluate(search(*args, k=5, training=training, backend="faiss-cpu", quiet=True), ground_truth).muap
    both = evaluate(search(*args, k=5, training=training, norm=ScoreNorm(references=True), backend="faiss-cpu",
                           quiet=True), ground_truth).muap
    assert normalised > raw + 0.05, (raw, normalised)
    assert both > raw + 0.05, (raw, both)


def test_search_max_results_and_unnormalised_input(vectors):
    query, reference = vectors
    result = search(ids("Q", 150), query, ids("R", 3000), reference, k=10, max_results=1000, quiet=True)
    longer = search(ids("Q", 150), query, ids("R", 3000), reference, k=10, max_results=1500, quiet=True)
    assert len(result) == 1000 and result["score"].is_monotonic_decreasing
    pd.testing.assert_frame_equal(result, longer.head(1000))  # the global best 1000 of 1500
    assert not result.duplicated(["query_id", "reference_id"]).any()
    with pytest.warns(UserWarning, match="150 of 150 query descriptors are not L2-normalised"):
        scaled = search(ids("Q", 150), query * 3, ids("R", 3000), reference, k=10, max_results=1000, quiet=True)
    np.testing.assert_allclose(scaled["score"], result["score"], atol=1e-6)


def test_search_bad_inputs(vectors):
    query, reference = vectors
    wide = np.hstack([reference, reference]) / np.sqrt(2)
    with pytest.raises(InputError, match="dimension mismatch"):
        search(ids("Q", 150), query, ids("R", 3000), wide, quiet=True)
    with pytest.raises(InputError, match="query and training descriptors have 24 and 48"):
        search(ids("Q", 150), query, ids("R", 3000), reference, training=wide, quiet=True)
    with pytest.raises(InputError, match="NaN"):
        search(ids("Q", 150), np.where(np.arange(24) == 3, np.nan, query), ids("R", 3000), reference, quiet=True)
    with pytest.raises(InputError, match="needs at least 20 training descriptors"):
        search(ids("Q", 150), query, ids("R", 3000), reference, training=reference[:10],
               norm=ScoreNorm(neighbors=(10, 20)), quiet=True)
    with pytest.raises(SettingError, match="^norm_beta must be a finite number"):
        ScoreNorm(float("nan"))
    with pytest.raises(SettingError, match="^norm_neighbors must be a range A:B .* got 3:1$"):
        ScoreNorm(neighbors=(3, 1))
    with pytest.raises(SettingError, match="^norm_agg must be one of mean, min, got 'max'"):
        ScoreNorm(agg="max")
    for text in ("3:1", "0:2", "a:b", "1:2:3"):
        with pytest.raises(SettingError, match="^norm_neighbors must be a range"):
            parse_neighbour_range(text)
    assert parse_neighbour_range("10") == (10, 10) and parse_neighbour_range("1:3") == (1, 3)


# ------------------------------------------------------------------------------- approximate search


def test_approximate_index_recall(vectors):
    query, reference = vectors
    exact = search(ids("Q", 150), query, ids("R", 3000), reference, k=10, quiet=True)
    # probing every list of an IVF-Flat index is an exact search
    full = search(ids("Q", 150), query, ids("R", 3000), reference, k=10, index="IVF8,Flat", nprobe=8, quiet=True)
    assert full.attrs["recall"] == 1.0
    pd.testing.assert_frame_equal(full[["query_id", "reference_id"]], exact[["query_id", "reference_id"]])
    one = search(ids("Q", 150), query, ids("R", 3000), reference, k=10, index="IVF8,Flat", nprobe=1, quiet=True)
    pq = search(ids("Q", 150), query, ids("R", 3000), reference, k=10, index="IVF8,PQ4x4", nprobe=8, quiet=True)
    assert 0.1 < one.attrs["recall"] < 0.9 and 0.05 < pq.attrs["recall"] < 1.0
    with pytest.raises(InputError, match="index 'IVF8,Nonsense'"):
        search(ids("Q", 150), query, ids("R", 3000), reference, index="IVF8,Nonsense", quiet=True)


# ------------------------------------------------------------------------------------------ kNN graph


def test_knn_graph_and_its_files(vectors, tmp_path):
    _, descriptors = vectors
    descriptors = np.vstack([descriptors[:200], descriptors[:1]])  # row 200 duplicates row 0
    neighbours, similarities = knn_graph(descriptors, 6, backend="faiss-cpu")
    sims = descriptors @ descriptors.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :6]
    assert neighbours.shape == (201, 6) and not (neighbours == np.arange(201)[:, None]).any()
    assert neighbours[0, 0] == 200 and neighbours[200, 0] == 0
    same_point = np.where(neighbours == 200, 0, neighbours), np.where(expected == 200, 0, expected)  # a tie
    np.testing.assert_array_equal(*same_point)
    np.testing.assert_allclose(similarities, np.take_along_axis(sims, neighbours, 1), atol=1e-6)

    paths = write_knn_graph(tmp_path, "refs", ids("R", 201), descriptors, neighbours, similarities)
    graph = np.load(paths[0])
    assert graph["ids"][5].decode() == "R000005"
    np.testing.assert_array_equal(graph["neighbours"], neighbours)
    features = np.fromfile(tmp_path / "features" / "refs.bin", dtype=np.float32).reshape(-1, 24)
    np.testing.assert_array_equal(features, descriptors)
    data = np.load(tmp_path / "knns" / "refs" / "faiss_k_6.npz")["data"]
    assert data.shape == (201, 2, 6) and data.dtype == np.float32
    np.testing.assert_array_equal(data[:, 0, 0], np.arange(201))  # the point itself first, at distance 0
    np.testing.assert_array_equal(data[:, 0, 1:], neighbours[:, :5])
    np.testing.assert_allclose(data[:, 1, 1:], 1 - np.clip(similarities[:, :5], 0, 1), atol=1e-6)
    assert data[:, 1].min() >= 0 and data[:, 1].max() <= 1


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_search_and_errors(vectors, tmp_path):
    query, reference = vectors
    write_descriptors(tmp_path / "q.h5", ids("Q", 150), query)
    write_descriptors(tmp_path / "r.h5", ids("R", 3000), reference)
    write_descriptors(tmp_path / "t.h5", ids("T", 500), reference[:500] * 2)
    write_descriptors(tmp_path / "wide.h5", ids("R", 10), np.ones((10, 25), np.float32))
    done = cli("search", "--query", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--training", tmp_path / "t.h5",
                         "-o", tmp_path / "p.csv", "--k", 3, "--norm-neighbors", "2:3", "--norm-beta", 2, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "500 of 500 training descriptors are not L2-normalised" in done.stderr  # a one-line warning
    predictions = read_predictions(tmp_path / "p.csv")
    bias = neighbour_bias(query, reference[:500], (2, 3))
    expected = search(ids("Q", 150), query, ids("R", 3000), reference, k=3, training=reference[:500],
                      norm=ScoreNorm(2, (2, 3)), quiet=True)
    assert len(predictions) == 450 and predictions["score"].is_monotonic_decreasing
    pd.testing.assert_frame_equal(predictions[["query_id", "reference_id"]], expected[["query_id", "reference_id"]])
    np.testing.assert_allclose(predictions["score"], expected["score"], atol=1e-6)
    assert predictions["score"].max() <= 1 - 2 * bias.min() + 1e-5

    bad = cli("search", "--query", tmp_path / "q.h5", "--reference", tmp_path / "wide.h5", "-o", tmp_path / "bad.csv")
    one_line_error(bad, "isc-search", "dimension mismatch")
    assert not (tmp_path / "bad.csv").exists()
    swapped = cli("search", "--query", tmp_path / "r.h5", "--reference", tmp_path / "q.h5", "-o", tmp_path / "x.csv",
                            "--phase", 1)
    one_line_error(swapped, "isc-search", "not a query id", "a phase applies the competition")
    missing = cli("search", "--reference", tmp_path / "r.h5", "-o", tmp_path / "x.csv")
    one_line_error(missing, "isc-search", "--query and --reference are required")


def test_cli_knn_graph(vectors, tmp_path):
    _, reference = vectors
    write_descriptors(tmp_path / "refs.h5", ids("R", 300), reference[:300])
    done = cli("search", "--knn-graph", tmp_path / "refs.h5", "-o", tmp_path / "graph", "--k", 8, "--quiet")
    assert done.returncode == 0, done.stderr
    graph = np.load(tmp_path / "graph" / "refs.npz")
    neighbours, _ = knn_graph(reference[:300], 8)
    np.testing.assert_array_equal(graph["neighbours"], neighbours)
    assert np.load(tmp_path / "graph" / "knns" / "refs" / "faiss_k_8.npz")["data"].shape == (300, 2, 8)


def test_cli_help_states_memory():
    done = cli("search", "--help")
    assert done.returncode == 0 and "1M x 256 = 1 GB" in done.stdout and "--norm-neighbors" in done.stdout
