"""The descriptor track's levers over arrays: DBA and αQE (isc.search.expansion), view pooling (isc.search.pooling),
the track's vectors (isc.search.descriptor_track)."""

from __future__ import annotations

import numpy as np
import pytest

from isc.core.files import InputError
from isc.search.descriptor_track import DescriptorTrack, track_descriptors
from isc.search.expansion import (
    Expansion,
    database_side_augmentation,
    nearest_neighbours,
    query_expansion,
)
from isc.search.negatives import NegativeEmbeddings
from isc.search.pooling import ViewPooling, pool_views


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# four references in the plane: 0 and 1 at 0° and 10°, 2 at 90°, 3 at 100°; known neighbour graph
ANGLES = np.radians([0.0, 10.0, 90.0, 100.0])
POINTS = unit(np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1))


def test_dba_of_a_known_neighbour_graph() -> None:
    out = database_side_augmentation(POINTS, Expansion(k=1, alpha=1.0), backend="faiss-cpu")
    cos10 = np.cos(np.radians(10))
    # each point's one neighbour is its pair, weighted by their similarity cos 10°
    expected = unit(np.stack([POINTS[0] + cos10 * POINTS[1], POINTS[1] + cos10 * POINTS[0],
                              POINTS[2] + cos10 * POINTS[3], POINTS[3] + cos10 * POINTS[2]]))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32


def test_alpha_zero_is_a_plain_sum_and_negative_similarities_weigh_nothing() -> None:
    opposite = unit(np.array([[1.0, 0.0], [-1.0, 0.1]]))
    out = database_side_augmentation(opposite, Expansion(k=1, alpha=0.0), backend="faiss-cpu")
    # their similarity is negative: max(s, 0)^0 = 0^0 = 1 in numpy, so alpha 0 adds the neighbour in full
    np.testing.assert_allclose(out, unit(opposite + opposite[::-1]), atol=1e-6)
    kept = database_side_augmentation(opposite, Expansion(k=1, alpha=2.0), backend="faiss-cpu")
    np.testing.assert_allclose(kept, opposite, atol=1e-6)


def test_query_expansion_adds_the_nearest_references() -> None:
    query = unit(np.array([[np.cos(np.radians(5)), np.sin(np.radians(5))]]))
    out = query_expansion(query, POINTS, Expansion(k=2, alpha=3.0), backend="faiss-cpu")
    s = np.cos(np.radians(5)) ** 3
    np.testing.assert_allclose(out, unit(query + s * POINTS[0] + s * POINTS[1]), atol=1e-6)


@pytest.mark.parametrize("backend", ["faiss-cpu", "torch"])
def test_ties_are_broken_by_index_whatever_the_backend(backend: str) -> None:
    # six identical references: every one ties with every other; the nearest are the lowest indices
    pool = unit(np.ones((6, 4)))
    similarities, indices = nearest_neighbours(pool, pool, 2, skip_self=True, backend=backend)
    assert indices.tolist() == [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1], [0, 1]]
    np.testing.assert_allclose(similarities, 1.0)
    reordered = pool[::-1].copy()
    _, again = nearest_neighbours(reordered[:1], reordered, 3, backend=backend)
    assert again.tolist() == [[0, 1, 2]]


def test_expansion_refuses_bad_input() -> None:
    bad = POINTS.copy()
    bad[2, 0] = np.nan
    with pytest.raises(InputError, match="#2 has NaN"):
        database_side_augmentation(bad, Expansion(k=1))
    with pytest.raises(InputError, match="between 1 and the 3"):
        database_side_augmentation(POINTS, Expansion(k=4))
    with pytest.raises(InputError, match="dimension mismatch"):
        query_expansion(POINTS, unit(np.ones((3, 3))), Expansion(k=1))
    with pytest.raises(InputError, match="k must be at least 1"):
        Expansion(k=0)
    with pytest.raises(InputError, match="alpha"):
        Expansion(alpha=float("inf"))
    with pytest.raises(InputError, match="no expanded descriptors"):
        query_expansion(np.zeros((0, 2), np.float32), POINTS, Expansion(k=1))


def test_pooling_of_known_views() -> None:
    views = unit(np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0], [0.6, -0.8]]))
    ids, mean = pool_views(["Q2", "Q1", "Q2", "Q1"], views)
    assert ids == ["Q2", "Q1"]  # in order of each id's first row
    np.testing.assert_allclose(mean, unit(np.array([[1.6, 0.8], [0.6, 0.2]])), atol=1e-6)
    _, gem = pool_views(["Q2", "Q1", "Q2", "Q1"], views, ViewPooling("gem", p=3.0))
    # signed power mean per dimension: Q1's second one is mean(1, -0.512) = 0.244, its cube root
    first = np.cbrt([(1 + 0.6**3) / 2, (0 + 0.8**3) / 2])
    second = np.cbrt([(0 + 0.6**3) / 2, (1 - 0.8**3) / 2])
    np.testing.assert_allclose(gem, unit(np.array([first, second])), atol=1e-6)
    _, gem1 = pool_views(["Q2", "Q1", "Q2", "Q1"], views, ViewPooling("gem", p=1.0))
    np.testing.assert_allclose(gem1, mean, atol=1e-6)


def test_pooling_refuses_bad_input() -> None:
    with pytest.raises(InputError, match="#1 has NaN"):
        pool_views(["a", "b"], np.array([[1.0, 0.0], [np.inf, 0.0]], np.float32))
    with pytest.raises(InputError, match="3 ids for 2"):
        pool_views(["a", "b", "c"], POINTS[:2])
    with pytest.raises(InputError, match="unknown view pooling 'max'"):
        ViewPooling("max")
    with pytest.raises(InputError, match="no view descriptors"):
        pool_views([], np.zeros((0, 2), np.float32))


def test_track_descriptors_pool_then_subtract_and_refuse_what_they_cannot_do() -> None:
    track = DescriptorTrack(ViewPooling("mean"), NegativeEmbeddings(0.5, 1))
    ids, out = track_descriptors(["Q1", "Q1"], POINTS[:2], POINTS[2:], track)
    pooled = unit(POINTS[:1] + POINTS[1:2])
    nearest = POINTS[2]  # 90° is nearer to the pooled 5° than 100° is
    np.testing.assert_allclose(out, unit(pooled - 0.5 * nearest), atol=1e-6)
    assert ids == ["Q1"]
    with pytest.raises(InputError, match="several views of an image and no pooling"):
        track_descriptors(["Q1", "Q1"], POINTS[:2], None, DescriptorTrack())
    with pytest.raises(InputError, match="needs the training descriptors"):
        track_descriptors(["Q1"], POINTS[:1], None, DescriptorTrack(negatives=NegativeEmbeddings()))
