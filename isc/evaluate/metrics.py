"""The competition's metric: micro-average precision (µAP) and recall at 90% precision, for both tracks.

Computed as the organisers' scorer (facebookresearch/isc2021, ``isc/metrics.py``) does it:
all predictions of all queries are ranked together by decreasing score, with the wrong pairs
placed before the right ones on equal scores (the worst case, so a constant score cannot help);
µAP = Σ (recall_i − recall_{i−1}) × precision_i with no interpolation, recall's denominator
being the number of ground-truth pairs. A descriptor-track file is scored as the organisers did
(:func:`score_descriptor_track`): an exact L2 search keeping the ``10 × n_queries`` closest pairs over
all queries, score = −squared distance, then µAP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from isc.core.descriptors import read_descriptor_track
from isc.core.files import InputError
from isc.core.tables import pair_keys
from isc.search.knn import id_ranks, knn

REQUIRED_PRECISION = 0.9
RESULTS_PER_QUERY = 10  # the organisers scored a descriptor submission on 10 × n_queries pairs


@dataclass
class Metrics:
    muap: float
    recall_at_p90: float | None
    threshold_at_p90: float | None
    recall_at_rank1: float
    recall_at_rank10: float
    n_predictions: int
    n_positives: int
    n_true_positives: int
    n_queries_predicted: int
    precisions: np.ndarray = field(repr=False)
    recalls: np.ndarray = field(repr=False)
    thresholds: np.ndarray = field(repr=False)

    def summary(self) -> dict[str, float | int | None]:
        """The scalar results, for ``--json`` and reports."""
        return {
            "muap": self.muap,
            "recall_at_p90": self.recall_at_p90,
            "threshold_at_p90": self.threshold_at_p90,
            "recall_at_rank1": self.recall_at_rank1,
            "recall_at_rank10": self.recall_at_rank10,
            "n_predictions": self.n_predictions,
            "n_positives": self.n_positives,
            "n_true_positives": self.n_true_positives,
            "n_queries_predicted": self.n_queries_predicted,
        }


def precision_recall(
    is_match: np.ndarray, scores: np.ndarray, n_positives: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precisions, recalls and thresholds along the ranking, by increasing recall.

    On equal scores the wrong predictions come first, exactly as in the organisers' scorer.
    """
    is_match = np.asarray(is_match, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    # lexsort's last key is the primary one: decreasing score, then False (wrong) before True
    order = np.lexsort((is_match, -scores))
    ranked = is_match[order]
    true_positives = np.cumsum(ranked)
    n_results = np.arange(len(ranked)) + 1
    return true_positives / n_results, true_positives / n_positives, scores[order]


def average_precision(recalls: np.ndarray, precisions: np.ndarray) -> float:
    """Σ (r_i − r_{i−1}) × p_i over the ranking (no interpolation); recalls must be sorted."""
    if len(recalls) and not np.all(recalls[:-1] <= recalls[1:]):
        raise ValueError("recalls must be sorted in increasing order")
    return float(((recalls - np.concatenate([[0], recalls[:-1]])) * precisions).sum())


def operating_point(
    precisions: np.ndarray, recalls: np.ndarray, thresholds: np.ndarray, required_precision: float
) -> tuple[float | None, float | None]:
    """(recall, threshold) of the highest recall whose precision is at least ``required_precision``."""
    valid = precisions >= required_precision
    if not valid.any():
        return None, None
    best = int(np.argmax(np.where(valid, recalls, -1.0)))
    return float(recalls[best]), float(thresholds[best])


def _recall_at_ranks(queries: np.ndarray, scores: np.ndarray, is_match: np.ndarray, n_positives: int) -> tuple[float, float]:
    # a true pair's rank counts every prediction of its query scoring at least as high (ties pessimistic)
    rank = pd.Series(scores).groupby(queries).rank(method="max", ascending=False).to_numpy() - 1
    true_ranks = rank[is_match]
    return float((true_ranks == 0).sum() / n_positives), float((true_ranks < 10).sum() / n_positives)


def evaluate(
    predictions: pd.DataFrame, ground_truth: pd.DataFrame, restrict_to_ground_truth_queries: bool = False
) -> Metrics:
    """Score predictions ``query_id,reference_id,score`` against a ground truth ``query_id,reference_id``.

    ``restrict_to_ground_truth_queries`` drops predictions for queries the ground-truth file does not
    list, as the competition platform did with the partial phase-1 ground truth.
    """
    if restrict_to_ground_truth_queries:
        predictions = predictions[predictions["query_id"].isin(ground_truth["query_id"])]
    positives = ground_truth[ground_truth["reference_id"] != ""]
    keys, positive_keys = pair_keys(predictions, positives)
    repeated = pd.Series(keys).duplicated().to_numpy()
    if repeated.any():
        row = predictions.iloc[int(np.flatnonzero(repeated)[0])]
        raise InputError(f"predictions contain the pair ({row['query_id']}, {row['reference_id']}) more than once")
    n_positives = len(positives)
    if n_positives == 0:
        raise InputError("the ground truth has no (query, reference) pair: nothing to measure recall against")
    is_match = np.isin(keys, positive_keys)
    scores = predictions["score"].to_numpy(dtype=np.float64)
    precisions, recalls, thresholds = precision_recall(is_match, scores, n_positives)
    recall_p90, threshold_p90 = operating_point(precisions, recalls, thresholds, REQUIRED_PRECISION)
    queries = pd.factorize(predictions["query_id"])[0]
    rank1, rank10 = _recall_at_ranks(queries, scores, is_match, n_positives)
    return Metrics(
        muap=average_precision(recalls, precisions),
        recall_at_p90=recall_p90,
        threshold_at_p90=threshold_p90,
        recall_at_rank1=rank1,
        recall_at_rank10=rank10,
        n_predictions=len(predictions),
        n_positives=n_positives,
        n_true_positives=int(is_match.sum()),
        n_queries_predicted=len(pd.unique(queries)),
        precisions=precisions,
        recalls=recalls,
        thresholds=thresholds,
    )


# ---------------------------------------------------------------------------- descriptor-track score


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


def score_descriptor_track(
    path: str | Path,
    ground_truth: pd.DataFrame,
    max_results: int | None = None,
    restrict_to_ground_truth_queries: bool = False,
    backend: str = "auto",
    quiet: bool = True,
) -> tuple[Metrics, pd.DataFrame]:
    """Score a descriptor-track HDF5 as the organisers did; returns the metrics and the predictions."""
    query_ids, query, reference_ids, reference = read_descriptor_track(path)
    predictions = descriptor_track_predictions(query_ids, query, reference_ids, reference, max_results, backend, quiet)
    return evaluate(predictions, ground_truth, restrict_to_ground_truth_queries), predictions
