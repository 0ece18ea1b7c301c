"""The best view of each (query, reference) pair, kept without pandas: the same rows, in the same order, as the
table operations it replaced (first row of each pair, each query's k first, the best max_results)."""

import numpy as np
import pytest

from isc.core.pairs import Pairs
from isc.search.matching import best_view_pairs, top_pairs


@pytest.mark.parametrize("k, max_results", [(1, 1000), (3, 1000), (3, 17), (10, 5)])
def test_best_view_pairs_keeps_what_the_table_operations_kept(k, max_results):
    rng = np.random.default_rng(k + max_results)
    query_ids = [f"Q{i // 6:05d}" for i in range(60)]  # 10 queries of 6 views each
    reference_ids = [f"R{i:06d}" for i in range(25)]
    scores = rng.integers(0, 5, size=(60, 8)).astype(np.float32) / 4  # many ties
    indices = np.stack([rng.choice(25, 8, replace=False) for _ in range(60)])
    ranked = top_pairs(query_ids, reference_ids, scores, indices, scores.size)
    table = ranked.to_frame()
    expected = table.drop_duplicates(["query_id", "reference_id"], keep="first")
    expected = expected[expected.groupby("query_id", sort=False).cumcount() < k].head(max_results)
    got = best_view_pairs(ranked, k, max_results)
    assert isinstance(got, Pairs) and got.to_frame().values.tolist() == expected.values.tolist()
    assert len(got) == min(max_results, 10 * k)
