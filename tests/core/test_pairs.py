"""Pairs, the plain arrays that carry scored pairs without pandas: their order of ties, their columns, and the
group ranks and id codes the search and isc-find build on."""

import numpy as np
import pandas as pd
import pytest

from isc.core.pairs import Pairs, group_ranks, id_codes, pair_codes


def test_ranked_orders_by_score_then_query_then_reference_id_as_text():
    pairs = Pairs(["b", "a10", "a9", "a10", "c"], ["x", "y", "x", "x", "x"], [0.5, 0.5, 0.5, 0.5, 0.9])
    ranked = pairs.ranked()
    # "a10" sorts before "a9": ids are compared as text, as a table sorted by id orders them
    assert list(zip(ranked.query_id, ranked.reference_id, ranked.score, strict=True)) == [
        ("c", "x", 0.9), ("a10", "x", 0.5), ("a10", "y", 0.5), ("a9", "x", 0.5), ("b", "x", 0.5)]
    table = pairs.to_frame().sort_values(["score", "query_id", "reference_id"], ascending=[False, True, True])
    assert ranked.to_frame().values.tolist() == table.values.tolist()


def test_pairs_read_like_a_table_and_refuse_columns_of_different_lengths():
    pairs = Pairs(["q1", "q2", "q3"], ["r1", "r2", "r3"], np.array([0.1, 0.7, 0.4], np.float32), ["", "bytes", ""])
    assert len(pairs) == 3 and pairs.columns == ["query_id", "reference_id", "score", "exact"]
    assert pairs["score"].dtype == np.float64 and pairs["query_id"].dtype == object
    kept = pairs.take(pairs["score"] > 0.3)
    assert kept.query_id.tolist() == ["q2", "q3"] and kept.exact.tolist() == ["bytes", ""]
    back = Pairs.from_frame(pairs.to_frame())
    assert all((back[c] == pairs[c]).all() for c in pairs.columns)
    assert Pairs([], [], []).take(np.zeros(0, bool)).to_frame().columns.tolist() == ["query_id", "reference_id",
                                                                                      "score"]
    with pytest.raises(KeyError):
        Pairs(["q"], ["r"], [0.5])["exact"]
    with pytest.raises(ValueError, match="differ in length"):
        Pairs(["q1", "q2"], ["r1"], [0.5, 0.6])


def test_group_ranks_count_each_codes_earlier_rows_and_id_codes_keep_the_text_order():
    codes = np.random.default_rng(0).integers(0, 7, 200)
    assert (group_ranks(codes) == pd.Series(codes).groupby(codes).cumcount().to_numpy()).all()
    assert len(group_ranks(np.zeros(0, np.int64))) == 0
    ids = np.array(["b", "a10", "a9", "b", "a10"], dtype=object)
    assert id_codes(ids).tolist() == [2, 0, 1, 2, 0]


def test_pair_codes_are_equal_within_a_pair_and_ordered_by_query_then_reference() -> None:
    query, reference = np.array([2, 0, 2, 1, 0]), np.array([1, 3, 1, 0, 2])
    codes = pair_codes(query, reference)
    assert codes[0] == codes[2] and len(set(codes.tolist())) == 4
    order = np.argsort(codes, kind="stable")
    assert sorted(zip(query.tolist(), reference.tolist(), strict=True)) == list(
        zip(query[order].tolist(), reference[order].tolist(), strict=True))
