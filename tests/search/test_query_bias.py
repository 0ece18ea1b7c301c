"""The query bias of a pair (isc.search.normalisation.pair_query_biases): the training bias of the query view that
gave the pair its normalised score, as the search scored it, for the calibration to weigh against the score."""

import numpy as np
import pytest

from isc.core.files import InputError
from isc.search.matching import SearchOptions, search
from isc.search.normalisation import ScoreNorm, neighbour_bias, pair_query_biases


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("reference_views", [1, 2])
def test_each_pairs_bias_is_that_of_the_view_that_scored_it_in_the_search(reference_views):
    rng = np.random.default_rng(5)
    query_ids = [q for q in ("q0", "q1", "q2") for _ in range(4)]  # 4 views each
    queries, training = _unit(rng, 12), _unit(rng, 30)
    reference_ids = [r for r in ("r0", "r1", "r2", "r3", "r4") for _ in range(reference_views)]
    references = _unit(rng, len(reference_ids))
    norm = ScoreNorm(beta=0.7)
    predictions = search(query_ids, queries, reference_ids, references, SearchOptions(k=3, norm=norm),
                         training=training, quiet=True)
    biases = pair_query_biases(list(predictions["query_id"]), list(predictions["reference_id"]),
                               (query_ids, queries), (reference_ids, references), training, norm)
    view_bias = neighbour_bias(queries, training, norm.neighbors, norm.agg)
    for (query, reference, score), bias in zip(predictions.itertuples(index=False), biases, strict=True):
        rows = [i for i, q in enumerate(query_ids) if q == query]
        columns = [j for j, r in enumerate(reference_ids) if r == reference]
        scores = queries[rows] @ references[columns].T - norm.beta * view_bias[rows, None]
        best = np.unravel_index(np.argmax(scores), scores.shape)
        assert scores[best] == pytest.approx(score, abs=1e-5)  # the search's own score, from this view
        assert bias == pytest.approx(view_bias[rows[best[0]]])


def test_a_normalisation_of_the_references_too_has_no_query_bias():
    rng = np.random.default_rng(6)
    with pytest.raises(InputError, match="references are not normalised"):
        pair_query_biases(["q"], ["r"], (["q"], _unit(rng, 1)), (["r"], _unit(rng, 1)), _unit(rng, 12),
                          ScoreNorm(references=True))
