"""The global cuts give one answer on every machine: pairs tied at the descriptor track's cut (10 × queries)
and at the matching track's (500,000 rows) are kept by query id, then reference id, whatever the search's
order, backend or thread count."""

import faiss
import numpy as np
import pytest

from isc.evaluate.metrics import evaluate
from isc.search.capped_search import capped_l2_search, descriptor_track_predictions
from isc.search.matching import top_pairs


def binary_descriptors(n: int, bits: int, seed: int) -> np.ndarray:
    """PDQ-like 0/1 descriptors: their squared distances are small integers, so many pairs tie."""
    return np.random.default_rng(seed).integers(0, 2, size=(n, bits)).astype(np.float32)


def rule_cut(query_ids, query, reference_ids, reference, max_results):
    """The rule, written independently: every pair's exact distance, sorted by (distance, query id, reference id)."""
    pairs = [(float(((query[q].astype(np.float64) - reference[r]) ** 2).sum()), query_ids[q], reference_ids[r])
             for q in range(len(query)) for r in range(len(reference))]
    return sorted(pairs)[:max_results]


@pytest.fixture(scope="module")
def tied_set():
    query, reference = binary_descriptors(30, 16, 1), binary_descriptors(80, 16, 2)
    query_ids = [f"Q{i:05d}" for i in range(30)]
    reference_ids = [f"R{i:06d}" for i in range(80)]
    return query_ids, query, reference_ids, reference


def as_triples(predictions):
    return list(zip(-predictions.score, predictions.query_id, predictions.reference_id, strict=True))


def test_ties_at_the_cut_go_by_query_then_reference_id(tied_set):
    query_ids, query, reference_ids, reference = tied_set
    expected = rule_cut(query_ids, query, reference_ids, reference, 300)
    distances = [d for d, _, _ in rule_cut(query_ids, query, reference_ids, reference, 2400)]
    assert distances[299] == distances[300], "the set must tie at the cut for this test to mean anything"
    predictions = descriptor_track_predictions(query_ids, query, reference_ids, reference, 300, backend="faiss-cpu")
    assert as_triples(predictions) == expected


@pytest.mark.parametrize("backend", ["faiss-cpu", "torch"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_cut_does_not_depend_on_file_order_backend_or_threads(tied_set, backend, seed):
    """Shuffling both files' rows, another backend and another thread count keep the same pairs and scores."""
    query_ids, query, reference_ids, reference = tied_set
    expected = rule_cut(query_ids, query, reference_ids, reference, 300)
    rng = np.random.default_rng(seed)
    q_order, r_order = rng.permutation(len(query)), rng.permutation(len(reference))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1 + seed)
    try:
        predictions = descriptor_track_predictions(
            [query_ids[i] for i in q_order], query[q_order], [reference_ids[i] for i in r_order],
            reference[r_order], 300, backend=backend)
    finally:
        faiss.omp_set_num_threads(threads)
    assert as_triples(predictions) == expected
    ground_truth = predictions.iloc[::7][["query_id", "reference_id"]].drop_duplicates("query_id")
    shuffled = predictions.sample(frac=1, random_state=seed)
    assert evaluate(shuffled, ground_truth).muap == evaluate(predictions, ground_truth).muap


def test_distances_are_exact_float64(tied_set):
    """Scores are the float64 squared distances, not the search's float32 ones."""
    _, query, _, reference = tied_set
    rng = np.random.default_rng(3)
    query, reference = query + rng.normal(0, 1e-3, query.shape).astype(np.float32), reference
    rows, cols, distances = capped_l2_search(query, reference, 100, backend="faiss-cpu")
    assert distances.dtype == np.float64
    exact = ((query[rows].astype(np.float64) - reference[cols].astype(np.float64)) ** 2).sum(1)
    np.testing.assert_array_equal(distances, exact)
    assert np.all(np.diff(distances) >= 0)


def test_matching_cut_keeps_tied_pairs_by_query_then_reference_id():
    """Per-query results with many equal scores, cut to fewer rows than they hold, in any row order."""
    rng = np.random.default_rng(4)
    query_ids, reference_ids = [f"Q{i:05d}" for i in range(20)], [f"R{i:06d}" for i in range(50)]
    scores = rng.integers(0, 4, size=(20, 5)).astype(np.float32) / 4
    indices = np.stack([rng.choice(50, 5, replace=False) for _ in range(20)])
    expected = sorted((-float(scores[q, j]), query_ids[q], reference_ids[indices[q, j]])
                      for q in range(20) for j in range(5))[:37]
    assert expected[36][0] == sorted(-s for s in scores.ravel())[37], "the cut must fall inside a tie"
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(20)
        pairs = top_pairs([query_ids[i] for i in order], reference_ids, scores[order], indices[order], 37)
        assert list(zip(-pairs.score, pairs.query_id, pairs.reference_id, strict=True)) == expected
