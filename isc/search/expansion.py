"""Neighbour expansion of descriptors: database-side augmentation (DBA) and α-query expansion (αQE).

Both replace a descriptor by ``normalize(x + Σ_j max(s_j, 0)^α · y_j)`` over its ``k`` nearest descriptors
``y_j`` of a pool (similarities ``s_j``): DBA with the pool the descriptors' own set (each one's own row left
out), αQE with the pool the references. The neighbours are exact and their order is defined: similarities
recomputed in float64, ties broken by the pool's row index, so every CPU and backend picks the same ones.
The ISC 2021 rules describe each query and each reference independently of the other references: DBA of the
references and αQE of the queries with the references break them; DBA of the training set (the pool of
negative-embedding subtraction) does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from isc.core.files import InputError
from isc.search.knn import check_pair, knn
from isc.search.vectors import l2_normalise_rows, prepare_descriptors

TIE_SLACK = 1e-5  # float32 inner products of unit vectors differ from exact ones by less than this


@dataclass(frozen=True)
class Expansion:
    """``k`` neighbours added to each descriptor, each weighted by its similarity to the power ``alpha``
    (0: a plain sum); checked once, here."""

    k: int = 2
    alpha: float = 3.0

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InputError(f"expansion k must be at least 1, got {self.k}")
        if not (math.isfinite(self.alpha) and 0 <= self.alpha <= 100):
            raise InputError(f"expansion alpha must be a finite number within 0..100, got {self.alpha}")

    def recorded(self) -> dict[str, object]:
        """The settings as a file's record of what made it quotes them."""
        return {"k": self.k, "alpha": self.alpha}


def nearest_neighbours(
    descriptors: np.ndarray, pool: np.ndarray, k: int, skip_self: bool = False, backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Each descriptor's ``k`` most similar rows of ``pool`` by inner product: (similarities float64 [n, k],
    indices int64 [n, k]), best first, equal similarities by increasing pool index.

    ``skip_self``: ``pool`` is ``descriptors`` itself and row i is not its own neighbour. The search is
    deepened until the k-th exact similarity is clear of every row left unseen, so ties at the cut are
    decided by index, not by the backend.
    """
    n = len(pool) - int(skip_self)
    if not 1 <= k <= n:
        raise InputError(f"expansion k must be between 1 and the {n} descriptors of the pool, got {k}")
    rows = np.arange(len(descriptors))[:, None]
    depth = min(len(pool), 2 * k + int(skip_self))
    while True:
        approximate, indices = knn(descriptors, pool, depth, "ip", backend)
        exact = np.einsum("nd,nkd->nk", descriptors.astype(np.float64), pool[indices].astype(np.float64))
        if skip_self:
            exact[indices == rows] = -np.inf  # its own row: never a neighbour, whatever its rank among ties
        order = np.lexsort((indices, -exact), axis=-1)[:, :k]
        best, chosen = np.take_along_axis(exact, order, 1), np.take_along_axis(indices, order, 1)
        # a row not fetched is at most the last fetched one's similarity: clear of the cut, the cut is exact
        if depth == len(pool) or (approximate[:, -1] < best[:, -1] - TIE_SLACK).all():
            return best, chosen
        depth = min(len(pool), 2 * depth)


def expand(
    descriptors: np.ndarray, pool: np.ndarray, expansion: Expansion, skip_self: bool = False, backend: str = "auto",
) -> np.ndarray:
    """``normalize(x + Σ_j max(s_j, 0)^α · pool_j)`` over each descriptor's ``expansion.k`` nearest rows of
    ``pool`` (:func:`nearest_neighbours`), float32 [n, d]; both arrays finite, L2-normalised on the way in."""
    descriptors = prepare_descriptors(descriptors, "expanded")
    pool = prepare_descriptors(pool, "neighbour pool")
    check_pair(descriptors, pool, "expanded and neighbour pool")
    similarities, indices = nearest_neighbours(descriptors, pool, expansion.k, skip_self, backend)
    weights = np.maximum(similarities, 0) ** expansion.alpha
    summed = descriptors.astype(np.float64) + np.einsum("nk,nkd->nd", weights, pool[indices].astype(np.float64))
    return l2_normalise_rows(summed.astype(np.float32))[0]


def database_side_augmentation(descriptors: np.ndarray, expansion: Expansion, backend: str = "auto") -> np.ndarray:
    """DBA: each descriptor plus its ``expansion.k`` nearest others of the same set, α-weighted, re-normalised."""
    return expand(descriptors, descriptors, expansion, skip_self=True, backend=backend)


def query_expansion(
    queries: np.ndarray, references: np.ndarray, expansion: Expansion, backend: str = "auto",
) -> np.ndarray:
    """αQE: each query plus its ``expansion.k`` nearest references, α-weighted, re-normalised."""
    return expand(queries, references, expansion, backend=backend)
