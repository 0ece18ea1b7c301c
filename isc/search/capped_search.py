"""The descriptor track's search as the organisers ran it: an exact L2 search keeping the ``10 × n_queries``
closest (query, reference) pairs over all queries (:func:`capped_l2_search`), scored by −squared distance
(:func:`descriptor_track_predictions`). :func:`isc.evaluate.metrics.score_descriptor_track` scores its output."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from isc.core.files import InputError
from isc.core.pairs import id_ranks
from isc.search.knn import knn

RESULTS_PER_QUERY = 10  # the organisers scored a descriptor submission on 10 × n_queries pairs


def capped_l2_search(
    query: np.ndarray,
    reference: np.ndarray,
    max_results: int,
    backend: str = "auto",
    quiet: bool = True,
    query_order: np.ndarray | None = None,
    reference_order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``max_results`` closest (query, reference) pairs over all queries, exactly, by squared L2 distance.

    Returns (query indices, reference indices, squared distances in float64), closest first. Each query's k
    nearest references are searched, k doubled for the queries whose k-th neighbour still lies within the
    cut: a query whose k-th distance exceeds the cut has no unseen pair inside it, so the cut is exact.
    The same on every CPU: the candidates' distances are recomputed in float64 (the search's float32 ones
    differ in the last bits between SIMD paths), and pairs at equal distance are ordered by
    ``query_order`` then ``reference_order`` (each a rank per row; default the row index), so which pairs
    tied at the cut are kept is defined.
    """
    nq, nr = len(query), len(reference)
    max_results = min(max_results, nq * nr)
    query_order = np.arange(nq) if query_order is None else np.asarray(query_order)
    reference_order = np.arange(nr) if reference_order is None else np.asarray(reference_order)
    # pairs within this much of the float32 cut may be the closest once distances are exact
    slack = 1e-5 * (_max_squared_norm(query) + _max_squared_norm(reference)) + 1e-12
    k = min(nr, 4 * -(-max_results // nq))  # 4 × the average per query: most queries need no second pass
    distances, indices = knn(query, reference, k, "l2", backend, quiet)
    rows = np.repeat(np.arange(nq), k)
    cols, flat = indices.ravel(), distances.ravel()
    kth = distances[:, -1].copy()
    searched = np.full(nq, k)
    while True:
        cut = np.partition(flat, max_results - 1)[max_results - 1] + slack
        short = np.flatnonzero((searched < nr) & (kth <= cut))
        if not len(short):
            break
        k = min(nr, 2 * int(searched[short].max()))
        more_distances, more_indices = knn(query[short], reference, k, "l2", backend, quiet)
        keep = ~np.isin(rows, short)
        rows = np.concatenate([rows[keep], np.repeat(short, k)])
        cols = np.concatenate([cols[keep], more_indices.ravel()])
        flat = np.concatenate([flat[keep], more_distances.ravel()])
        kth[short], searched[short] = more_distances[:, -1], k
    inside = np.flatnonzero(flat <= cut)
    rows, cols = rows[inside], cols[inside]
    exact = exact_squared_distances(query, reference, rows, cols)
    best = np.lexsort((reference_order[cols], query_order[rows], exact))[:max_results]
    return rows[best], cols[best], exact[best]


def _max_squared_norm(vectors: np.ndarray) -> float:
    return float(np.einsum("ij,ij->i", vectors, vectors).max()) if len(vectors) else 0.0


def exact_squared_distances(
    query: np.ndarray, reference: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 16384
) -> np.ndarray:
    """Squared L2 distance of each pair (``query[rows[i]]``, ``reference[cols[i]]``) in float64, summed in
    numpy's fixed pairwise order (no BLAS, no CPU-dependent reduction)."""
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), chunk):
        part = slice(start, start + chunk)
        difference = query[rows[part]].astype(np.float64) - reference[cols[part]].astype(np.float64)
        out[part] = np.square(difference).sum(axis=1)
    return out


def descriptor_track_predictions(
    query_ids: Sequence[str],
    query: np.ndarray,
    reference_ids: Sequence[str],
    reference: np.ndarray,
    max_results: int | None = None,
    backend: str = "auto",
    quiet: bool = True,
) -> pd.DataFrame:
    """The organisers' predictions for a descriptor submission: the ``max_results`` (default
    10 × n_queries) closest pairs, score = −squared L2 distance, best first; pairs at equal distance
    ordered by query id, then reference id (the organisers' cut leaves that order undefined)."""
    if max_results is None:
        max_results = RESULTS_PER_QUERY * len(query_ids)
    if max_results < 1:
        raise InputError(f"max_results must be at least 1, got {max_results}")
    rows, cols, distances = capped_l2_search(query, reference, max_results, backend, quiet,
                                             id_ranks(query_ids), id_ranks(reference_ids))
    return pd.DataFrame({
        "query_id": np.asarray(query_ids, dtype=object)[rows],
        "reference_id": np.asarray(reference_ids, dtype=object)[cols],
        "score": -distances,
    })
